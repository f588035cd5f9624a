// Talking to the server: the session, JSON requests, and the upload with its progress.
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

// Send a job's files; `onProgress(loaded, total)` as bytes leave. Returns {done, abort}:
// `done` resolves to the created job, or rejects with an ApiError (status 0: cut off, or
// "aborted" when abort() was called).
export function uploadJob(form, onProgress) {
  const request = new XMLHttpRequest();
  const done = new Promise((resolve, reject) => {
    request.open("POST", "/api/jobs");
    for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
    request.upload.addEventListener("progress", (event) => onProgress(event.loaded, event.total));
    request.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch {}
      if (request.status === 202) return resolve(body);
      const error = errorOf(request.status, body);
      if (request.status === 401) endSession(error.message);
      reject(error);
    });
    request.addEventListener("error", () =>
      reject(new ApiError("The upload was cut off: the connection to the server was lost. Try again.", 0)),
    );
    request.addEventListener("abort", () => reject(Object.assign(new ApiError("Upload cancelled."), { aborted: true })));
    request.send(form);
  });
  return { done, abort: () => request.abort() };
}
