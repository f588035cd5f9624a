// Every job the page knows, kept live by one event stream for all jobs. When the stream
// drops, the page polls instead and reconnects with backoff; views listen for changes.

import { api, ApiError } from "./api.js";
import { ACTIVE } from "./dom.js";

const POLL_MS = 5000;
const FIRST_RETRY_MS = 1000;
const LAST_RETRY_MS = 30000;
// Signed thumbnail and player links last an hour or two: fetch fresh ones well before.
const REFRESH_LINKS_MS = 20 * 60 * 1000;

export const jobs = new Map(); // id -> the job, as summary and (once loaded) detail
const listeners = new Set();
let finishedHandler = () => {};
let source = null;
let retryMs = FIRST_RETRY_MS;
let retryTimer = null;
let pollTimer = null;
let polling = false;
let running = false;
let refreshTimer = null;
// "live", "reconnecting" or "offline": shown in the header.
export let connection = "reconnecting";

// Call `listener(jobId | null, job | undefined)` on every change (null: the whole list).
export function onChange(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function onFinished(handler) {
  finishedHandler = handler;
}

function emit(jobId) {
  for (const listener of listeners) listener(jobId, jobId ? jobs.get(jobId) : undefined);
}

function setConnection(state) {
  if (connection === state) return;
  connection = state;
  emit(null);
}

// Merge what the server said of one job; notice a job ending; "deleted" forgets it.
function merge(data) {
  const id = data.jobId || data.id;
  const before = jobs.get(id);
  if (data.status === "deleted") {
    jobs.delete(id);
  } else {
    const job = { ...before, ...data, id };
    if (job.files) job.completedVariations = job.files.reduce((sum, file) => sum + file.completedVariations, 0);
    jobs.set(id, job);
    if (before && ACTIVE.has(before.status) && !ACTIVE.has(job.status)) finishedHandler(job);
  }
  emit(id);
}

// A job's links (thumbnail, download, players) come with the session, never in an event:
// fetch its detail again, once per change however many events arrive meanwhile.
const refreshing = new Set();
function refreshLinks(id) {
  if (refreshing.has(id)) return;
  refreshing.add(id);
  loadJob(id)
    .catch(() => {})
    .finally(() => refreshing.delete(id));
}

// A `status` event: the job's state without links. Keep what the page already had of
// each file (its outputs and still), then fetch the links that go with the new state.
function mergeState(data) {
  const id = data.jobId;
  statusEvents.set(id, (statusEvents.get(id) || 0) + 1);
  const before = jobs.get(id);
  if (data.status === "deleted") return merge(data);
  const files = data.files && before?.files
    ? data.files.map((file) => ({ ...before.files.find((known) => known.id === file.id), ...file }))
    : data.files;
  merge(files ? { ...data, files } : data);
  if (!before || before.files || before.status !== data.status) refreshLinks(id);
}

function mergeProgress(data) {
  const job = jobs.get(data.jobId);
  if (!job) return;
  job.overallProgress = data.overallProgress;
  if (job.status === "queued") job.status = "processing";
  const file = job.files?.find((candidate) => candidate.id === data.fileId);
  if (file) {
    Object.assign(file, { progress: data.progress, status: data.status, completedVariations: data.completedVariations });
    job.completedVariations = job.files.reduce((sum, each) => sum + each.completedVariations, 0);
  }
  emit(job.id);
}

// The list as `GET /api/jobs` gives it: keep what details we had of jobs still listed.
function replaceAll(summaries) {
  const seen = new Set();
  for (const summary of summaries) {
    seen.add(summary.id);
    const before = jobs.get(summary.id);
    jobs.set(summary.id, { ...before, ...summary });
    if (before && ACTIVE.has(before.status) && !ACTIVE.has(summary.status)) finishedHandler(jobs.get(summary.id));
  }
  for (const id of [...jobs.keys()]) if (!seen.has(id)) jobs.delete(id);
  emit(null);
}

export async function refreshJobs() {
  replaceAll(await api("/api/jobs"));
}

// Status events seen, per job. An answer to a fetch begun before the latest of them may
// be older than what that event said (a job shown processing after its "failed"), so it
// is asked for again rather than merged.
const statusEvents = new Map();
const STALE_REFETCHES = 3;

// The job's full detail (files, outputs, download link), fetched now.
export async function loadJob(id) {
  for (let attempt = 0; ; attempt += 1) {
    const seen = statusEvents.get(id) || 0;
    const detail = await api(`/api/jobs/${encodeURIComponent(id)}`);
    if ((statusEvents.get(id) || 0) === seen || attempt >= STALE_REFETCHES) {
      merge(detail);
      return jobs.get(id);
    }
  }
}

export function removeJob(id) {
  merge({ jobId: id, status: "deleted" });
}

async function poll() {
  clearTimeout(pollTimer);
  pollTimer = null;
  if (polling) return;
  polling = true;
  try {
    await refreshJobs();
    const details = [...jobs.values()].filter((job) => ACTIVE.has(job.status) || job.files);
    await Promise.all(details.map((job) => loadJob(job.id).catch(() => {})));
    if (connection === "offline") setConnection("reconnecting");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    setConnection("offline");
  } finally {
    polling = false;
  }
  if (running && connection !== "live") pollTimer = setTimeout(poll, POLL_MS);
}

function scheduleReconnect() {
  if (!running || retryTimer) return;
  retryTimer = setTimeout(() => {
    retryTimer = null;
    connect();
  }, retryMs);
  retryMs = Math.min(retryMs * 2, LAST_RETRY_MS);
  if (!pollTimer) poll();
}

async function connect() {
  if (!running) return;
  let link;
  try {
    link = await api("/api/events/link", { method: "POST" });
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      setConnection("offline");
      scheduleReconnect();
    }
    return;
  }
  if (!running) return;
  const stream = new EventSource(link.url);
  source = stream;
  stream.addEventListener("open", () => {
    retryMs = FIRST_RETRY_MS;
    clearTimeout(pollTimer);
    pollTimer = null;
    setConnection("live");
  });
  stream.addEventListener("snapshot", (event) => {
    replaceAll(JSON.parse(event.data));
    // The snapshot carries no thumbnail links: the list, with them, comes with the session.
    refreshJobs().catch(() => {});
  });
  stream.addEventListener("status", (event) => mergeState(JSON.parse(event.data)));
  stream.addEventListener("progress", (event) => mergeProgress(JSON.parse(event.data)));
  stream.addEventListener("error", () => {
    // The browser retries a dropped stream by itself with the same link; a refused or
    // expired link closes it for good: then ask for a new one, later.
    if (stream.readyState === EventSource.CLOSED) {
      if (source === stream) source = null;
      setConnection("reconnecting");
      scheduleReconnect();
    } else {
      setConnection("reconnecting");
      if (!pollTimer) poll();
    }
  });
}

export function startLive() {
  if (running) return;
  running = true;
  connect();
  refreshTimer = setInterval(() => {
    if (connection === "live") poll();
  }, REFRESH_LINKS_MS);
}

export function stopLive() {
  running = false;
  source?.close();
  source = null;
  clearTimeout(retryTimer);
  clearTimeout(pollTimer);
  clearInterval(refreshTimer);
  retryTimer = pollTimer = refreshTimer = null;
  jobs.clear();
  connection = "reconnecting";
}
