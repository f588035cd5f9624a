// Talking to the server: the session, JSON requests, and resumable uploads.
// Only a 401 ends the session; a lost connection or a 5xx is an error to retry.

const SESSION_KEY = "videoRefresherSession";

export class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
    // Worth trying again as is: the network or the server failed, not the request.
    this.retryable = status === 0 || status >= 500;
  }
}

export const UNREACHABLE = "The server cannot be reached. Check the connection; the page keeps trying.";

export function session() {
  try {
    return JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
  } catch {
    return null;
  }
}

export function sessionValid() {
  const saved = session();
  return Boolean(saved && saved.token && Date.parse(saved.expiresAt) > Date.now());
}

export function saveSession(saved) {
  localStorage.setItem(SESSION_KEY, JSON.stringify({ token: saved.token, expiresAt: saved.expiresAt }));
}

export function clearSession() {
  localStorage.removeItem(SESSION_KEY);
}

// Tell the app the session is over (it shows the login with `message`).
function endSession(message) {
  clearSession();
  window.dispatchEvent(new CustomEvent("session-ended", { detail: { message } }));
}

function authHeaders() {
  const saved = session();
  return saved ? { Authorization: `Bearer ${saved.token}` } : {};
}

function errorOf(status, body) {
  if (body && typeof body.error === "string") return new ApiError(body.error, status);
  if (status >= 500) return new ApiError(`The server had a problem (${status}). Try again in a moment.`, status);
  return new ApiError(`The server answered ${status}.`, status);
}

// A JSON request; resolves to the parsed body, rejects with an ApiError.
export async function api(path, { method = "GET", json, signal } = {}) {
  const headers = authHeaders();
  if (json !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, signal, body: json === undefined ? undefined : JSON.stringify(json) });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(UNREACHABLE, 0);
  }
  const body = await response.json().catch(() => null);
  if (response.ok) return body;
  const error = errorOf(response.status, body);
  error.retryAfter = Number(response.headers.get("Retry-After")) || 0;
  if (response.status === 401 && path !== "/api/auth") endSession(error.message);
  throw error;
}

export function login(password) {
  return api("/api/auth", { method: "POST", json: { password } });
}

// A resumable upload (tus 1.0, through the vendored tus-js-client that index.html loads
// as window.tus). Each PATCH carries at most this much: the server keeps every chunk it
// has acknowledged, so a cut connection costs at most the chunk in flight (seconds on a
// slow uplink) and the upload goes on from the last acknowledged byte; much bigger chunks
// would lose more to a cut, much smaller ones spend more time on requests than on bytes.
const CHUNK_BYTES = 8 * 1024 * 1024;
// The waits before each try again. tus-js-client starts the list over whenever a try has
// moved the upload forward, so only a connection that stays down reaches its end: a few
// quick tries, then one every 20 s for about half an hour.
const RETRY_DELAYS_MS = [0, 1000, 3000, 5000, 10000, 20000, ...new Array(90).fill(20000)];
export const CUT_OFF = "The upload was cut off: the connection to the server was lost. Try again; it goes on from where it stopped.";

// What the server answered a tus request (0: it did not answer), and its sentence.
function answerOf(error) {
  const response = error?.originalResponse;
  const status = response ? response.getStatus() : 0;
  let body = null;
  try {
    body = JSON.parse(response?.getBody() || "null");
  } catch {}
  return { status, body };
}

// Worth sending again: the connection failed (offline included: the page waits for it to
// come back, unlike tus-js-client's default), the server failed, or the offset did not
// match (409) or the upload was busy (423): resuming asks the server where it stands.
// Any other 4xx is the request's fault; sending it again would be refused again.
function worthRetrying(status) {
  return status === 0 || status >= 500 || status === 409 || status === 423;
}

// Send `file` as a resumable upload. `onProgress(sent, size)` as bytes leave;
// `onWaiting()` when a try failed and the next waits. Returns {done, start, resume,
// abort}: `start()` goes on from an upload this browser began earlier for the same file
// (after a reload or a cut) when the server still has it; `done` resolves to the upload's
// id, or rejects with an ApiError (`status` 0 when the server could not be reached);
// `resume()` tries again at once (the connection is back); `abort(true)` also removes
// the upload from the server.
export function resumableUpload(file, { onProgress, onWaiting }) {
  let upload;
  let waiting = false;
  const done = new Promise((resolve, reject) => {
    upload = new window.tus.Upload(file, {
      endpoint: new URL("/api/uploads", location.href).href, // tus resolves Location against it
      headers: authHeaders(),
      metadata: { filename: file.name, filetype: file.type },
      chunkSize: CHUNK_BYTES,
      retryDelays: RETRY_DELAYS_MS,
      removeFingerprintOnSuccess: true,
      storeFingerprintForResuming: true,
      onShouldRetry: (error) => {
        waiting = worthRetrying(answerOf(error).status);
        if (waiting) onWaiting?.();
        return waiting;
      },
      onProgress: (sent, size) => {
        waiting = false;
        onProgress(sent, size);
      },
      onSuccess: () => resolve(decodeURIComponent(new URL(upload.url).pathname.split("/").pop())),
      onError: (error) => {
        const { status, body } = answerOf(error);
        if (status === 0) return reject(new ApiError(CUT_OFF, 0));
        const failure = errorOf(status, body);
        if (status === 401) endSession(failure.message);
        reject(failure);
      },
    });
  });
  let aborted = false;
  const start = async () => {
    const previous = await upload.findPreviousUploads().catch(() => []);
    if (aborted) return; // stopped while looking: start nothing the server would keep
    if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
    upload.start();
  };
  const resume = () => {
    if (!waiting || aborted) return;
    waiting = false;
    upload.abort().then(() => aborted || upload.start());
  };
  const abort = (terminate = false) => {
    aborted = true;
    return upload.abort(terminate).catch(() => {});
  };
  return { done, start, resume, abort };
}

// A job from finished uploads, by their ids; resolves to the job as the server made it.
export function createJob({ uploads, variations, strength, mirror }) {
  const json = { uploads, variations };
  if (strength) json.strength = strength;
  if (mirror !== null && mirror !== undefined) json.mirror = mirror;
  return api("/api/jobs", { method: "POST", json });
}

// Queue a failed file of a job again from the source the server kept.
export function retryFile(jobId, fileId) {
  return api(`/api/jobs/${encodeURIComponent(jobId)}/files/${encodeURIComponent(fileId)}/retry`, { method: "POST" });
}
