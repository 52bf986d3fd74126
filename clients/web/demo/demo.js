// sse-gateway live demo dashboard: the `stocks` and `news` channels over one EventSource, through the page helper
// (sse-gateway.js), shown as a ticker table with sparklines, a news list and the stream's state. Every received
// string goes through textContent.
// The gateway serves this directory at /demo/ and the helper at /web/sse-gateway.js: relative, so that a gateway
// behind a path prefix serves the page too.
import { streamUrl, subscribe } from "../web/sse-gateway.js";

const CHANNELS = ["stocks", "news"];
const SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "TSLA"]; // rows shown before the first quote arrives
const MAX_ROWS = 12; // unknown symbols get a row too, up to this many, so a stray publisher cannot grow the table
const HISTORY = 60; // prices per sparkline
const MAX_NEWS = 15;
const RATE_SECONDS = 60; // seconds in the throughput chart
const SYMBOL_PATTERN = /^[A-Za-z0-9.-]{1,12}$/;
const $ = (id) => document.getElementById(id);

// Read by the automated browser tests; always the same object, updated in place on every event.
//   state        "connecting" | "live" | "retrying" | "closed", the helper's states
//   lastEventId  the newest id the EventSource holds (an opaque multi-channel cursor), "" before the first one
//   reconnects   the number of opens after the first one
//   gaps         `gap` events received
//   events       every event received: stocks, news and gap
//   prices       the newest price per symbol, e.g. {AAPL: 189.23}
//   news         headlines received (the list shows the newest MAX_NEWS of them)
const demoState = { state: "connecting", lastEventId: "", reconnects: 0, gaps: 0, events: 0, prices: {}, news: 0 };
window.demoState = demoState;

const tickers = new Map(); // symbol -> {symbol, row, cells, canvas, history, price, change, time, tick}
const dirtyTickers = new Set();
let statsDirty = true;
let renderQueued = false;
let opens = 0;
let noticeTimer = 0;
const rate = { second: Math.floor(Date.now() / 1000), current: 0, counts: [] }; // counts: finished seconds, oldest first
const colors = {};
const reduceMotion = window.matchMedia("(prefers-reduced-motion: reduce)");

const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });

// --- Configuration -------------------------------------------------------------------------------------------------

function gatewayBase(params) {
  const given = params.get("gateway");
  if (!given) {
    // Served by the gateway at /demo/, the API is at the page's own origin (a module script runs only from a
    // served page: a browser refuses it from file://).
    return location.origin;
  }
  const url = new URL(given); // throws on anything that is not an absolute URL
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error("not an http(s) URL");
  return `${url.origin}${url.pathname}`.replace(/\/+$/, "");
}

// --- Formatting ----------------------------------------------------------------------------------------------------

function formatTime(ms) {
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? "–" : clock.format(date);
}

function formatMillis(ms) {
  return `.${String(Math.floor(Math.abs(ms) % 1000)).padStart(3, "0")}`;
}

function signed(value, digits) {
  const text = Math.abs(value).toFixed(digits);
  if (Number(text) === 0) return text;
  return value > 0 ? `+${text}` : `-${text}`;
}

