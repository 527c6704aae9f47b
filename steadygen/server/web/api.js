// The page's only door to the server: JSON calls, the SSE reader and image loading, all
// with the API key when one is set. On a 401 the page asks for the key once (concurrent
// calls share the question), keeps it in localStorage and retries.

import { sleep } from "./dom.js";

const KEY_STORE = "steadygen.apiKey";

/** An error answer of the API: {"error": {"message", "param", "errors": [{field, message}]}}. */
export class ApiError extends Error {
  constructor(status, message, param = null, errors = []) {
    super(message);
    this.status = status;
    this.param = param;
    this.errors = errors.length ? errors : param ? [{ field: param, message }] : [];
  }
}

let keyPrompt = async () => null; // set by the app: (reason) => Promise<string|null>
let pendingKey = null;

export function setKeyPrompt(fn) {
  keyPrompt = fn;
}

export function apiKey() {
  try {
    return localStorage.getItem(KEY_STORE) || null;
  } catch {
    return null;
  }
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** Ask for a key after a 401; resolves true when a new key was given. */
async function askForKey(reason) {
  if (!pendingKey) {
    pendingKey = Promise.resolve(keyPrompt(reason)).finally(() => {
      pendingKey = null;
    });
  }
  const key = await pendingKey;
  if (!key) return false;
  localStorage.setItem(KEY_STORE, key);
  return true;
}

async function errorOf(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  const err = body && body.error;
  if (err && typeof err.message === "string") {
    return new ApiError(res.status, err.message, err.param, err.errors || []);
  }
  return new ApiError(res.status, `${res.status} ${res.statusText || "error"}`);
}

/** fetch with the key; a 401 asks for the key and tries again (the question is shown
 * again, with the server's reason, if the key given was wrong). */
async function authedFetch(path, init = {}) {
  for (;;) {
    const res = await fetch(path, { ...init, headers: { ...init.headers, ...authHeaders() } });
    if (res.status !== 401) return res;
    const err = await errorOf(res);
    const had = apiKey();
    if (!(await askForKey(had ? err.message : null))) throw err;
  }
}

/** A JSON call. Returns the parsed body; throws ApiError on an error answer.
 * `accept` lists extra statuses whose body is returned (GET /readyz answers 503). */
export async function api(path, { method = "GET", body, signal, accept = [] } = {}) {
  const init = { method, signal, headers: { Accept: "application/json" }, cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const res = await authedFetch(path, init);
  if (!res.ok && !accept.includes(res.status)) throw await errorOf(res);
  return res.json();
}

/** Split a text stream into SSE events (WHATWG rules: CR, LF or CRLF line ends, ':'
 * comments, data lines joined by LF). onEvent returning true stops the stream. */
export async function readEvents(stream, onEvent) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let ev = { id: null, event: "message", data: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buf += value;
      const heldCR = buf.endsWith("\r"); // may be the first half of a CRLF
      const lines = (heldCR ? buf.slice(0, -1) : buf).replace(/\r\n?/g, "\n").split("\n");
      buf = lines.pop() + (heldCR ? "\r" : "");
      for (const line of lines) {
        if (line === "") {
          if (ev.data.length && onEvent({ ...ev, data: ev.data.join("\n") })) return true;
          ev = { id: ev.id, event: "message", data: [] };
          continue;
        }
        if (line.startsWith(":")) continue;
        const at = line.indexOf(":");
        const field = at < 0 ? line : line.slice(0, at);
        let val = at < 0 ? "" : line.slice(at + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "data") ev.data.push(val);
        else if (field === "event") ev.event = val || "message";
        else if (field === "id" && !val.includes("\0")) ev.id = val;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** Follow an SSE endpoint with fetch (EventSource cannot send Authorization).
 * Reconnects with Last-Event-ID after a drop, backing off up to 15 s.
 * onEvent({id, event, data}) -> true to stop. Returns {close()}. */
export function openStream(path, { onEvent, onOpen, onError, lastEventId = null } = {}) {
  const ctrl = new AbortController();
  let last = lastEventId;
  let closed = false;
  let retryMs = 1000;
  const run = async () => {
    while (!closed) {
      try {
        const headers = { Accept: "text/event-stream" };
        if (last) headers["Last-Event-ID"] = last;
        const res = await authedFetch(path, { headers, signal: ctrl.signal, cache: "no-store" });
        if (!res.ok) throw await errorOf(res);
        retryMs = 1000;
        if (onOpen) onOpen();
        const stopped = await readEvents(res.body, (ev) => {
          if (ev.id) last = ev.id;
          return onEvent(ev);
        });
        if (stopped) return;
      } catch (err) {
        if (closed || err.name === "AbortError") return;
        if (onError) onError(err);
        if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429) {
          return; // asking again will not help
        }
      }
      if (closed) return;
      await sleep(retryMs);
      retryMs = Math.min(retryMs * 2, 15000);
    }
  };
  run();
  return {
    close() {
      closed = true;
      ctrl.abort();
    },
  };
}

// Images: with a key, <img src> cannot send it, so they are fetched and shown as blob URLs
// (kept for the page's lifetime: a job's images never change).
const blobs = new Map();

/** A URL an <img> or a download link can use for an API image path. */
export async function imageUrl(path) {
  if (!apiKey()) return path;
  if (!blobs.has(path)) {
    const load = authedFetch(path, {}).then(async (res) => {
      if (!res.ok) throw await errorOf(res);
      return URL.createObjectURL(await res.blob());
    });
    blobs.set(path, load);
    load.catch(() => blobs.delete(path));
  }
  return blobs.get(path);
}

/** Point an <img> (and any links: view, download) at an API image. */
export function showImage(img, path, ...links) {
  imageUrl(path).then(
    (url) => {
      img.src = url;
      for (const link of links) link.href = url;
    },
    () => img.classList.add("broken"),
  );
}
