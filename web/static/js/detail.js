// The job view: live progress per file, each variation's effects, verdict and a player
// for it, the stills side by side, the ZIP download, Retry on a failed file, and Cancel or
// Delete.

import { api, retryFile } from "./api.js";
import { compareSection, verdictNote } from "./compare.js";
import { ACTIVE, confirmAction, formatBytes, formatTime, h, progressBar, queueWords, statusBadge, timeLeft, toast, TOMBSTONES } from "./dom.js";
import { namesOf, thumbnail } from "./jobs.js";
import { loadJob, onChange, removeJob } from "./live.js";

const signed = (value, digits) => `${value >= 0 ? "+" : ""}${value.toFixed(digits)}`;
const factor = (value) => `${signed((value - 1) * 100, 1)} %`;
const EFFECT_WORDS = {
  rotation_rad: (value) => ["Rotation", `${((value * 180) / Math.PI).toFixed(2)}°`],
  brightness: (value) => ["Brightness", `${signed(value * 100, 1)} %`],
  contrast: (value) => ["Contrast", factor(value)],
  saturation: (value) => ["Saturation", factor(value)],
  zoom: (value) => ["Crop-zoom", factor(value)],
  anchor_x: (value) => ["Crop across", `${Math.round(value * 100)} %`],
  anchor_y: (value) => ["Crop down", `${Math.round(value * 100)} %`],
  gamma: (value) => ["Gamma", factor(value)],
  hue_deg: (value) => ["Hue", `${signed(value, 1)}°`],
  tint_u: (value) => ["Blue tint", signed(value, 1)],
  tint_v: (value) => ["Red tint", signed(value, 1)],
  grain: (value) => ["Grain", String(value)],
  speed: (value) => ["Speed", factor(value)],
  fps: (value) => ["Frame rate", `${value} fps`],
  audio_gain_db: (value) => ["Volume", `${signed(value, 1)} dB`],
  eq_hz: (value) => ["Equaliser band", `${value} Hz`],
  eq_gain_db: (value) => ["Equaliser gain", `${signed(value, 1)} dB`],
  mirror: (value) => ["Mirrored", value ? "yes" : "no"],
};

function effectList(effects) {
  const rows = Object.entries(effects || {}).map(([key, value]) => {
    const [label, shown] = EFFECT_WORDS[key]?.(value) || [key.replaceAll("_", " "), typeof value === "object" ? JSON.stringify(value) : String(value)];
    return [h("dt", {}, label), h("dd", {}, shown)];
  });
  return h("dl", { class: "effects" }, ...rows.flat());
}

// "Strong · mirrored", in the words the server gives each strength.
function strengthWords(job, config) {
  const label = config?.strengths?.find((strength) => strength.value === job.strength)?.label;
  const name = label || `${job.strength.charAt(0).toUpperCase()}${job.strength.slice(1)}`;
  return job.mirror ? `${name} · mirrored` : name;
}

function fileSection(file, onPlay, onRetry, jobActive) {
  const section = h(
    "li",
    { class: "file-card", dataset: { fileId: file.id } },
    h("div", { class: "card-row" }, h("h3", { class: "file-name", title: file.name }, file.name), statusBadge(file.status)),
    h("p", { class: "small muted" }, `${formatBytes(file.size)} · ${file.completedVariations} variation${file.completedVariations === 1 ? "" : "s"} made`),
  );
  if (ACTIVE.has(file.status)) section.append(progressBar(file.progress, `Progress of ${file.name}`));
  if (file.error) section.append(h("p", { class: "message message-error" }, file.error));
  if (file.status === "failed" && file.retries > 0) {
    section.append(h("p", { class: "small muted retries" }, `Failed again after ${file.retries} ${file.retries === 1 ? "retry" : "retries"}.`));
  }
  // The server kept this failed file's source: it can be made again without uploading.
  if (file.status === "failed" && file.retryable) {
    section.append(h("div", { class: "actions" }, h("button", { id: `retry-${file.id}`, type: "button", class: "button small retry", onclick: (event) => onRetry(file, event.currentTarget) }, "Retry")));
  }
  if (file.outputs?.length) {
    section.append(
      h(
        "ul",
        { class: "outputs" },
        ...file.outputs.map((output) =>
          h(
            "li",
            { class: "output" },
            h("div", { class: "card-row" }, h("strong", {}, `Variation ${output.variationIndex}`), h("span", { class: "small muted" }, formatBytes(output.fileSize))),
            verdictNote(output, { jobActive, focusable: true, id: `verdict-${output.id}` }),
            h("details", { dataset: { outputId: output.id } }, h("summary", {}, "Effects"), effectList(output.effects)),
            // A variation is playable from the moment it is recorded, while its job runs.
            output.url
              ? h(
                  "div",
                  { class: "actions" },
                  h("button", { id: `play-${output.id}`, type: "button", class: "button small play", onclick: () => onPlay(file, output) }, "Play"),
                  h("a", { class: "button small", href: output.downloadUrl, download: output.name || "" }, "Download"),
                )
              : null,
          ),
        ),
      ),
    );
  }
  return section;
}

function partialWarning(job) {
  const failed = (job.files || []).filter((file) => file.status === "failed").length;
  if (job.status === "completed" && failed) return `${failed} of ${job.totalVideos} videos failed; the ZIP holds only the variations that were made.`;
  if (job.status === "cancelled" && job.downloadUrl) return "The job was cancelled; the ZIP holds the variations made before that.";
  if (job.status === "failed" && job.downloadUrl) return "The job failed part way; the ZIP holds the variations made before that.";
  return null;
}