function parseJson(text) {
  try {
    const value = JSON.parse(text);
    return value !== null && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

// --- Ticker table --------------------------------------------------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function addTicker(symbol) {
  const row = element("tr");
  row.dataset.symbol = symbol;

  const symbolCell = element("td", "symbol");
  const badge = element("span", "badge", symbol.slice(0, 1));
  badge.style.setProperty("--hue", String(hue(symbol)));
  symbolCell.append(badge, element("span", "name", symbol));

  const priceCell = element("td", "num price", "–");

  const changeCell = element("td", "num change");
  changeCell.dataset.direction = "flat";
  const changeValue = element("span", "delta", "–");
  const changePct = element("span", "pct");
  changeCell.append(changeValue, changePct);

  const chartCell = element("td", "chart-col");
  const canvas = element("canvas", "spark");
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${symbol} price trend`);
  chartCell.append(canvas);

  const timeCell = element("td", "num time");
  const timeMain = element("span", "hms", "–");
  const timeMs = element("span", "ms");
  timeCell.append(timeMain, timeMs);

  row.append(symbolCell, priceCell, changeCell, chartCell, timeCell);
  $("ticker-rows").append(row);

  const ticker = {
    symbol, row, canvas, history: [], price: null, change: null, time: null, tick: 0,
    cells: { price: priceCell, change: changeCell, changeValue, changePct, timeMain, timeMs },
  };
  tickers.set(symbol, ticker);
  return ticker;
}

function hue(text) {
  // A stable colour per symbol, so that AAPL and AMZN do not look alike.
  let hash = 0;
  for (const char of text) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return (hash * 47) % 360;
}

function tickerFor(symbol) {
  const known = tickers.get(symbol);
  if (known) return known;
  return tickers.size < MAX_ROWS ? addTicker(symbol) : null;
}

function renderTicker(ticker) {
  const { cells } = ticker;
  cells.price.textContent = ticker.price.toFixed(2);

  const change = ticker.change;
  if (change === null) {
    cells.change.dataset.direction = "flat";
    cells.changeValue.textContent = "–";
    cells.changePct.textContent = "";
  } else {
    const direction = Number(change.toFixed(2)) > 0 ? "up" : Number(change.toFixed(2)) < 0 ? "down" : "flat";
    const arrow = direction === "up" ? "▲" : direction === "down" ? "▼" : "■";
    cells.change.dataset.direction = direction;
    cells.changeValue.textContent = `${arrow} ${signed(change, 2)}`;
    // `change` is against the day's open, so the open is price - change.
    const open = ticker.price - change;
    cells.changePct.textContent = open > 0 ? `${signed((change / open) * 100, 2)}%` : "";
  }

  cells.timeMain.textContent = formatTime(ticker.time);
  cells.timeMs.textContent = formatMillis(ticker.time);
  drawSparkline(ticker);
  flash(ticker);
}

function flash(ticker) {
  if (typeof ticker.row.animate !== "function" || reduceMotion.matches) return;
  const tint = ticker.tick > 0 ? colors.flashUp : ticker.tick < 0 ? colors.flashDown : colors.flashFlat;
  ticker.row.animate(
    [{ backgroundColor: tint }, { backgroundColor: "transparent" }],
    { duration: 450, easing: "ease-out" },
  );
}

function prepareCanvas(canvas) {
  // Size the backing store in device pixels and draw in CSS pixels, so lines stay crisp on high-DPI screens.
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (width === 0 || height === 0) return null;
  const ratio = window.devicePixelRatio || 1;
  const pixelWidth = Math.round(width * ratio);
  const pixelHeight = Math.round(height * ratio);
  if (canvas.width !== pixelWidth || canvas.height !== pixelHeight) {
    canvas.width = pixelWidth;
    canvas.height = pixelHeight;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx, width, height };
}

function drawSparkline(ticker) {
  const surface = prepareCanvas(ticker.canvas);
  if (surface === null) return;
  const { ctx, width, height } = surface;

  const points = ticker.history;
  if (points.length === 0) return;

  let min = Infinity;
  let max = -Infinity;
  for (const price of points) {
    if (price < min) min = price;
    if (price > max) max = price;
  }
  const padX = 7;
  const padY = 6;
  const span = max - min;
  const x = (i) => (points.length === 1 ? width - padX : padX + (i * (width - 2 * padX)) / (points.length - 1));
  const y = (price) => (span === 0 ? height / 2 : padY + ((max - price) / span) * (height - 2 * padY));
  const rising = points[points.length - 1] >= points[0];
  const line = rising ? colors.up : colors.down;

  // Faint guides at the window's high and low.
  ctx.strokeStyle = colors.grid;
  ctx.lineWidth = 1;
  ctx.setLineDash([2, 3]);
  ctx.beginPath();
  ctx.moveTo(0, Math.round(padY) + 0.5);
  ctx.lineTo(width, Math.round(padY) + 0.5);
  ctx.moveTo(0, Math.round(height - padY) - 0.5);
  ctx.lineTo(width, Math.round(height - padY) - 0.5);
  ctx.stroke();
  ctx.setLineDash([]);

  // The line, as a path reused for the area under it and for the stroke.
  const trace = () => {
    if (points.length === 1) {
      ctx.moveTo(padX, y(points[0]));
      ctx.lineTo(x(0), y(points[0]));
    } else {
      points.forEach((price, i) => (i === 0 ? ctx.moveTo(x(i), y(price)) : ctx.lineTo(x(i), y(price))));
    }
  };
  const left = points.length === 1 ? padX : x(0);
  const right = x(points.length - 1);

  ctx.beginPath();
  trace();
  ctx.lineTo(right, height);
  ctx.lineTo(left, height);
  ctx.closePath();
  const fill = ctx.createLinearGradient(0, 0, 0, height);
  fill.addColorStop(0, rising ? colors.upFill : colors.downFill);
  fill.addColorStop(1, "rgba(0, 0, 0, 0)");
  ctx.fillStyle = fill;
  ctx.fill();

  ctx.beginPath();
  trace();
  ctx.strokeStyle = line;
  ctx.lineWidth = 1.75;
  ctx.lineJoin = "round";
  ctx.lineCap = "round";
  ctx.stroke();

  // The newest price.
  const lastX = right;
  const lastY = y(points[points.length - 1]);
  ctx.fillStyle = rising ? colors.upFill : colors.downFill;
  ctx.beginPath();
  ctx.arc(lastX - 0.5, lastY, 5, 0, Math.PI * 2);
  ctx.fill();
  ctx.fillStyle = line;
  ctx.beginPath();
  ctx.arc(lastX - 0.5, lastY, 2.5, 0, Math.PI * 2);
  ctx.fill();
}

function redrawCharts() {
  for (const ticker of tickers.values()) drawSparkline(ticker);
  drawRate();
}

// --- Throughput ----------------------------------------------------------------------------------------------------

function countRate() {
  rollRate();
  rate.current += 1;
}

function rollRate() {
  // Close the second that just ended (and any silent ones after it) once the clock has moved on.
  const now = Math.floor(Date.now() / 1000);
  if (now <= rate.second) return;
  rate.counts.push(rate.current);
  for (let s = rate.second + 1; s < now && rate.counts.length <= RATE_SECONDS; s += 1) rate.counts.push(0);
  if (rate.counts.length > RATE_SECONDS) rate.counts.splice(0, rate.counts.length - RATE_SECONDS);
  rate.second = now;
  rate.current = 0;
}

function tickRate() {
  rollRate();
  const last = rate.counts.length ? rate.counts[rate.counts.length - 1] : 0;
  $("rate").textContent = String(last);
  drawRate();
}

function drawRate() {
  const surface = prepareCanvas($("rate-chart"));
  if (surface === null) return;
  const { ctx, width, height } = surface;
  const padX = 18;
  const top = 12;
  const bottom = height - 14;
  const slot = (width - 2 * padX) / RATE_SECONDS;
  const bar = Math.max(1, slot - 2);
  const peak = Math.max(1, ...rate.counts);

  ctx.strokeStyle = colors.grid;
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(padX, Math.round(bottom) + 0.5);
  ctx.lineTo(width - padX, Math.round(bottom) + 0.5);
  ctx.stroke();

  // Newest second on the right, like the sparklines.
  ctx.fillStyle = colors.accent;
  rate.counts.forEach((count, i) => {
    if (count === 0) return;
    const h = Math.max(2, ((bottom - top) * count) / peak);
    const x = width - padX - (rate.counts.length - i) * slot + (slot - bar) / 2;
    ctx.globalAlpha = i === rate.counts.length - 1 ? 1 : 0.55;
    ctx.fillRect(x, bottom - h, bar, h);
  });
  ctx.globalAlpha = 1;
}

function watchPixelRatio() {
  // Moving the window to a screen with another pixel ratio does not always resize anything: redraw on the change.
  const query = window.matchMedia(`(resolution: ${window.devicePixelRatio || 1}dppx)`);
  query.addEventListener("change", () => {
    redrawCharts();
    watchPixelRatio();
  }, { once: true });
}

// --- News ----------------------------------------------------------------------------------------------------------

function addHeadline(headline, time) {
  const list = $("news-list");
  const empty = list.querySelector(".empty");
  if (empty) empty.remove();

  const item = element("li", "headline");
  const stamp = element("time", "stamp", formatTime(time));
  const date = new Date(time);
  if (!Number.isNaN(date.getTime())) stamp.dateTime = date.toISOString();
  item.append(stamp, element("span", "text", headline));
  list.prepend(item);
  while (list.children.length > MAX_NEWS) list.lastElementChild.remove();
}

// --- Header --------------------------------------------------------------------------------------------------------

function setState(state) {
  demoState.state = state;
  $("state").dataset.state = state;
  $("state-text").textContent = state;
}

function showNotice(kind, text, seconds) {
  const notice = $("notice");
  clearTimeout(noticeTimer);
  notice.dataset.kind = kind;
  notice.textContent = text;
  notice.hidden = false;
  if (seconds) noticeTimer = setTimeout(() => { notice.hidden = true; }, seconds * 1000);
}

function hideNotice() {
  clearTimeout(noticeTimer);
  $("notice").hidden = true;
}

function renderStats() {
  const id = demoState.lastEventId;
  $("last-id").textContent = id || "–";
  $("last-id").title = id;
  $("events").textContent = demoState.events.toLocaleString();
  $("reconnects").textContent = String(demoState.reconnects);
  $("gaps").textContent = String(demoState.gaps);
}

// --- Rendering: state changes at once, the DOM and canvases once per frame ---------------------------------------

function render() {
  renderQueued = false;
  if (statsDirty) {
    statsDirty = false;
    renderStats();
  }
  for (const ticker of dirtyTickers) renderTicker(ticker);
  dirtyTickers.clear();
}

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(render);
}

// --- Events --------------------------------------------------------------------------------------------------------

function countEvent(id) {
  demoState.events += 1;
  countRate();
  // Events without an `id:` (a gap, or a plain PUBLISH from another program) keep the previous id.
  if (id) demoState.lastEventId = id;
  statsDirty = true;
  scheduleRender();
}

function onEvent(event) {
  if (event.channel === "stocks") onStocks(event);
  else if (event.channel === "news") onNews(event);
}

function onStocks(event) {
  countEvent(event.id);
  const quote = parseJson(event.data);
  if (!quote || typeof quote.symbol !== "string" || !SYMBOL_PATTERN.test(quote.symbol)) return;
  if (typeof quote.price !== "number" || !Number.isFinite(quote.price)) return;
  const ticker = tickerFor(quote.symbol);
  if (!ticker) return;

  ticker.tick = ticker.price === null ? 0 : Math.sign(quote.price - ticker.price);
  ticker.price = quote.price;
  ticker.change = typeof quote.change === "number" && Number.isFinite(quote.change) ? quote.change : null;
  ticker.time = typeof quote.time === "number" && Number.isFinite(quote.time) ? quote.time : Date.now();
  ticker.history.push(quote.price);
  if (ticker.history.length > HISTORY) ticker.history.splice(0, ticker.history.length - HISTORY);
  demoState.prices[quote.symbol] = quote.price;
  dirtyTickers.add(ticker);
}

function onNews(event) {
  countEvent(event.id);
  const item = parseJson(event.data);
  if (!item || typeof item.headline !== "string" || item.headline.trim() === "") return;
  demoState.news += 1;
  const time = typeof item.time === "number" && Number.isFinite(item.time) ? item.time : Date.now();
  addHeadline(item.headline.trim(), time);
}

function onGap(channel) {
  countEvent("");
  demoState.gaps += 1;
  channel = channel ?? "a channel";
  showNotice("warn", `Missed part of the history on “${channel}”: the gateway's buffer was already trimmed past ` +
    "the position this page resumed from, so the charts may jump.", 10);
}

