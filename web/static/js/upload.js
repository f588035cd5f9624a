// The new-job view: a drop zone, the chosen files checked against the server's limits
// before anything is sent, variations, their strength (remembered), and a resumable upload
// of each file (bytes, speed, time left; it waits out a lost connection and goes on from
// where the server has it, after a reload too), then the job made from the uploads.

import { createJob, CUT_OFF, resumableUpload } from "./api.js";
import { formatBytes, formatDuration, h, progressBar, setProgress } from "./dom.js";
import { askOnce } from "./notify.js";

// Speed is measured over the last few seconds, so a wait or a resume soon stops counting.
const RATE_WINDOW_MS = 5000;
const CANCELLED = "Upload cancelled.";
// The waits between asks for the job while the server cannot be reached: about half an
// hour, as the uploads' own (js/api.js).
const JOB_RETRY_DELAYS_MS = [1000, 3000, 5000, 10000, 20000, ...new Array(90).fill(20000)];

// Bytes per second over the last RATE_WINDOW_MS; starts over when the count goes back
// (a chunk cut part way is sent again).
function rateMeter() {
  const samples = [];
  return {
    add(bytes, now = performance.now()) {
      if (samples.length && bytes < samples.at(-1)[1]) samples.length = 0;
      samples.push([now, bytes]);
      while (samples.length > 2 && now - samples[0][0] > RATE_WINDOW_MS) samples.shift();
    },
    perSecond() {
      if (samples.length < 2) return 0;
      const [[begun, before], [now, after]] = [samples[0], samples.at(-1)];
      return now - begun > 200 ? ((after - before) * 1000) / (now - begun) : 0;
    },
  };
}

// "3 MiB of 12 MiB · 1.2 MiB/s · about 8 s left"
function figuresOf(sent, size, speed) {
  const parts = [`${formatBytes(sent)} of ${formatBytes(size)}`];
  if (speed > 0) parts.push(`${formatBytes(speed)}/s`, `about ${formatDuration(Math.max(1, (size - sent) / speed))} left`);
  return parts.join(" · ");
}

// What the browser can tell of a video before it is sent; null fields when it cannot
// (a MOV codec it does not play): the server probes it then.
function localProbe(file) {
  return new Promise((resolve) => {
    const video = document.createElement("video");
    const url = URL.createObjectURL(file);
    const done = (result) => {
      URL.revokeObjectURL(url);
      video.removeAttribute("src");
      resolve(result);
    };
    video.preload = "metadata";
    video.addEventListener("loadedmetadata", () => done({ duration: video.duration, width: video.videoWidth, height: video.videoHeight }));
    video.addEventListener("error", () => done({ duration: null, width: null, height: null }));
    setTimeout(() => done({ duration: null, width: null, height: null }), 5000);
    video.src = url;
  });
}

// The strength and mirror last chosen, kept across reloads: {strength, mirror}.
const CHOICES_KEY = "videoRefresherChoices";
// Mirroring flips text and logos, so it is opt-in, and only where variations change enough.
const MIRRORABLE = new Set(["standard", "strong"]);

function savedChoices() {
  try {
    return JSON.parse(localStorage.getItem(CHOICES_KEY) || "null") || {};
  } catch {
    return {};
  }
}

function saveChoices(choices) {
  localStorage.setItem(CHOICES_KEY, JSON.stringify(choices));
}

