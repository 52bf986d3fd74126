/**
 * The page helper of sse-gateway: one EventSource for many channels, each event handed over with its channel, the
 * `gap` that tells a page to reload a channel's state, and whether the feed is live. An ES module with no dependency
 * and no build step, served by the gateway at /web/sse-gateway.js.
 *
 *   import { subscribe } from "/web/sse-gateway.js";
 *
 *   const feed = subscribe({ channels: ["stocks", "news"], types: ["trade"] }, {
 *     onEvent: ({ channel, type, data, id }) => show(channel, type, data),  // type is "message" when none was given
 *     onGap: (channel, info) => reload(channel),  // info: {channel, requested, first_available}
 *     onState: (state, detail) => { status.textContent = state; },  // connecting, live, retrying, closed
 *   });
 *   // ...
 *   feed.close();
 *
 * Options: `channels`; `url`, the gateway's base URL (the page's origin by default); `types`, the publishers' event
 * types: EventSource hands a named event only to a listener of that name, so an event whose type is not listed here
 * never arrives; `lastEventId`, where to resume; `withCredentials`, to send the gateway's cookie; `token`, a JWT (or
 * a function returning one, or a promise of one) sent as ?access_token=; `ticket`, an async function of the channels
 * returning a stream ticket (POST /tickets), which keeps the JWT out of the stream's URL:
 *
 *   ticket: async (channels) => (await (await fetch("/tickets", {method: "POST", headers: {Authorization: "Bearer " +
 *     jwt, "Content-Type": "application/json"}, body: JSON.stringify({channels})})).json()).ticket
 *
 * A function `token` or `ticket` is called before each connection the helper opens itself, and again when the
 * gateway answers 401 to a connection that had been live (an expired ticket or token); a fresh one refused is final.
 *
 * States, with `onState(state, detail)`: "connecting" (the first connection), "live" (open), "retrying" (the
 * connection dropped and is being made again; detail.retryMs is the gateway's retry time) and "closed": the gateway
 * refused the stream (detail.reason "refused", detail.status 401, 403 or another 4xx, detail.error its JSON answer),
 * a token or ticket function gave no string (detail.reason "no credential"), or close() was called (detail.reason
 * "close"). The browser reconnects by itself after a drop and resumes with Last-Event-ID; when it gives up (a 5xx,
 * for example), the helper opens a new EventSource after retryMs, resuming from the last id seen.
 *
 * Every received string goes to the callbacks as data: the helper never writes into the page.
 */

const DEFAULT_RETRY_MS = 3000; // the gateway's default, until its X-SSE-Retry header has been read
const PROBE_TIMEOUT_MS = 10_000;

/** The stream URL of `channels` on the gateway at `base`, with `query`'s non-empty values as parameters. */
export function streamUrl(base, channels, query = {}) {
  const root = String(base).replace(/\/+$/, "");
  const single = channels.length === 1;
  const url = new URL(single ? `${root}/events/${encodeURIComponent(channels[0])}` : `${root}/events`, location.href);
  if (!single) for (const channel of channels) url.searchParams.append("channel", channel);
  for (const [name, value] of Object.entries(query)) if (value) url.searchParams.set(name, value);
  return url.href;
}

