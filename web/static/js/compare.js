// How distinct each variation came out: its verdict in words with the measured numbers,
// and the stills of each source beside its variations at the same moment, so a person
// can judge whether people will see the same ad.

import { ACTIVE, h, TOMBSTONES } from "./dom.js";

const VERDICT_WORDS = {
  distinct: "Distinct from the source",
  "matches-source": "Looks the same to a perceptual hash",
  "matches-sibling": "Distinct from the source, but close to another variation",
};

// PDQ distances are whole bits, but a median of an even count can fall half-way.
const bits = (value) => (Number.isInteger(value) ? String(value) : value.toFixed(1));

// "PDQ median 47 of 256 · 0 % of frames matched · SSIM 0.912 · nearest sibling 52 · 2 draws",
// or null while the variation is not measured.
export function measuredText(output) {
  const measured = output.measured;
  if (!measured) return null;
  const parts = [];
  if (Number.isFinite(measured.pdqMedian)) parts.push(`PDQ median ${bits(measured.pdqMedian)} of 256`);
  if (Number.isFinite(measured.pdqMatchedShare)) parts.push(`${Math.round(measured.pdqMatchedShare * 100)} % of frames matched`);
  if (Number.isFinite(measured.ssim)) parts.push(`SSIM ${measured.ssim.toFixed(3)}`);
  if (Number.isFinite(measured.nearestSiblingPdq)) parts.push(`nearest sibling ${bits(measured.nearestSiblingPdq)}`);
  if (Number.isInteger(output.attempts)) parts.push(`${output.attempts} draw${output.attempts === 1 ? "" : "s"}`);
  return parts.join(" · ");
}

export function verdictWords(output, jobActive) {
  if (output.verdict && VERDICT_WORDS[output.verdict]) return VERDICT_WORDS[output.verdict];
  if (output.verdict) return output.verdict;
  return jobActive ? "Not measured yet" : "Not measured";
}

// The verdict in words; the numbers in its title (hover) and in text a screen reader
// reads, shown beneath it while it has the keyboard's focus when `focusable`.
export function verdictNote(output, { jobActive = false, focusable = false, id = null } = {}) {
  const numbers = measuredText(output);
  const kind = output.verdict && VERDICT_WORDS[output.verdict] ? output.verdict : "unmeasured";
  return h(
    "p",
    { id, class: `verdict verdict-${kind} small`, title: numbers, tabindex: focusable && numbers ? "0" : null },
    h("span", { class: "verdict-words" }, verdictWords(output, jobActive)),
    numbers ? h("span", { class: "verdict-numbers" }, numbers) : null,
  );
}

// One still, lazily loaded; a placeholder where there is none yet or it fails to load.
// `stills` keeps each place's element for its URL across redraws, so a loaded image stays
// put and a broken one is not asked for again.
function still(stills, place, url, alt, missing) {
  const placeholder = (words) => h("div", { class: "still still-placeholder" }, words);
  if (!url) return placeholder(missing);
  const key = `${place} ${url}`;
  const kept = stills.get(key);
  if (kept) return kept;
  const img = h("img", { class: "still", src: url, alt, loading: "lazy", decoding: "async" });
  img.addEventListener("error", () => {
    const shown = placeholder("Still unavailable");
    stills.set(key, shown);
    img.replaceWith(shown);
  });
  stills.set(key, img);
  return img;
}

function figure(media, caption, kind) {
  return h("li", { class: `compare-item compare-${kind}` }, h("figure", { class: "compare-figure" }, media, h("figcaption", {}, ...caption)));
}

function fileRow(file, stills, jobActive) {
  const missing = jobActive ? "Still not made yet" : "No still";
  const source = figure(still(stills, file.id, file.stillUrl, `${file.name}: source`, missing), [h("strong", {}, "Source")], "source");
  const variations = file.outputs.map((output) =>
    figure(
      still(stills, output.id, output.stillUrl, `${file.name}: variation ${output.variationIndex}`, missing),
      [h("strong", {}, `Variation ${output.variationIndex}`), verdictNote(output, { jobActive })],
      "variation",
    ),
  );
  return h(
    "section",
    { class: "compare-file", dataset: { fileId: file.id }, "aria-label": `Stills of ${file.name}` },
    h("h3", { class: "file-name", title: file.name }, file.name),
    h("ul", { class: "compare-row" }, source, ...variations),
  );
}

// The comparison view of a job, or null when it has no variations to compare (or its
// results are gone).
export function compareSection(job, stills) {
  if (TOMBSTONES.has(job.status)) return null;
  const files = (job.files || []).filter((file) => file.outputs?.length);
  if (!files.length) return null;
  const jobActive = ACTIVE.has(job.status);
  return h(
    "section",
    { id: "compare", class: "card stack", "aria-labelledby": "compare-title" },
    h("h2", { id: "compare-title" }, "Side by side"),
    h("p", { class: "small muted" }, "Each source beside its variations at the same moment. A variation should look like the same ad to a person while a matcher tells it apart."),
    ...files.map((file) => fileRow(file, stills, jobActive)),
  );
}