function onState(state, detail) {
  setState(state);
  if (state === "live") {
    opens += 1;
    demoState.reconnects = Math.max(0, opens - 1);
    hideNotice();
    statsDirty = true;
    scheduleRender();
  } else if (state === "retrying") {
    // The helper (or the browser) reconnects after the gateway's retry time and resumes every channel exactly.
    const seconds = Math.max(detail.retryMs ?? 0, 100) / 1000;
    showNotice("warn", `The connection dropped: reconnecting in about ${seconds.toFixed(1)} s, resuming where it ` +
      "left off.");
  } else if (state === "closed" && detail.reason === "refused") {
    const error = detail.error && typeof detail.error.error === "string" ? ` ${detail.error.error}` : "";
    showNotice("error", `The gateway refused the stream (${detail.status}${error}, for example without a valid ` +
      "token), so the page stopped retrying. Reload the page to try again.");
  }
}

function readColors() {
  const style = getComputedStyle(document.documentElement);
  const read = (name, fallback) => style.getPropertyValue(name).trim() || fallback;
  colors.up = read("--up", "#22c55e");
  colors.down = read("--down", "#f43f5e");
  colors.upFill = read("--up-fill", "rgba(34, 197, 94, 0.28)");
  colors.downFill = read("--down-fill", "rgba(244, 63, 94, 0.28)");
  colors.accent = read("--accent", "#5ab4ff");
  colors.grid = read("--chart-grid", "rgba(148, 163, 184, 0.18)");
  colors.flashUp = read("--flash-up", "rgba(34, 197, 94, 0.22)");
  colors.flashDown = read("--flash-down", "rgba(244, 63, 94, 0.22)");
  colors.flashFlat = read("--flash-flat", "rgba(148, 163, 184, 0.16)");
}

