// sse-gateway test page: one stream through the page helper (sse-gateway.js), its state, and a log. Every received
// string goes through textContent.
import { streamUrl, subscribe } from "./sse-gateway.js";

const MAX_LOG_ENTRIES = 500;
const $ = (id) => document.getElementById(id);

let feed = null;
let stats = null;

function defaultBase() {
  // A module script runs only from a served page (a browser refuses it from file://): the gateway that served it.
  return location.origin;
}

function splitList(text) {
  return [...new Set(text.split(",").map((s) => s.trim()).filter(Boolean))];
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

function onEvent({ channel, type, data, id }) {
  stats.events += 1;
  stats.lastId = feed.lastEventId;
  addLog("event", `[${channel}${type === "message" ? "" : ` ${type}`}] id=${id || "–"}`, data);
  render();
}

function onGap(channel, info) {
  stats.events += 1;
  stats.gaps += 1;
  const text = info && typeof info === "object"
    ? `history trimmed on ${channel}: asked to resume after ${info.requested}, oldest kept is ${info.first_available}`
    : `history trimmed on ${channel}`;
  addLog("gap", "[gap]", text);
  render();
}

function onState(state, detail) {
  $("state").dataset.state = state;
  $("state").textContent = state;
  if (state === "live") {
    addLog("note", "connected");
  } else if (state === "retrying") {
    stats.reconnects += 1;
    addLog("note", `connection lost; reconnecting in ${detail.retryMs} ms, resuming after the last id`);
  } else if (state === "closed") {
    if (detail.reason === "refused") {
      const error = detail.error && typeof detail.error.error === "string" ? ` ${detail.error.error}` : "";
      addLog("note", `the gateway refused the stream (${detail.status}${error}); not reconnecting`);
    } else if (detail.reason === "close") {
      addLog("note", "disconnected");
    }
    stopped();
  }
  render();
}

function connect() {
  disconnect();
  const channels = splitList($("channels").value);
  if (channels.length === 0) return;
  const base = $("base").value;
  const lastEventId = $("resume").value.trim();
  stats = { events: 0, reconnects: 0, gaps: 0, lastId: lastEventId };
  $("url").textContent = streamUrl(base, channels, { lastEventId });
  render();
  const types = splitList($("types").value);
  feed = subscribe({ channels, url: base, types, lastEventId }, { onEvent, onGap, onState });
  $("open").disabled = true;
  $("close").disabled = false;
}

function stopped() {
  $("open").disabled = false;
  $("close").disabled = true;
}

function disconnect() {
  if (feed === null) return;
  feed.close();
  feed = null;
}

$("base").value = defaultBase();
$("connect").addEventListener("submit", (event) => {
  event.preventDefault();
  connect();
});
$("close").addEventListener("click", disconnect);
$("clear").addEventListener("click", () => $("log").replaceChildren());
