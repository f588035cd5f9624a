// The page: log in with the team password, then list jobs. Plain ES module, no build step.
const TOKEN_KEY = "videoRefresherToken";

const $ = (id) => document.getElementById(id);

function savedToken() {
  const raw = localStorage.getItem(TOKEN_KEY);
  if (!raw) return null;
  try {
    const { token, expiresAt } = JSON.parse(raw);
    return Date.parse(expiresAt) > Date.now() ? token : null;
  } catch {
    return null;
  }
}

async function api(path, options = {}) {
  const token = savedToken();
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401 && path !== "/api/auth") showLogin();
  if (!response.ok) throw new Error(body.error || `The server answered ${response.status}.`);
  return body;
}

function showLogin() {
  localStorage.removeItem(TOKEN_KEY);
  $("jobs").hidden = true;
  $("login").hidden = false;
  $("password").focus();
}

async function showJobs() {
  $("login").hidden = true;
  $("jobs").hidden = false;
  const jobs = await api("/api/jobs");
  const list = $("job-list");
  list.replaceChildren(
    ...jobs.map((job) => {
      const item = document.createElement("li");
      item.textContent = `${job.fileNames.join(", ")} — ${job.status}`;
      return item;
    }),
  );
  $("jobs-empty").hidden = jobs.length > 0;
}

async function showHealth() {
  try {
    const health = await fetch("/api/health").then((r) => r.json());
    $("service-status").textContent = `service ${health.status}, version ${health.version}`;
  } catch {
    $("service-status").textContent = "service unreachable";
  }
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    const session = await api("/api/auth", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ password: $("password").value }),
    });
    localStorage.setItem(TOKEN_KEY, JSON.stringify(session));
    $("password").value = "";
    await showJobs();
  } catch (error) {
    $("login-error").textContent = error.message;
  }
});

$("logout").addEventListener("click", showLogin);

showHealth();
if (savedToken()) showJobs().catch(showLogin);
else showLogin();
