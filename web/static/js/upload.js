// The new-job view: a drop zone, the chosen files checked against the server's limits
// before anything is sent, variations, their strength (remembered), and an upload with
// bytes, speed, time left, Cancel.

import { uploadJob } from "./api.js";
import { formatBytes, formatDuration, h, progressBar, setProgress } from "./dom.js";
import { askOnce } from "./notify.js";

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
  let entries = []; // {file, probed, reason}
  let upload = null;
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

  const accepted = () => entries.filter((entry) => !entry.reason);
  const variationCount = () => Number(variations.value);
  const variationsValid = () => Number.isInteger(variationCount()) && variationCount() >= 1 && variationCount() <= config.maxVariations;

  const refresh = () => {
    list.replaceChildren(
      ...entries.map((entry, index) => {
        const facts = [formatBytes(entry.file.size)];
        if (entry.probed?.duration) facts.push(formatDuration(entry.probed.duration));
        else if (!entry.probed && !entry.reason) facts.push("checking…");
        if (entry.probed?.width) facts.push(`${entry.probed.width}×${entry.probed.height}`);
        return h(
          "li",
          { class: entry.reason ? "file refused" : "file" },
          h("span", { class: "file-name", title: entry.file.name }, entry.file.name),
          h("span", { class: "muted small" }, facts.join(" · ")),
          entry.reason ? h("span", { class: "file-reason" }, `Refused: ${entry.reason}`) : null,
          h("button", { type: "button", class: "button small", "aria-label": `Remove ${entry.file.name}`, disabled: Boolean(upload), onclick: () => {
            entries.splice(index, 1);
            refresh();
          } }, "Remove"),
        );
      }),
    );
    const count = accepted().length;
    total.textContent = variationsValid() ? `${count * variationCount()} variations in all` : `Choose 1 to ${config.maxVariations}`;
    send.disabled = Boolean(upload) || count === 0 || !variationsValid();
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
    if (!upload) add([...event.dataTransfer.files]);
  });
  picker.addEventListener("change", () => {
    add([...picker.files]);
    picker.value = "";
  });
  variations.addEventListener("input", refresh);

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
    const body = new FormData();
    for (const entry of accepted()) body.append("videos", entry.file, entry.file.name);
    body.append("variations", String(variationCount()));
    if (choice.strength()) body.append("strength", choice.strength());
    if (choice.mirror() !== null) body.append("mirror", choice.mirror() ? "true" : "false");
    askOnce();
    const started = performance.now();
    message.textContent = "";
    progress.hidden = false;
    cancel.hidden = false;
    upload = uploadJob(body, (loaded, size) => {
      const seconds = (performance.now() - started) / 1000;
      const speed = seconds > 0.2 ? loaded / seconds : 0;
      setProgress(bar, size ? (100 * loaded) / size : 0);
      const left = speed && size ? ` · about ${formatDuration((size - loaded) / speed)} left` : "";
      figures.textContent = `${formatBytes(loaded)} of ${formatBytes(size)}${speed ? ` · ${formatBytes(speed)}/s` : ""}${left}`;
    });
    refresh();
    try {
      const job = await upload.done;
      navigate(`#/jobs/${job.jobId}`, `Uploaded. ${job.totalVariations} variations are queued.`);
    } catch (error) {
      message.className = error.aborted ? "message message-info" : "message message-error";
      message.textContent = error.message;
      progress.hidden = true;
      cancel.hidden = true;
      upload = null;
      refresh();
    }
  });
  cancel.addEventListener("click", () => upload?.abort());

  root.replaceChildren(form);
  refresh();
  return () => upload?.abort();
}