// The strength radio group (one radio per strength the server offers, each with its line
// on what changes) and the mirror opt-in; null parts when the server offers none.
function strengthChoice(config) {
  const strengths = Array.isArray(config.strengths) ? config.strengths : [];
  if (!strengths.length) return { fieldset: null, mirrorRow: null, strength: () => null, mirror: () => null };
  const values = strengths.map((strength) => strength.value);
  const saved = savedChoices();
  const initial = values.includes(saved.strength) ? saved.strength : values.includes(config.defaultStrength) ? config.defaultStrength : values[0];
  let mirrorWanted = saved.mirror === true;
  const radios = strengths.map((strength) =>
    h("input", { type: "radio", name: "strength", id: `strength-${strength.value}`, value: strength.value, checked: strength.value === initial, "aria-describedby": `strength-${strength.value}-hint` }),
  );
  const fieldset = h(
    "fieldset",
    { id: "strength", class: "strengths" },
    h("legend", {}, "Strength"),
    ...strengths.map((strength, index) =>
      h(
        "label",
        { class: "strength-option", for: `strength-${strength.value}` },
        radios[index],
        h("span", { class: "strength-text" }, h("span", { class: "strength-label" }, strength.label || strength.value), h("span", { id: `strength-${strength.value}-hint`, class: "small muted" }, strength.description || "")),
      ),
    ),
  );
  const mirrorBox = h("input", { type: "checkbox", id: "mirror", name: "mirror", "aria-describedby": "mirror-hint" });
  const mirrorHint = h("span", { id: "mirror-hint", class: "small muted" });
  const mirrorRow = config.mirrorAvailable
    ? h("div", { class: "mirror-row" }, h("label", { class: "toggle mirror-toggle", for: "mirror" }, mirrorBox, "Mirror (flips text and logos)"), mirrorHint)
    : null;
  const strength = () => radios.find((radio) => radio.checked)?.value || initial;
  const mirrorAllowed = () => Boolean(mirrorRow) && MIRRORABLE.has(strength());
  // A disabled box shows unticked; ticked again when a strength that mirrors comes back.
  const sync = () => {
    mirrorBox.disabled = !mirrorAllowed();
    mirrorBox.checked = mirrorAllowed() && mirrorWanted;
    mirrorHint.textContent = mirrorAllowed() ? "Leave it off when the creative shows text or a logo." : "Only at standard or strong.";
  };
  // Kept only once the person chooses: until then a new server default applies.
  const chosen = () => {
    sync();
    saveChoices({ strength: strength(), mirror: mirrorWanted });
  };
  for (const radio of radios) radio.addEventListener("change", chosen);
  mirrorBox.addEventListener("change", () => {
    mirrorWanted = mirrorBox.checked;
    chosen();
  });
  sync();
  return { fieldset, mirrorRow, strength, mirror: () => (mirrorRow ? mirrorAllowed() && mirrorWanted : null) };
}

function extensionOf(name) {
  const dot = name.lastIndexOf(".");
  return dot < 0 ? "" : name.slice(dot).toLowerCase();
}

// Why the server would refuse this file, or null if it should take it.
function refusal(entry, config) {
  const { file, probed } = entry;
  if (!config.acceptedExtensions.includes(extensionOf(file.name)) && !config.acceptedTypes.includes(file.type)) {
    return "Not an MP4 or MOV video.";
  }
  if (file.size === 0) return "The file is empty.";
  if (file.size > config.maxUploadBytes) return `It is ${formatBytes(file.size)}; the largest accepted is ${formatBytes(config.maxUploadBytes)}.`;
  if (probed?.duration > config.maxDurationS) return `It runs ${formatDuration(probed.duration)}; the longest accepted is ${formatDuration(config.maxDurationS)}.`;
  const long = Math.max(probed?.width || 0, probed?.height || 0);
  const short = Math.min(probed?.width || 0, probed?.height || 0);
  if (long > config.maxLongSidePx || short > config.maxShortSidePx) {
    return `It is ${probed.width}×${probed.height}; the largest accepted is ${config.maxLongSidePx}×${config.maxShortSidePx}.`;
  }
  return null;
}