function start() {
  readColors();
  for (const symbol of SYMBOLS) addTicker(symbol);
  if (typeof ResizeObserver === "function") {
    const observer = new ResizeObserver(redrawCharts);
    observer.observe($("ticker-rows"));
    observer.observe($("rate-chart"));
  } else {
    window.addEventListener("resize", redrawCharts);
  }
  watchPixelRatio();
  setInterval(tickRate, 1000);

  const params = new URLSearchParams(location.search);
  let base;
  try {
    base = gatewayBase(params);
  } catch {
    setState("closed");
    showNotice("error", "The ?gateway= parameter must be an absolute http(s) URL, e.g. ?gateway=http://127.0.0.1:8000");
    renderStats();
    return;
  }
  $("gateway").textContent = new URL(base).host;
  $("gateway").title = base;
  // The link opens the raw stream without the token, so that it never shows up in a copied link.
  const raw = streamUrl(base, CHANNELS);
  $("raw-link").href = raw;
  if (base !== location.origin) $("raw-link").textContent = raw;

  setState("connecting");
  renderStats();
  // EventSource cannot send an Authorization header, so a token can only ride in the URL. Beware: URLs are written
  // to the access logs of proxies, load balancers and the gateway itself, and stay in the browser's history, so use
  // short-lived tokens scoped to subscribing only.
  subscribe({ channels: CHANNELS, url: base, token: params.get("access_token") }, { onEvent, onGap, onState });
}

start();
