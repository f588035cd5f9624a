// The login view: the team's shared password, and clear words when it does not work.

import { ApiError, login, saveSession } from "./api.js";
import { h } from "./dom.js";

// `notice` says why the person is here (a session that expired); `onLoggedIn` goes on.
export function render(root, { notice, onLoggedIn }) {
  const password = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const button = h("button", { type: "submit", class: "button primary" }, "Log in");
  const message = h("p", { id: "login-message", class: "message", role: "alert" });
  let countdown = null;

  const show = (text, kind = "error") => {
    message.className = `message message-${kind}`;
    message.textContent = text;
  };
  if (notice) show(notice, "warning");

  // Too many tries: say how long to wait, and count it down.
  const waitFor = (seconds, text) => {
    let left = seconds;
    button.disabled = true;
    show(text);
    countdown = setInterval(() => {
      left -= 1;
      if (left > 0) {
        show(`Too many wrong passwords; try again in ${left} seconds.`);
        return;
      }
      clearInterval(countdown);
      button.disabled = false;
      show("You can try again now.", "info");
    }, 1000);
  };

  const form = h(
    "form",
    { id: "login", class: "card narrow", novalidate: true },
    h("h1", { tabindex: "-1" }, "Log in"),
    h("p", { class: "muted" }, "Enter the team's shared password to upload creatives and collect their variations."),
    h("label", { for: "password" }, "Team password"),
    password,
    button,
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!password.value) {
      show("Enter the team password.");
      password.focus();
      return;
    }
    button.disabled = true;
    show("Logging in…", "info");
    try {
      saveSession(await login(password.value));
      onLoggedIn();
    } catch (error) {
      button.disabled = false;
      password.select();
      if (error instanceof ApiError && error.status === 429 && error.retryAfter) waitFor(error.retryAfter, error.message);
      else if (error.retryable) show(`${error.message} Then press Log in again.`);
      else show(error.message);
    }
  });
  root.replaceChildren(form);
  password.focus();
  return () => clearInterval(countdown);
}
