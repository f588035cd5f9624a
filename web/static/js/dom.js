// Building the DOM from elements and text nodes (never markup strings), and the words
// the page uses for sizes and times.

// h("a", {href, class: "x", onclick}, "text", child) -> element. Strings become text nodes,
// so user data can never become markup.
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return el;
}

export const STATUS_LABELS = {
  queued: "Queued",
  processing: "Processing",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
  expired: "Expired",
  evicted: "Removed to free space",
  deleted: "Deleted",
};
export const ACTIVE = new Set(["queued", "processing"]);
export const TOMBSTONES = new Set(["expired", "evicted"]);

export function statusBadge(status) {
  return h("span", { class: `badge badge-${status}` }, STATUS_LABELS[status] || status);
}

// A bar a screen reader announces as a progress bar, labelled by what it measures.
export function progressBar(percent, label) {
  const fill = h("span", { class: "bar-fill" });
  const bar = h("div", { class: "bar", role: "progressbar", "aria-label": label, "aria-valuemin": "0", "aria-valuemax": "100" }, fill);
  setProgress(bar, percent);
  return bar;
}

export function setProgress(bar, percent) {
  const value = Math.max(0, Math.min(100, Number(percent) || 0));
  bar.setAttribute("aria-valuenow", String(Math.round(value * 10) / 10));
  bar.setAttribute("aria-valuetext", `${Math.floor(value)} %`);
  bar.firstElementChild.style.width = `${value}%`;
}

// Binary units, as the server's own messages count them ("500 MiB").
export function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return "unknown size";
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} bytes` : `${Number(value.toFixed(value < 10 ? 1 : 0))} ${units[unit]}`;
}

export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "unknown";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const minutes = Math.floor(s / 60);
  if (minutes < 60) return s % 60 ? `${minutes} min ${s % 60} s` : `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
}

// Where a job queued or under way stands, in words ("Next in the queue · starts in about
// 1 min", "Done in about 4 min"), from the server's estimates; null when it has none.
export function queueWords(job) {
  if (!ACTIVE.has(job.status)) return null;
  const about = (seconds) => `about ${formatDuration(seconds < 60 ? Math.max(seconds, 1) : Math.round(seconds / 60) * 60)}`;
  if (job.status === "queued" && job.queuePosition) {
    const place = job.queuePosition === 1 ? "Next in the queue" : `Number ${job.queuePosition} in the queue`;
    return Number.isFinite(job.estimatedStartS) ? `${place} · starts in ${about(job.estimatedStartS)}` : place;
  }
  return Number.isFinite(job.estimatedDoneS) ? `Done in ${about(job.estimatedDoneS)}` : null;
}

// The time until `iso` ("23 h 10 min"), or null once it has passed.
export function timeLeft(iso, now = Date.now()) {
  const seconds = (Date.parse(iso) - now) / 1000;
  if (!(seconds > 0)) return null;
  return formatDuration(seconds < 60 ? seconds : Math.floor(seconds / 60) * 60);
}

const TIME_FORMAT = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function formatTime(iso) {
  return iso ? TIME_FORMAT.format(new Date(iso)) : "";
}

export function ago(iso, now = Date.now()) {
  const seconds = (now - Date.parse(iso)) / 1000;
  if (!(seconds >= 60)) return "just now";
  return `${formatDuration(Math.floor(seconds / 60) * 60)} ago`;
}

// A message everyone hears: role=status for news, role=alert for trouble.
export function toast(message, kind = "info") {
  const region = document.getElementById("toasts");
  const item = h("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  region.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

// Ask before something that cannot be undone; resolves to true when confirmed.
export function confirmAction(question, detail, confirmLabel) {
  return new Promise((resolve) => {
    const cancel = h("button", { type: "button", class: "button" }, "Keep it");
    const confirm = h("button", { type: "button", class: "button danger" }, confirmLabel);
    const dialog = h(
      "dialog",
      { class: "dialog", "aria-labelledby": "dialog-title" },
      h("h2", { id: "dialog-title" }, question),
      h("p", {}, detail),
      h("div", { class: "dialog-actions" }, cancel, confirm),
    );
    const close = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    cancel.addEventListener("click", () => close(false));
    confirm.addEventListener("click", () => close(true));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      close(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}