export function render(root, { config, navigate }) {
  // {file, probed, reason} as chosen; once sending: {state: "waiting" | "sending" |
  // "offline" | "sent" | "failed", sent, transfer, uploadId, error, bar, figures, meter}.
  let entries = [];
  let batch = null; // the upload under way: {entries, stop(error), stopped, current}
  const picker = h("input", { type: "file", id: "file-picker", multiple: true, hidden: true, accept: [...config.acceptedTypes, ...config.acceptedExtensions].join(",") });
  const zone = h(
    "div",
    { id: "drop-zone", class: "drop-zone", role: "button", tabindex: "0", "aria-describedby": "drop-hint" },
    h("strong", {}, "Drop videos here"),
    h("span", {}, " or press to choose files"),
    h("span", { id: "drop-hint", class: "muted small" }, `MP4 or MOV, up to ${config.maxFiles} files of at most ${formatBytes(config.maxUploadBytes)} each.`),
  );
  const list = h("ul", { id: "file-list", class: "file-list", "aria-label": "Chosen files" });
  const variations = h("input", { id: "variations", name: "variations", type: "number", min: "1", max: String(config.maxVariations), value: String(config.defaultVariations), required: true, inputmode: "numeric" });
  const total = h("span", { id: "variations-total", class: "muted" });
  const choice = strengthChoice(config);
  const send = h("button", { id: "upload-button", type: "submit", class: "button primary", disabled: true }, "Upload and refresh");
  const cancel = h("button", { id: "upload-cancel", type: "button", class: "button", hidden: true }, "Cancel upload");
  const bar = progressBar(0, "Upload progress");
  const figures = h("p", { id: "upload-figures", class: "muted", "aria-live": "polite" });
  const progress = h("div", { id: "upload-progress", class: "stack", hidden: true }, bar, figures);
  const message = h("p", { id: "upload-message", class: "message", role: "alert" });
  const overall = rateMeter();

  const accepted = () => entries.filter((entry) => !entry.reason);
  const variationCount = () => Number(variations.value);
  const variationsValid = () => Number.isInteger(variationCount()) && variationCount() >= 1 && variationCount() <= config.maxVariations;

  // An upload this page began on the server goes when its file does.
  const forgetUpload = (entry, { terminate }) => {
    if (terminate) entry.transfer?.abort(true);
    Object.assign(entry, { transfer: null, uploadId: null, state: null, sent: 0, error: null });
  };

  // One file's upload, as its row shows it.
  const showFile = (entry) => {
    if (!entry.state) return;
    entry.bar ||= progressBar(0, `Upload of ${entry.file.name}`);
    entry.figures ||= h("span", { class: "small muted file-progress" });
    const size = entry.file.size;
    setProgress(entry.bar, entry.state === "sent" ? 100 : (100 * entry.sent) / size);
    entry.figures.textContent = {
      waiting: "Waiting to upload",
      sending: figuresOf(entry.sent, size, entry.meter?.perSecond() || 0),
      offline: `${formatBytes(entry.sent)} of ${formatBytes(size)} · connection lost, trying again…`,
      sent: `Uploaded (${formatBytes(size)})`,
      failed: `${formatBytes(entry.sent)} of ${formatBytes(size)} sent`,
    }[entry.state];
  };

  // The whole upload: every file's bytes together.
  const showOverall = () => {
    if (!batch) return;
    const size = batch.entries.reduce((sum, entry) => sum + entry.file.size, 0);
    const sent = batch.entries.reduce((sum, entry) => sum + (entry.state === "sent" ? entry.file.size : entry.sent || 0), 0);
    overall.add(sent);
    setProgress(bar, size ? (100 * sent) / size : 0);
    const offline = batch.entries.some((entry) => entry.state === "offline");
    figures.textContent = offline
      ? `${figuresOf(sent, size, 0)} · The connection was lost: the upload goes on from where it stopped once it is back.`
      : figuresOf(sent, size, overall.perSecond());
  };

  const refresh = () => {
    list.replaceChildren(
      ...entries.map((entry, index) => {
        const facts = [formatBytes(entry.file.size)];
        if (entry.probed?.duration) facts.push(formatDuration(entry.probed.duration));
        else if (!entry.probed && !entry.reason) facts.push("checking…");
        if (entry.probed?.width) facts.push(`${entry.probed.width}×${entry.probed.height}`);
        showFile(entry);
        return h(
          "li",
          { class: entry.reason || entry.state === "failed" ? "file refused" : "file" },
          h("span", { class: "file-name", title: entry.file.name }, entry.file.name),
          h("span", { class: "muted small" }, facts.join(" · ")),
          entry.reason ? h("span", { class: "file-reason" }, `Refused: ${entry.reason}`) : null,
          entry.state ? h("div", { class: "file-upload" }, entry.bar, entry.figures) : null,
          entry.state === "failed" ? h("span", { class: "file-reason" }, `Failed: ${entry.error}`) : null,
          h("button", { type: "button", class: "button small", "aria-label": `Remove ${entry.file.name}`, disabled: Boolean(batch), onclick: () => {
            forgetUpload(entry, { terminate: true });
            entries.splice(index, 1);
            refresh();
          } }, "Remove"),
        );
      }),
    );
    const count = accepted().length;
    total.textContent = variationsValid() ? `${count * variationCount()} variations in all` : `Choose 1 to ${config.maxVariations}`;
    send.disabled = Boolean(batch) || count === 0 || !variationsValid();
  };

  const add = (files) => {
    message.textContent = "";
    for (const file of files) {
      const entry = { file, probed: null, reason: null };
      if (accepted().length >= config.maxFiles) entry.reason = `A job takes at most ${config.maxFiles} videos.`;
      else entry.reason = refusal(entry, config);
      entries.push(entry);
      if (!entry.reason) {
        localProbe(file).then((probed) => {
          entry.probed = probed;
          entry.reason = refusal(entry, config);
          refresh();
        });
      }
    }
    refresh();
  };

  zone.addEventListener("click", () => picker.click());
  zone.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    event.preventDefault();
    picker.click();
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (!batch) add([...event.dataTransfer.files]);
  });
  picker.addEventListener("change", () => {
    add([...picker.files]);
    picker.value = "";
  });
  variations.addEventListener("input", refresh);

  // Send one file, going on from an upload this browser began earlier for it; resolves
  // once the server has every byte, rejects with the server's sentence (or CUT_OFF).
  const sendFile = async (entry, running) => {
    entry.meter = rateMeter();
    entry.state = "sending";
    // Callbacks of an upload this entry has let go (cancelled, removed) change nothing.
    const current = () => entry.transfer === transfer;
    const transfer = resumableUpload(entry.file, {
      onProgress: (sent) => {
        if (!current()) return;
        entry.state = "sending";
        entry.sent = sent;
        entry.meter.add(sent);
        showFile(entry);
        showOverall();
      },
      onWaiting: () => {
        if (!current()) return;
        entry.state = "offline";
        showFile(entry);
        showOverall();
      },
    });
    entry.transfer = transfer;
    running.current = entry;
    refresh();
    await transfer.start();
    entry.uploadId = await Promise.race([transfer.done, running.stopped]);
    entry.state = "sent";
    showFile(entry);
    showOverall();
  };

  // The job from the finished uploads. Asked again while there is no answer (the
  // connection is down) or the server cannot for a moment: the uploads wait there.
  const makeJob = async (running) => {
    const request = { uploads: running.entries.map((entry) => entry.uploadId), variations: variationCount(), strength: choice.strength(), mirror: choice.mirror() };
    for (let attempt = 0; ; attempt += 1) {
      figures.textContent = "Uploaded. Making the job…";
      try {
        return await Promise.race([createJob(request), running.stopped]);
      } catch (error) {
        const again = error.status === 0 || [502, 503, 504].includes(error.status);
        if (batch !== running || !again || attempt >= JOB_RETRY_DELAYS_MS.length) throw error;
        figures.textContent = error.status === 0
          ? "Uploaded. The connection was lost: the job is made once it is back."
          : "Uploaded. The server cannot make the job right now; trying again…";
        const backOnline = new Promise((resolve) => window.addEventListener("online", resolve, { once: true }));
        await Promise.race([new Promise((resolve) => setTimeout(resolve, JOB_RETRY_DELAYS_MS[attempt])), backOnline, running.stopped]);
      }
    }
  };

  const stopSending = () => {
    for (const entry of entries) if (entry.state === "waiting") entry.state = null;
    batch = null;
    progress.hidden = true;
    cancel.hidden = true;
    refresh();
  };

  const form = h(
    "form",
    { id: "upload", class: "card stack", novalidate: true },
    h("h1", { tabindex: "-1" }, "New job"),
    zone,
    picker,
    list,
    h("div", { class: "field-row" }, h("label", { for: "variations" }, "Variations per video"), variations, total),
    choice.fieldset,
    choice.mirrorRow,
    h("div", { class: "actions" }, send, cancel),
    progress,
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (send.disabled) return;
    askOnce();
    const running = { entries: accepted(), current: null };
    running.stopped = new Promise((_, reject) => (running.stop = reject));
    running.stopped.catch(() => {});
    batch = running;
    for (const entry of running.entries) if (!entry.uploadId) Object.assign(entry, { state: "waiting", sent: 0, error: null });
    message.textContent = "";
    progress.hidden = false;
    cancel.hidden = false;
    refresh();
    showOverall();
    let failed = null;
    try {
      for (const entry of running.entries) {
        if (entry.uploadId) continue;
        failed = entry;
        await sendFile(entry, running);
      }
      failed = null;
      const job = await makeJob(running);
      batch = null;
      navigate(`#/jobs/${job.jobId}`, `Uploaded. ${job.totalVariations} variations are queued.`);
    } catch (error) {
      if (batch !== running) return; // cancelled, or the view was left: said already
      if (failed) Object.assign(failed, { state: "failed", error: error.message });
      // A job refused as asked (a file that is not a video, an upload gone): the server
      // has dropped the uploads, so the next try sends them again. Refused for now (429,
      // 5xx, no answer): it gave them back, and the next try reuses them.
      const dropped = error.status >= 400 && error.status < 500 && error.status !== 429;
      if (!failed && dropped) for (const entry of running.entries) forgetUpload(entry, { terminate: false });
      message.className = "message message-error";
      message.textContent = error.message || CUT_OFF;
      stopSending();
    }
  });
  cancel.addEventListener("click", () => {
    const running = batch;
    if (!running) return;
    batch = null;
    running.stop(new Error(CANCELLED));
    for (const entry of running.entries) forgetUpload(entry, { terminate: true });
    message.className = "message message-info";
    message.textContent = CANCELLED;
    stopSending();
  });
  // Back online: the file waiting for its next try goes on at once.
  const online = () => batch?.current?.transfer?.resume();
  window.addEventListener("online", online);

  root.replaceChildren(form);
  refresh();
  // Leaving the view stops the upload but keeps it on the server: choosing the same file
  // again (after a reload too) goes on from where it stopped.
  return () => {
    window.removeEventListener("online", online);
    const running = batch;
    batch = null;
    if (!running) return;
    running.stop(new Error(CANCELLED));
    running.current?.transfer?.abort(false);
  };
}
