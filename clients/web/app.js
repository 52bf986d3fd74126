// sse-gateway demo page: one EventSource, its state, and a log. Every received string goes through textContent.
"use strict";

const MAX_LOG_ENTRIES = 500;
const $ = (id) => document.getElementById(id);

let source = null;
let stats = null;

function defaultBase() {
  // Opened from file:// the origin is "null": fall back to the gateway's default address.
  return location.protocol.startsWith("http") ? location.origin : "http://127.0.0.1:8000";
}

function splitList(text) {
  return [...new Set(text.split(",").map((s) => s.trim()).filter(Boolean))];
}

function streamUrl(base, channels, resumeId) {
  const root = base.replace(/\/+$/, "");
  let url;
  if (channels.length === 1) {
    url = new URL(`${root}/events/${encodeURIComponent(channels[0])}`);
  } else {
    url = new URL(`${root}/events`);
    channels.forEach((name) => url.searchParams.append("channel", name));
  }
  // EventSource cannot send headers; the gateway reads a first resume point from the query, and on reconnect the
  // browser's own Last-Event-ID header takes precedence over it.
  if (resumeId) url.searchParams.set("lastEventId", resumeId);
  return url.toString();
}

function eventNames(channels, types) {
  // Single-channel streams send `message` (or the publisher's type); multi-channel ones name each event
  // `<channel>` or `<channel>:<type>`. EventSource only delivers named events to listeners for that exact name.
  const names = new Set(["message", "gap"]);
  for (const type of types) names.add(type);
  if (channels.length > 1) {
    for (const channel of channels) {
      names.add(channel);
      for (const type of types) names.add(`${channel}:${type}`);
    }
  }
  return names;
}

function setState(state) {
  $("state").dataset.state = state;
  $("state").textContent = state;
}

function render() {
  $("last-id").textContent = stats.lastId || "–";
  $("count").textContent = String(stats.events);
  $("reconnects").textContent = String(stats.reconnects);
  $("gaps").textContent = String(stats.gaps);
}

function addLog(className, meta, text) {
  const item = document.createElement("li");
  item.className = className;
  const head = document.createElement("span");
  head.className = "meta";
  head.textContent = `${new Date().toLocaleTimeString()} ${meta}`;
  item.append(head, document.createTextNode(text === undefined ? "" : `\n${text}`));
  const log = $("log");
  log.prepend(item);
  while (log.children.length > MAX_LOG_ENTRIES) log.lastElementChild.remove();
}

function describeGap(data) {
  try {
    const gap = JSON.parse(data);
    return `history trimmed on ${gap.channel}: asked to resume after ${gap.requested}, ` +
      `oldest kept is ${gap.first_available}`;
  } catch {
    return data;
  }
}

function onEvent(event) {
  stats.events += 1;
  stats.lastId = event.lastEventId;
  if (event.type === "gap") {
    stats.gaps += 1;
    addLog("gap", `[gap] id=${event.lastEventId || "–"}`, describeGap(event.data));
  } else {
    addLog("event", `[${event.type}] id=${event.lastEventId || "–"}`, event.data);
  }
  render();
}

function connect() {
  disconnect();
  const channels = splitList($("channels").value);
  if (channels.length === 0) return;
  const resumeId = $("resume").value.trim();
  const url = streamUrl($("base").value, channels, resumeId);
  stats = { events: 0, reconnects: 0, gaps: 0, lastId: resumeId };
  $("url").textContent = url;
  setState("connecting");
  render();

  source = new EventSource(url);
  for (const name of eventNames(channels, splitList($("types").value))) source.addEventListener(name, onEvent);
  source.addEventListener("open", () => {
    setState("open");
    addLog("note", "connected");
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CONNECTING) {
      // The browser will retry after the server's `retry:` delay, sending Last-Event-ID.
      stats.reconnects += 1;
      setState("connecting");
      addLog("note", "connection lost; the browser is reconnecting");
    } else {
      // A non-200 status, a wrong content type or a 204: the browser gives up for good.
      setState("failed");
      addLog("note", "the stream was closed by the server (HTTP error or 204); not reconnecting");
      stopped();
    }
    render();
  });
  $("open").disabled = true;
  $("close").disabled = false;
}

function stopped() {
  $("open").disabled = false;
  $("close").disabled = true;
}

function disconnect() {
  if (source === null) return;
  source.close();
  source = null;
  setState("closed");
  stopped();
}

$("base").value = defaultBase();
$("connect").addEventListener("submit", (event) => {
  event.preventDefault();
  connect();
});
$("close").addEventListener("click", disconnect);
$("clear").addEventListener("click", () => $("log").replaceChildren());
