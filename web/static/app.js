// The page: log in, upload creatives with a progress bar, follow jobs live, download.
// Plain ES module, no build step.
const TOKEN_KEY = "videoRefresherToken";
// "deleted" is what a job's event stream says last when its owner deleted it.
const TERMINAL = new Set(["completed", "failed", "cancelled", "expired", "evicted", "deleted"]);
const $ = (id) => document.getElementById(id);
const streams = new Map(); // job id -> EventSource

function session() {
  try {
    const saved = JSON.parse(localStorage.getItem(TOKEN_KEY) || "null");
    return saved && Date.parse(saved.expiresAt) > Date.now() ? saved.token : null;
  } catch {
    return null;
  }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const token = session();
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401 && path !== "/api/auth") showLogin();
  if (!response.ok) throw new Error(body.error || `The server answered ${response.status}.`);
  return body;
}

function showLogin() {
  localStorage.removeItem(TOKEN_KEY);
  for (const source of streams.values()) source.close();
  streams.clear();
  $("app").hidden = true;
  $("login").hidden = false;
  $("password").focus();
}

function timeLeft(expiresAt) {
  const ms = Date.parse(expiresAt) - Date.now();
  if (ms <= 0) return "expired";
  const hours = Math.floor(ms / 3_600_000);
  const minutes = Math.floor((ms % 3_600_000) / 60_000);
  return `${hours} h ${minutes} min left`;
}

function renderJob(job, item) {
  item.dataset.jobId = job.jobId;
  item.querySelector(".job-names").textContent = job.files.map((f) => f.name).join(", ");
  item.querySelector(".job-status").textContent =
    `${job.status} · ${job.completedVariations}/${job.totalVariations} variations`;
  item.querySelector(".job-expiry").textContent = timeLeft(job.expiresAt);
  item.querySelector(".job-progress").value = job.overallProgress;
  item.querySelector(".job-error").textContent = job.error || "";
  const thumb = item.querySelector(".thumb");
  if (job.thumbnailUrl) thumb.src = `${job.thumbnailUrl}?token=${encodeURIComponent(session())}`;
  const link = item.querySelector(".job-download");
  link.hidden = !job.downloadUrl;
  if (job.downloadUrl) {
    link.href = job.downloadUrl;
    link.textContent = `Download ZIP (${(job.downloadBytes / 1e6).toFixed(1)} MB)`;
  }
  const active = !TERMINAL.has(job.status);
  item.querySelector(".job-cancel").hidden = !active;
  item.querySelector(".job-delete").hidden = active;
}

function follow(jobId) {
  if (streams.has(jobId)) return;
  const url = `/api/jobs/${jobId}/events?token=${encodeURIComponent(session())}`;
  const source = new EventSource(url);
  streams.set(jobId, source);
  const item = () => document.querySelector(`[data-job-id="${jobId}"]`);
  source.addEventListener("progress", (event) => {
    const data = JSON.parse(event.data);
    const bar = item()?.querySelector(".job-progress");
    if (bar) bar.value = data.overallProgress;
  });
  source.addEventListener("status", (event) => {
    const job = JSON.parse(event.data);
    if (job.status === "deleted") item()?.remove();
    else if (job.jobId && item()) renderJob(job, item());
    if (TERMINAL.has(job.status)) {
      source.close();
      streams.delete(jobId);
      if (job.status === "completed" && Notification?.permission === "granted") {
        new Notification("Video Refresher", { body: `${job.totalVariations} variations are ready.` });
      }
    }
  });
}

async function showJobs() {
  $("login").hidden = true;
  $("app").hidden = false;
  const summaries = await api("/api/jobs");
  const details = await Promise.all(summaries.map((job) => api(`/api/jobs/${job.id}`)));
  const list = $("job-list");
  list.replaceChildren(
    ...details.map((job) => {
      const item = $("job-template").content.firstElementChild.cloneNode(true);
      renderJob(job, item);
      if (!TERMINAL.has(job.status)) follow(job.jobId);
      return item;
    }),
  );
  $("jobs-empty").hidden = details.length > 0;
}

function uploadWithProgress(form) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", "/api/jobs");
    request.setRequestHeader("Authorization", `Bearer ${session()}`);
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) $("upload-progress").value = (100 * event.loaded) / event.total;
    });
    request.addEventListener("load", () => {
      let body = {};
      try {
        body = JSON.parse(request.responseText);
      } catch {}
      if (request.status === 202) resolve(body);
      else reject(new Error(body.error || `The server answered ${request.status}.`));
    });
    request.addEventListener("error", () => reject(new Error("The upload was interrupted.")));
    request.send(new FormData(form));
  });
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    const created = await api("/api/auth", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ password: $("password").value }),
    });
    localStorage.setItem(TOKEN_KEY, JSON.stringify(created));
    $("password").value = "";
    await showJobs();
  } catch (error) {
    $("login-error").textContent = error.message;
  }
});

$("upload").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("upload-error").textContent = "";
  $("upload-button").disabled = true;
  $("upload-progress").hidden = false;
  $("upload-progress").value = 0;
  $("upload-status").textContent = "Uploading…";
  if (window.Notification && Notification.permission === "default") Notification.requestPermission();
  try {
    const job = await uploadWithProgress(event.target);
    $("upload-status").textContent = `Queued ${job.totalVariations} variations.`;
    event.target.reset();
    await showJobs();
  } catch (error) {
    $("upload-status").textContent = "";
    $("upload-error").textContent = error.message;
  } finally {
    $("upload-button").disabled = false;
    $("upload-progress").hidden = true;
  }
});

$("job-list").addEventListener("click", async (event) => {
  const item = event.target.closest(".job");
  if (!item) return;
  const jobId = item.dataset.jobId;
  try {
    if (event.target.classList.contains("job-cancel")) {
      await api(`/api/jobs/${jobId}/cancel`, { method: "POST" });
    } else if (event.target.classList.contains("job-delete")) {
      await api(`/api/jobs/${jobId}`, { method: "DELETE" });
    } else {
      return;
    }
    await showJobs();
  } catch (error) {
    item.querySelector(".job-error").textContent = error.message;
  }
});

$("logout").addEventListener("click", showLogin);

fetch("/api/health")
  .then((response) => response.json())
  .then((health) => ($("service-status").textContent = `service ${health.status}, v${health.version}`))
  .catch(() => ($("service-status").textContent = "service unreachable"));

if (session()) showJobs().catch(showLogin);
else showLogin();