export function subscribe(options, callbacks = {}) {
  const channels = [...new Set(options.channels ?? [])].map(String);
  if (channels.length === 0) throw new TypeError("subscribe: name at least one channel");
  const types = [...new Set(options.types ?? [])].map(String);
  const base = options.url ?? location.origin;
  streamUrl(base, channels); // a URL that cannot be one throws here, to the caller
  const withCredentials = Boolean(options.withCredentials);
  const refreshable = typeof options.token === "function" || typeof options.ticket === "function";
  let source = null;
  let timer = 0;
  let state = "";
  let ended = false;
  let probed = false;
  let fresh = false; // the current connection's credential was just made: a 401 to it is final
  let retryMs = DEFAULT_RETRY_MS;
  let lastEventId = options.lastEventId ?? "";

  const call = (callback, ...args) => {
    try {
      callback?.(...args);
    } catch (error) {
      reportError(error); // a page's bug must not stop the feed
    }
  };

  const setState = (next, detail = {}) => {
    if (next === state) return;
    state = next;
    call(callbacks.onState, next, detail);
  };

  function dispatch(event) {
    // An event without an id (a gap, a plain PUBLISH) carries the previous one, as the browser keeps it.
    if (event.lastEventId) lastEventId = event.lastEventId;
    if (event.type === "gap") {
      const info = parseJson(event.data);
      const channel = typeof info?.channel === "string" ? info.channel : channels.length === 1 ? channels[0] : null;
      call(callbacks.onGap, channel, info);
      return;
    }
    let channel = channels[0];
    let type = event.type;
    if (channels.length > 1) {
      // A stream of several channels names its events `<channel>` or `<channel>:<type>`.
      channel = channelOf(event.type, channels);
      if (channel === null) return;
      type = event.type === channel ? "message" : event.type.slice(channel.length + 1);
    }
    call(callbacks.onEvent, { channel, type, data: event.data, id: event.lastEventId });
  }

  async function open() {
    // start_event: the gateway names the stream's starting position in a `:start` event, so that a connection the
    // helper must make again before any event has arrived still resumes from there.
    const query = { lastEventId, start_event: "1" };
    try {
      if (options.token) query.access_token = await credential(options.token);
      if (options.ticket) query.ticket = await credential(options.ticket, channels);
    } catch (error) {
      if (!ended) retry({ error });
      return;
    }
    if (ended) return;
    if ((options.token && !query.access_token) || (options.ticket && !query.ticket)) {
      end({ reason: "no credential" });
      return;
    }
    fresh = refreshable;
    const opened = new EventSource(streamUrl(base, channels, query), { withCredentials });
    source = opened;
    const own = (listener) => (event) => source === opened && listener(event);
    for (const name of eventNames(channels, types)) opened.addEventListener(name, own(dispatch));
    opened.addEventListener(":start", own((event) => {
      if (event.lastEventId) lastEventId = event.lastEventId;
    }));
    opened.addEventListener("open", own(() => {
      fresh = false;
      setState("live");
      if (!probed) {
        probed = true;
        learnRetry(opened.url);
      }
    }));
    opened.addEventListener("error", own(() => {
      if (opened.readyState === EventSource.CONNECTING) {
        setState("retrying", { retryMs }); // the browser reconnects by itself, sending Last-Event-ID
      } else {
        source = null; // the browser gave up; the answer to the same request says why
        diagnose(opened.url);
      }
    }));
  }

  async function learnRetry(url) {
    const answer = await probe(url, withCredentials, "HEAD"); // the stream's checks and headers, and no stream
    if (answer?.retryMs != null) retryMs = answer.retryMs;
  }

  async function diagnose(url) {
    const answer = await probe(url, withCredentials);
    if (ended) return;
    if (answer?.retryMs != null) retryMs = answer.retryMs;
    const status = answer?.status ?? 0;
    if (status === 401 && refreshable && !fresh) {
      setState("retrying", { retryMs: 0, status });
      open();
    } else if ((status >= 400 && status < 500 && status !== 408 && status !== 429) || notAStream(answer)) {
      end({ reason: "refused", status, error: answer.error });
    } else {
      retry({ status }); // a network error or a 5xx: try again after the gateway's retry time
    }
  }

  function retry(detail) {
    setState("retrying", { retryMs, ...detail });
    timer = setTimeout(open, retryMs);
  }

  function end(detail) {
    ended = true;
    clearTimeout(timer);
    source?.close();
    source = null;
    setState("closed", detail);
  }

  // After subscribe() has returned, so that the callbacks may use the handle.
  queueMicrotask(() => {
    if (ended) return;
    setState("connecting");
    open();
  });

  return {
    close() {
      if (!ended) end({ reason: "close" });
    },
    get lastEventId() {
      return lastEventId;
    },
    get state() {
      return state;
    },
    get retryMs() {
      return retryMs;
    },
  };
}

function eventNames(channels, types) {
  const names = new Set(["message", "gap", ...types]);
  if (channels.length > 1) {
    for (const channel of channels) {
      names.add(channel);
      for (const type of types) names.add(`${channel}:${type}`);
    }
  }
  return names;
}

function channelOf(name, channels) {
  // The longest listed channel that is the name or its prefix before a colon: with channels "a" and "a:b", the
  // event "a:b:t" is type "t" of "a:b".
  let found = null;
  for (const channel of channels) {
    if ((name === channel || name.startsWith(`${channel}:`)) && (found === null || channel.length > found.length)) {
      found = channel;
    }
  }
  return found;
}

async function credential(value, ...args) {
  const given = typeof value === "function" ? await value(...args) : value;
  return typeof given === "string" ? given : "";
}

async function probe(url, withCredentials, method = "GET") {
  // What the gateway answers this stream's request: its status, its X-SSE-Retry header and, for a refusal read with
  // a GET, its JSON error. A HEAD is answered with the stream's checks and headers and opens no stream; a GET that
  // is not refused opens one, which the abort below ends at its headers.
  const abort = new AbortController();
  const timeout = setTimeout(() => abort.abort(), PROBE_TIMEOUT_MS);
  try {
    const credentials = withCredentials ? "include" : "same-origin";
    const response = await fetch(url, { method, credentials, cache: "no-store", signal: abort.signal });
    const retry = response.headers.get("X-SSE-Retry") ?? "";
    const error = response.ok || method === "HEAD" ? null : parseJson(await response.text());
    const type = response.headers.get("Content-Type") ?? "";
    return { status: response.status, retryMs: /^\d+$/.test(retry) ? Number(retry) : null, error, type };
  } catch {
    return null; // a network error, a refused CORS check or the timeout
  } finally {
    clearTimeout(timeout);
    abort.abort();
  }
}

function notAStream(answer) {
  // A 204 (SSE's "stop"), or a 2xx that is not an event stream (a wrong base URL answered by a page's own server):
  // trying again would only get the same.
  if (answer === null) return false;
  const ok = answer.status >= 200 && answer.status < 300;
  return answer.status === 204 || (ok && !answer.type.startsWith("text/event-stream"));
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
