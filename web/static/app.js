// The page's entry: hash routes to one view each, the navigation bar, the session.
//   #/login   #/jobs   #/new   #/jobs/<id>
// Plain ES modules, no build step.

import { api, clearSession, session, sessionValid, UNREACHABLE } from "./js/api.js";
import * as detail from "./js/detail.js";
import { h, toast } from "./js/dom.js";
import * as jobsView from "./js/jobs.js";
import * as live from "./js/live.js";
import * as login from "./js/login.js";
import * as notify from "./js/notify.js";
import * as upload from "./js/upload.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
let cleanup = () => {};
let config = null;
let loginNotice = null;
let returnTo = null;

function navigate(hash, message) {
  if (message) toast(message);
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function loadConfig() {
  while (!config) {
    try {
      config = await api("/api/config");
    } catch (error) {
      view.replaceChildren(
        h("div", { class: "card narrow stack", role: "alert" }, h("h1", {}, "Cannot reach Video Refresher"), h("p", {}, error.message || UNREACHABLE),
          h("button", { type: "button", class: "button primary", onclick: () => location.reload() }, "Try again")),
      );
      await new Promise((resolve) => setTimeout(resolve, 5000));
    }
  }
  return config;
}

function drawNav(current) {
  const loggedIn = sessionValid();
  const link = (hash, text, name) => h("a", { href: hash, class: "nav-link", "aria-current": current === name ? "page" : null }, text);
  const items = [h("a", { href: loggedIn ? "#/jobs" : "#/login", class: "brand" }, h("span", { class: "brand-mark", "aria-hidden": "true" }, "↻"), "Video Refresher")];
  if (loggedIn) {
    const toggle = h("input", { type: "checkbox", id: "notify-toggle", checked: notify.enabled(), disabled: !notify.supported() || notify.blocked() });
    toggle.addEventListener("change", async () => {
      toggle.checked = await notify.setEnabled(toggle.checked);
      if (notify.blocked()) toast("Notifications are blocked in this browser's site settings.", "error");
    });
    items.push(
      h("nav", { "aria-label": "Main" }, link("#/jobs", "Jobs", "jobs"), link("#/new", "New job", "new")),
      h("span", { id: "connection", role: "status" }),
      h("label", { class: "toggle", title: notify.blocked() ? "Blocked in this browser's site settings" : "Tell me when a job ends while this tab is hidden" }, toggle, "Notify me"),
      h("button", { id: "logout", type: "button", class: "button small", onclick: logout }, "Log out"),
    );
  }
  nav.replaceChildren(...items);
  showConnection();
}

const CONNECTION_WORDS = { live: "Live", reconnecting: "Reconnecting…", offline: "Offline, retrying" };

function showConnection() {
  const shown = nav.querySelector("#connection");
  if (!shown) return;
  shown.className = `connection connection-${live.connection}`;
  shown.textContent = CONNECTION_WORDS[live.connection];
}

function logout() {
  live.stopLive();
  clearSession();
  loginNotice = "You are logged out.";
  navigate("#/login");
}

function endSession(message) {
  live.stopLive();
  loginNotice = message || "Your session has ended; log in again.";
  if (!location.hash.startsWith("#/login")) returnTo = location.hash;
  navigate("#/login");
}

async function route() {
  cleanup();
  cleanup = () => {};
  const hash = location.hash || "#/jobs";
  const [, name = "jobs", id] = hash.split("/");
  const expired = session() && !sessionValid();
  if (name !== "login" && !sessionValid()) {
    if (expired) loginNotice = "Your session has expired; log in again.";
    clearSession();
    returnTo = hash;
    location.replace("#/login");
    return;
  }
  if (name === "login" && sessionValid()) return location.replace("#/jobs");
  await loadConfig();
  drawNav(name);
  const title = { login: "Log in", new: "New job", jobs: id ? "Job" : "Jobs" }[name];
  document.title = title ? `${title} · Video Refresher` : "Video Refresher";
  if (name === "login") {
    cleanup = login.render(view, {
      notice: loginNotice,
      onLoggedIn: () => {
        loginNotice = null;
        live.startLive();
        navigate(returnTo && !returnTo.startsWith("#/login") ? returnTo : "#/jobs");
        returnTo = null;
      },
    });
  } else if (name === "new") {
    cleanup = upload.render(view, { config, navigate });
  } else if (name === "jobs" && id) {
    cleanup = detail.render(view, { id: decodeURIComponent(id), config, navigate });
  } else if (name === "jobs") {
    cleanup = jobsView.render(view);
  } else {
    view.replaceChildren(h("div", { class: "card narrow" }, h("h1", { tabindex: "-1" }, "Nothing here"), h("a", { href: "#/jobs" }, "Go to your jobs")));
  }
  if (name !== "login") {
    live.startLive();
    view.querySelector("h1")?.focus({ preventScroll: true });
  }
}

window.addEventListener("hashchange", route);
// The skip link must not change the hash: that is the router's.
document.querySelector(".skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  view.focus();
});
window.addEventListener("session-ended", (event) => endSession(event.detail.message));
live.onFinished(notify.notifyFinished);
live.onChange((jobId) => {
  if (jobId === null) showConnection();
});
route();