export function render(root, { id, config, navigate }) {
  const player = h("section", { id: "player", class: "card stack", hidden: true, "aria-label": "Player" });
  const content = h("div", { class: "stack" }, h("p", { class: "muted" }, "Loading…"));
  let playing = null;
  const stills = new Map(); // each still shown, kept across redraws (compare.js)

  const play = (file, output) => {
    playing = output.id;
    const video = h("video", { id: "player-video", src: output.url, controls: true, autoplay: true, playsinline: true, preload: "metadata" });
    player.replaceChildren(
      h("div", { class: "card-row" }, h("h2", {}, `${file.name}: variation ${output.variationIndex}`), h("button", { type: "button", class: "button small", onclick: () => {
        playing = null;
        player.hidden = true;
        player.replaceChildren();
      } }, "Close player")),
      video,
      h("a", { class: "button small", href: output.downloadUrl, download: output.name || "" }, `Download this variation (${formatBytes(output.fileSize)})`),
    );
    player.hidden = false;
    player.scrollIntoView({ block: "nearest" });
    video.focus();
  };

  const retry = async (file, button) => {
    button.disabled = true;
    try {
      await retryFile(id, file.id);
      toast(`${file.name} is queued again.`);
    } catch (error) {
      if (error.status !== 401) toast(error.message, "error");
    }
    loadJob(id).catch(() => {});
  };

  const act = async (question, detail, label, request, after) => {
    if (!(await confirmAction(question, detail, label))) return;
    try {
      await request();
      after();
    } catch (error) {
      toast(error.message, "error");
    }
  };

  const draw = (job) => {
    if (!job) return;
    const names = namesOf(job);
    const left = timeLeft(job.expiresAt);
    const actions = h("div", { class: "actions" });
    if (job.downloadUrl) {
      actions.append(h("a", { id: "download-zip", class: "button primary", href: job.downloadUrl, download: "" }, `Download ZIP (${formatBytes(job.downloadBytes)})`));
    }
    if (ACTIVE.has(job.status)) {
      actions.append(h("button", { id: "cancel-job", type: "button", class: "button danger", onclick: () =>
        act("Cancel this job?", "Variations made so far are kept; the rest are not made.", "Cancel job", () => api(`/api/jobs/${id}/cancel`, { method: "POST" }), () => loadJob(id).catch(() => {})) }, "Cancel job"));
    } else {
      actions.append(h("button", { id: "delete-job", type: "button", class: "button danger", onclick: () =>
        act("Delete this job?", "Its variations and ZIP are removed now; this cannot be undone.", "Delete job", () => api(`/api/jobs/${id}`, { method: "DELETE" }), () => {
          removeJob(id);
          navigate("#/jobs", "Job deleted.");
        }) }, "Delete job"));
    }
    const warning = partialWarning(job);
    const header = h(
      "div",
      { class: "card detail-head" },
      thumbnail(job, "detail-thumb"),
      h(
        "div",
        { class: "stack" },
        h("div", { class: "card-row" }, h("h1", { tabindex: "-1", class: "detail-title", title: names.join("\n") }, names.join(", ") || "Job"), statusBadge(job.status)),
        h("p", { class: "small muted" }, `Created ${formatTime(job.createdAt)}`, job.finishedAt ? ` · ended ${formatTime(job.finishedAt)}` : "",
          TOMBSTONES.has(job.status) ? "" : left ? ` · results kept ${left} more` : " · results expired"),
        job.strength ? h("p", { id: "job-strength", class: "small" }, "Strength: ", h("strong", {}, strengthWords(job, config))) : null,
        TOMBSTONES.has(job.status) ? null : h("div", { class: "stack" }, progressBar(job.overallProgress, "Overall progress"), h("span", { id: "overall-percent", class: "small" }, `${Math.floor(job.overallProgress || 0)} % · ${job.completedVariations ?? 0} of ${job.totalVariations} variations made`), queueWords(job) ? h("span", { id: "queue-standing", class: "small muted" }, queueWords(job)) : null),
        job.error ? h("p", { class: "message message-error" }, job.error) : null,
        warning ? h("p", { class: "message message-warning" }, warning) : null,
        actions,
      ),
    );
    // Drawn anew on every change: keep the keyboard's place and the effects left open.
    const focused = document.activeElement?.id;
    const open = new Set([...content.querySelectorAll("details[open]")].map((details) => details.dataset.outputId));
    const jobActive = ACTIVE.has(job.status);
    const compare = compareSection(job, stills);
    content.replaceChildren(header, h("h2", {}, "Videos"), h("ul", { class: "file-cards" }, ...(job.files || []).map((file) => fileSection(file, play, retry, jobActive))), ...(compare ? [compare] : []));
    for (const details of content.querySelectorAll("details")) details.open = open.has(details.dataset.outputId);
    if (focused && focused !== "player-video") document.getElementById(focused)?.focus({ preventScroll: true });
    if (playing && !(job.files || []).some((file) => file.outputs?.some((output) => output.id === playing))) player.hidden = true;
  };

  root.replaceChildren(h("a", { href: "#/jobs", class: "back" }, "← All jobs"), content, player);
  const load = () =>
    loadJob(id)
      .then((job) => {
        draw(job);
        root.querySelector("h1")?.focus({ preventScroll: true });
      })
      .catch((error) => {
        if (error.status === 401) return;
        const retry = error.retryable ? h("button", { type: "button", class: "button", onclick: load }, "Try again") : null;
        content.replaceChildren(h("h1", { tabindex: "-1" }, "Job"), h("p", { class: "message message-error", role: "alert" }, error.message), retry);
      });
  load();
  return onChange((jobId, job) => {
    if (jobId === id && job?.files) draw(job);
    if (jobId === id && !job) content.replaceChildren(h("h1", { tabindex: "-1" }, "Job removed"), h("p", { class: "message" }, "This job was deleted or removed."));
  });
}
