// The jobs view: a grid of cards, newest first, kept live.

import { ACTIVE, ago, formatTime, h, progressBar, queueWords, statusBadge, timeLeft, TOMBSTONES } from "./dom.js";
import { jobs, onChange, refreshJobs } from "./live.js";

const TOMBSTONE_WORDS = {
  expired: "Expired: its results were removed after their time ran out.",
  evicted: "Removed to free space for newer jobs.",
};

export function thumbnail(job, className) {
  const placeholder = () => h("div", { class: `${className} thumb-placeholder`, "aria-hidden": "true" }, "▶");
  if (!job.thumbnailUrl || TOMBSTONES.has(job.status)) return placeholder();
  const img = h("img", { class: className, src: job.thumbnailUrl, alt: "", loading: "lazy", decoding: "async" });
  img.addEventListener("error", () => img.replaceWith(placeholder()));
  return img;
}

export function namesOf(job) {
  return job.fileNames || (job.files || []).map((file) => file.name);
}

function counts(job) {
  const plural = (count, word) => `${count} ${word}${count === 1 ? "" : "s"}`;
  const videos = plural(job.totalVideos, "video");
  const made = job.completedVariations;
  if (job.status === "completed" || made === undefined || made === null) return `${videos} · ${plural(job.totalVariations, "variation")}`;
  return `${videos} · ${made} of ${plural(job.totalVariations, "variation")}`;
}

// Results a device made and sent (the original client's device mode), not made here.
function sourceBadge(job) {
  if (job.source !== "device") return null;
  return h("span", { class: "badge badge-device", title: "Made on a device and uploaded as finished variations" }, "Device");
}

function card(job) {
  const names = namesOf(job);
  const title = names.length > 1 ? `${names[0]} + ${names.length - 1} more` : names[0] || "Untitled job";
  const left = timeLeft(job.expiresAt);
  const parts = [
    thumbnail(job, "card-thumb"),
    h(
      "div",
      { class: "card-body" },
      h("h2", { class: "card-title" }, h("a", { href: `#/jobs/${job.id}`, class: "card-link", title: names.join("\n") }, title)),
      h("div", { class: "card-row" }, h("span", { class: "badges" }, statusBadge(job.status), sourceBadge(job)), h("span", { class: "muted small" }, counts(job))),
    ),
  ];
  const body = parts[1];
  if (ACTIVE.has(job.status)) {
    const percent = job.overallProgress ?? 0;
    body.append(h("div", { class: "card-progress" }, progressBar(percent, `Progress of ${title}`), h("span", { class: "small" }, `${Math.floor(percent)} %`)));
    const standing = queueWords(job);
    if (standing) body.append(h("p", { class: "small muted card-eta" }, standing));
  }
  if (TOMBSTONES.has(job.status)) body.append(h("p", { class: "small muted" }, TOMBSTONE_WORDS[job.status]));
  else if (job.status === "failed" && job.error) body.append(h("p", { class: "small error-text card-error", title: job.error }, job.error));
  body.append(
    h(
      "p",
      { class: "small muted card-times" },
      h("time", { datetime: job.createdAt, title: formatTime(job.createdAt) }, `Created ${ago(job.createdAt)}`),
      // An active job's results are kept from the moment it ends: nothing counts down yet.
      TOMBSTONES.has(job.status) || ACTIVE.has(job.status) ? null : h("span", {}, left ? ` · ${left} left` : " · results expired"),
    ),
  );
  return h("li", { class: `job-card status-${job.status}`, dataset: { jobId: job.id } }, ...parts);
}

export function render(root) {
  const grid = h("ul", { id: "job-grid", class: "job-grid", "aria-label": "Jobs" });
  const empty = h(
    "div",
    { id: "jobs-empty", class: "card empty", hidden: true },
    h("p", {}, "No jobs yet. Upload creatives to get their refreshed variations."),
    h("a", { href: "#/new", class: "button primary" }, "Start a new job"),
  );
  const message = h("p", { class: "message message-error", role: "alert" });
  // Cards are drawn anew as jobs change: keep the keyboard's place and the loaded image.
  const keepFocus = (change) => {
    const focused = document.activeElement?.closest?.(".job-card")?.dataset.jobId;
    change();
    if (focused) grid.querySelector(`[data-job-id="${CSS.escape(focused)}"] .card-link`)?.focus({ preventScroll: true });
  };
  const draw = () =>
    keepFocus(() => {
      const all = [...jobs.values()].sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0));
      grid.replaceChildren(...all.map(card));
      empty.hidden = all.length > 0;
    });
  const redraw = (jobId, job) => {
    const existing = jobId && grid.querySelector(`[data-job-id="${CSS.escape(jobId)}"]`);
    if (!existing || !job) return draw();
    keepFocus(() => {
      const fresh = card(job);
      const [before, after] = [existing.firstElementChild, fresh.firstElementChild];
      if (before.tagName === after.tagName && before.getAttribute("src") === after.getAttribute("src")) after.replaceWith(before);
      existing.replaceWith(fresh);
    });
  };
  root.replaceChildren(
    h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "Jobs"), h("a", { href: "#/new", class: "button primary" }, "New job")),
    message,
    empty,
    grid,
  );
  draw();
  // A lost connection or a server error says so and offers to try again; only a 401
  // (handled by the app) leads to the login.
  const load = () => {
    message.replaceChildren();
    refreshJobs().catch((error) => {
      if (error.status === 401) return;
      message.replaceChildren(error.message, " ", h("button", { type: "button", class: "button small", onclick: load }, "Try again"));
    });
  };
  load();
  const stop = onChange(redraw);
  const tick = setInterval(draw, 30000); // times left and "ago" move on
  return () => {
    stop();
    clearInterval(tick);
  };
}
