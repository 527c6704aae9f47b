// The page: routes between the three views by the URL hash (#generate, #history,
// #history/<job id>, #dashboard), shows the server's state from GET /readyz, and asks for
// the API key when the server wants one.

import { api, apiKey, setKeyPrompt } from "./api.js";
import { $, $$ } from "./dom.js";
import { leaveDashboard, showDashboard } from "./dashboard.js";
import { initGenerate, setModelDefaults } from "./generate.js";
import { initHistory, leaveHistory, showHistory } from "./history.js";

const VIEWS = ["generate", "history", "dashboard"];
let server = { model: null, device: null };
let current = null;
let readDelay = 2000;

/** The key dialog: resolves the key typed, or null when cancelled. `reason` is the
 * server's message when a stored key was refused. */
function promptForKey(reason) {
  const dialog = $("#key-dialog");
  const input = $("#key-input");
  const why = reason ? reason.replace(/^authorization:\s*/, "") : "";
  $("#key-error").textContent = why ? `${why.charAt(0).toUpperCase()}${why.slice(1)}. Try again.` : "";
  input.value = "";
  input.setAttribute("aria-invalid", reason ? "true" : "false");
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const key = dialog.returnValue === "save" ? input.value.trim() : "";
      resolve(key || null);
    }, { once: true });
    dialog.showModal();
    input.focus();
  });
}

function route() {
  const [name, arg] = (location.hash.replace(/^#/, "") || "generate").split("/");
  const view = VIEWS.includes(name) ? name : "generate";
  for (const v of VIEWS) $(`#view-${v}`).hidden = v !== view;
  for (const a of $$(".tabs a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (current !== view) {
    if (current === "history") leaveHistory();
    if (current === "dashboard") leaveDashboard();
    document.title = `${view[0].toUpperCase()}${view.slice(1)} · steadygen`;
  }
  const entering = current !== view;
  current = view;
  if (view === "history") showHistory(arg ? decodeURIComponent(arg) : null);
  if (view === "dashboard") showDashboard(server.device);
  if (view === "generate" && entering) $("#prompt").focus({ preventScroll: true });
}

function showServer(info, ok) {
  const box = $("#server-status");
  box.dataset.state = ok ? (info.ready ? "ready" : "starting") : "down";
  let text = "server unreachable";
  if (ok) {
    const what = [info.model, info.device].filter(Boolean).join(" on ");
    text = info.ready ? what : `${what}: ${info.error || (info.loaded ? "warming up" : "loading")}`;
  }
  $(".text", box).textContent = text;
  box.title = ok ? `model ${info.model}, device ${info.device}, ready: ${info.ready}` : "GET /readyz failed";
  $("#tiny-banner").hidden = !(ok && info.model === "zimage-tiny");
}

async function readServer() {
  try {
    const info = await api("/readyz", { accept: [503] });
    server = info;
    showServer(info, true);
    setModelDefaults(info);
    // While the model loads, look again now and then (backing off); never once it is ready.
    if (!info.ready && !info.error) {
      readDelay = Math.min(readDelay * 1.5, 30000);
      setTimeout(readServer, readDelay);
    }
  } catch {
    showServer({}, false);
  }
}

async function start() {
  setKeyPrompt(promptForKey);
  initHistory();
  const generate = initGenerate();
  await readServer();
  window.addEventListener("hashchange", route);
  // A dashboard in a background tab keeps no stream open; it resumes when shown again.
  document.addEventListener("visibilitychange", () => {
    if (current !== "dashboard") return;
    if (document.hidden) leaveDashboard();
    else showDashboard(server.device);
  });
  route();
  await generate;
  // Ask for the key now if the server wants one, rather than in the middle of a task.
  if (!apiKey()) api("/v1/jobs?limit=1").catch(() => {});
}

start();
