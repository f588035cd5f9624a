// A browser notification when a job ends while the tab is hidden. Permission is asked
// once (on the first upload, or when the person turns them on); the choice is remembered.

const CHOICE_KEY = "videoRefresherNotifications"; // "on" or "off"
const ASKED_KEY = "videoRefresherNotificationsAsked";

export function supported() {
  return "Notification" in window;
}

export function blocked() {
  return supported() && Notification.permission === "denied";
}

export function enabled() {
  if (!supported() || Notification.permission !== "granted") return false;
  return localStorage.getItem(CHOICE_KEY) !== "off";
}

// Ask for permission if it was never asked; resolves to whether notifications are on.
export async function askOnce() {
  if (!supported() || localStorage.getItem(ASKED_KEY)) return enabled();
  localStorage.setItem(ASKED_KEY, "yes");
  if (Notification.permission === "default") await Notification.requestPermission();
  return enabled();
}

export async function setEnabled(on) {
  localStorage.setItem(CHOICE_KEY, on ? "on" : "off");
  if (on && supported() && Notification.permission === "default") {
    localStorage.setItem(ASKED_KEY, "yes");
    await Notification.requestPermission();
  }
  return enabled();
}

const ENDINGS = {
  completed: (job) => `${job.totalVariations} variation${job.totalVariations === 1 ? " is" : "s are"} ready to download.`,
  failed: (job) => `The job failed: ${job.error || "no variation could be made."}`,
  cancelled: () => "The job was cancelled.",
};

export function notifyFinished(job) {
  const describe = ENDINGS[job.status];
  if (!describe || document.visibilityState !== "hidden" || !enabled()) return;
  const names = job.fileNames || (job.files || []).map((file) => file.name);
  const title = names.length ? `Video Refresher: ${names[0]}${names.length > 1 ? ` and ${names.length - 1} more` : ""}` : "Video Refresher";
  const notification = new Notification(title, { body: describe(job), tag: job.id });
  notification.addEventListener("click", () => {
    window.focus();
    location.hash = `#/jobs/${job.id}`;
    notification.close();
  });
}
