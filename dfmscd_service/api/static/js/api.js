// The API client of the page: the key lives in sessionStorage and goes in every request's
// Authorization header, never in a URL (EventSource cannot send headers, so events are read
// with fetch() and a ReadableStream instead).

const KEY_NAME = "dfmscd.apiKey";

export function getKey() { return sessionStorage.getItem(KEY_NAME); }
export function setKey(key) { sessionStorage.setItem(KEY_NAME, key); }
export function clearKey() { sessionStorage.removeItem(KEY_NAME); }

/** An error answered by the API: status plus its {"error": {"code", "message"}} body. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorFrom(response) {
  let code = `http_${response.status}`, message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) ({code, message} = body.error);
  } catch { /* not JSON: keep the status line */ }
  if (response.status === 401) window.dispatchEvent(new CustomEvent("dfmscd:unauthorized", {detail: message}));
  return new ApiError(response.status, code, message);
}

/** fetch() with the key; throws ApiError for a non-2xx answer. */
export async function request(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = options.key ?? getKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let response;
  try {
    response = await fetch(path, {...options, headers});
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, "network_error", `cannot reach the API: ${exc.message}`);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function getJSON(path, options) {
  return (await request(path, options)).json();
}

export async function postJSON(path, body, headers = {}) {
  const r = await request(path, {method: "POST", body: JSON.stringify(body),
                                 headers: {"Content-Type": "application/json", ...headers}});
  return r.json();
}

/** The file name of a Content-Disposition header, or the fallback. */
function filenameOf(response, fallback) {
  const match = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
  return match ? match[1] : fallback;
}

/** Download an authenticated file: fetch it, then save it through an object URL. */
export async function download(path, fallbackName) {
  const response = await request(path);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filenameOf(response, fallbackName);
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return {name: a.download, size: blob.size};
}

/** An authenticated image as an object URL (for <img src>). */
export async function imageURL(path) {
  const blob = await (await request(path)).blob();
  return URL.createObjectURL(blob);
}

/**
 * Follow a job's Server-Sent Events with the key in the header.
 * onEvent({id, event, data}) for each event; resolves when the server sends `end` (the job is
 * finished) or the signal aborts. A dropped connection is resumed with Last-Event-ID.
 */
export async function streamEvents(jobId, onEvent, signal) {
  let lastId = null;
  let failures = 0;
  while (!signal.aborted) {
    const headers = {Accept: "text/event-stream"};
    if (lastId !== null) headers["Last-Event-ID"] = String(lastId);
    let response;
    try {
      response = await request(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {headers, signal});
    } catch (exc) {
      if (signal.aborted || (exc instanceof ApiError && exc.status >= 400 && exc.status < 500 && exc.status !== 429)) throw exc;
      failures++;
      await pause(Math.min(10_000, 1000 * failures), signal);
      continue;
    }
    failures = 0;
    let ended = false;
    try {
      ended = await readStream(response.body, (evt) => {
        if (evt.id !== null) lastId = evt.id;
        if (evt.event === "error") throw new ApiError(401, "unauthorized", JSON.parse(evt.data).error.message);
        onEvent(evt);
        return evt.event === "end";
      }, signal);
    } catch (exc) {
      if (signal.aborted || exc instanceof ApiError) throw exc;
    }
    if (ended) return;
    await pause(1000, signal);
  }
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, {once: true});
  });
}

/** Parse an SSE body (text/event-stream framing); true once a handler returned true. */
async function readStream(body, handle, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}), {once: true});
  let buffer = "";
  let evt = {id: null, event: "message", data: []};
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return false;
    buffer += value;
    let newline;
    while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
      if (line === "") {
        if (evt.data.length) {
          const stop = handle({id: evt.id, event: evt.event, data: evt.data.join("\n")});
          if (stop) { reader.cancel().catch(() => {}); return true; }
        }
        evt = {id: evt.id, event: "message", data: []};
        continue;
      }
      if (line.startsWith(":")) continue;  // keep-alive comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") evt.data.push(value);
      else if (field === "event") evt.event = value;
      else if (field === "id") evt.id = value;
    }
  }
}
