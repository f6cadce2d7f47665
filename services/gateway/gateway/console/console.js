// The write-back console: polls the gateway's HTTP API with the token the user gives and
// draws what it answers. Everything is built with textContent, never HTML, because row
// values and error messages are user data.
"use strict";

const POLL_INTERVAL_MS = 1000;
const CHART_WINDOW_S = 300;
const RATE_SPAN_S = 1;
const TOKEN_KEY = "chinook-console-token";
// What each call needs, to say so when the gateway refuses it (docs/api.md, "Access").
const ROLE = {status: "reader", deadLetters: "reader", rows: "reader", bulkRandom: "admin", flush: "admin",
              retry: "admin", discard: "admin"};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message, role) {
    const refused = status === 401 || status === 403;
    super(`${status}: ${message}` + (refused ? ` (this needs a token of role ${role} or above)` : ""));
    this.status = status;
  }
}

// Relative to the page, so that the console works behind a path prefix too.
async function call(method, path, role) {
  const headers = {Accept: "application/json"};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) {
    headers.Authorization = `Bearer ${token}`;
  }
  let response;
  try {
    // fetch's default credentials ("same-origin") send the wb_token cookie: the page reads
    // its own writes through any gateway process.
    response = await fetch(path, {method, headers, cache: "no-store"});
  } catch (error) {
    throw new Error(`${method} ${path}: the gateway did not answer (${error.message})`);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON (a proxy's page): the status line says enough.
  }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `${response.statusText || "error"} ${text.slice(0, 200)}`;
    throw new ApiError(response.status, message, role);
  }
  return body;
}

function clock(date) {
  return date.toLocaleTimeString([], {hour12: false});
}

function formatNumber(value) {
  return Number(value).toLocaleString("en-US");
}

function formatAge(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function formatSince(unixSeconds) {
  if (unixSeconds === null || unixSeconds === undefined) return "unknown";
  const age = Math.max(0, Date.now() / 1000 - unixSeconds);
  return `${new Date(unixSeconds * 1000).toISOString()} (${formatAge(age)} ago)`;
}

function show(element, message, kind) {
  element.textContent = message;
  element.className = kind || "";
}

// Token

function showTokenState() {
  $("token-state").textContent = sessionStorage.getItem(TOKEN_KEY) ? "token set for this tab" : "no token";
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  } else {
    sessionStorage.removeItem(TOKEN_KEY);
  }
  $("token").value = "";
  showTokenState();
  poll();
});

$("clear-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  $("token").value = "";
  showTokenState();
  poll();
});

// Figures and rates

const samples = [];  // {t: seconds, accepted, flushed} of each successful poll
const rates = [];    // {t, accepted, flushed}: rows/s between two polls

function addSample(status) {
  const sample = {t: performance.now() / 1000, accepted: status.accepted_total, flushed: status.flushed_total};
  // The rate over at least RATE_SPAN_S: a poll right after an action comes early, and a
  // bulk update over a fraction of a second would read as a huge rate.
  const previous = samples.findLast((earlier) => earlier.t <= sample.t - RATE_SPAN_S) || samples[0];
  samples.push(sample);
  if (previous) {
    const elapsed = sample.t - previous.t;
    const accepted = sample.accepted - previous.accepted;
    const flushed = sample.flushed - previous.flushed;
    // Totals that went down were reset (the cache's Redis emptied): no rate for that step.
    if (elapsed > 0 && accepted >= 0 && flushed >= 0) {
      rates.push({t: sample.t, accepted: accepted / elapsed, flushed: flushed / elapsed});
    }
  }
  const oldest = sample.t - CHART_WINDOW_S;
  while (samples.length > 2 && samples[1].t < oldest) samples.shift();
  while (rates.length && rates[0].t < oldest) rates.shift();
}

function showStatus(status) {
  $("pending").textContent = formatNumber(status.pending);
  $("oldest-age").textContent = status.pending ? formatAge(status.oldest_pending_age_s) : "none pending";
  $("accepted-total").textContent = formatNumber(status.accepted_total);
  $("flushed-total").textContent = formatNumber(status.flushed_total);
  $("failed").textContent = formatNumber(status.failed);
  const last = rates[rates.length - 1];
  $("accepted-rate").textContent = last ? formatNumber(Math.round(last.accepted)) : "–";
  $("flushed-rate").textContent = last ? formatNumber(Math.round(last.flushed)) : "–";
}

function drawChart() {
  const canvas = $("chart");
  const scale = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * scale)) {
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
  }
  const context = canvas.getContext("2d");
  context.setTransform(scale, 0, 0, scale, 0, 0);
  context.clearRect(0, 0, width, height);
  const styles = getComputedStyle(document.body);
  const margin = {left: 8, right: 8, top: 10, bottom: 18};
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const now = performance.now() / 1000;
  const top = Math.max(1, ...rates.map((r) => Math.max(r.accepted, r.flushed))) * 1.1;
  const x = (t) => margin.left + plotWidth * (1 - (now - t) / CHART_WINDOW_S);
  const y = (rate) => margin.top + plotHeight * (1 - rate / top);

  context.strokeStyle = styles.getPropertyValue("--grid");
  context.fillStyle = styles.getPropertyValue("--muted");
  context.lineWidth = 1;
  context.font = "11px sans-serif";
  for (let minute = 0; minute <= CHART_WINDOW_S / 60; minute++) {
    const gridX = x(now - minute * 60);
    context.beginPath();
    context.moveTo(gridX, margin.top);
    context.lineTo(gridX, margin.top + plotHeight);
    context.stroke();
    context.textAlign = minute === 0 ? "right" : minute === CHART_WINDOW_S / 60 ? "left" : "center";
    context.fillText(minute === 0 ? "now" : `-${minute} min`, gridX, height - 4);
  }
  context.beginPath();
  context.moveTo(margin.left, y(0));
  context.lineTo(margin.left + plotWidth, y(0));
  context.stroke();

  for (const series of ["accepted", "flushed"]) {
    context.strokeStyle = styles.getPropertyValue(`--${series}`);
    context.lineWidth = 2;
    context.beginPath();
    rates.forEach((rate, index) => {
      const method = index === 0 ? "moveTo" : "lineTo";
      context[method](x(rate.t), y(rate[series]));
    });
    context.stroke();
  }
  $("chart-max").textContent = `scale: 0 to ${formatNumber(Math.round(top))} rows/s`;
}

// Dead letters

function deadLetterRow(entry) {
  const row = document.createElement("tr");
  row.dataset.key = entry.key;
  const cells = [entry.key, String(entry.version), formatSince(entry.failed_at), entry.error,
                 entry.value === null ? "" : JSON.stringify(entry.value)];
  for (const text of cells) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.append(cell);
  }
  const buttons = document.createElement("td");
  buttons.className = "buttons";
  const key = encodeURIComponent(entry.key);
  const retry = document.createElement("button");
  retry.type = "button";
  retry.className = "retry";
  retry.textContent = "Retry";
  retry.title = "schedule this write again (admin)";
  retry.addEventListener("click", () => deadLetterAction(
    "POST", `write-back/dead-letters/${key}/retry`, ROLE.retry, `${entry.key}: scheduled again`));
  const discard = document.createElement("button");
  discard.type = "button";
  discard.className = "discard";
  discard.textContent = "Discard";
  discard.title = "drop this write: reads see Postgres again (admin)";
  discard.addEventListener("click", () => {
    if (confirm(`Discard the write to ${entry.key}? It exists nowhere else.`)) {
      deadLetterAction("DELETE", `write-back/dead-letters/${key}`, ROLE.discard, `${entry.key}: discarded`);
    }
  });
  buttons.append(retry, discard);
  row.append(buttons);
  return row;
}

function showDeadLetters(body) {
  $("dead-letter-count").textContent = body.total === body.dead_letters.length
    ? `${body.total} dead letter${body.total === 1 ? "" : "s"}`
    : `${body.total} dead letters, the first ${body.dead_letters.length} shown`;
  $("dead-letters").replaceChildren(...body.dead_letters.map(deadLetterRow));
}

async function deadLetterAction(method, path, role, done) {
  try {
    await call(method, path, role);
    show($("dead-letter-message"), `${clock(new Date())} ${done}`, "ok");
  } catch (error) {
    show($("dead-letter-message"), `${clock(new Date())} ${error.message}`, "error");
  }
  poll();
}

// Actions

async function action(button, method, path, role, describe) {
  button.disabled = true;
  show($("action-message"), `${method} ${path}…`, "");
  try {
    const body = await call(method, path, role);
    show($("action-message"), `${clock(new Date())} ${describe(body)}`, "ok");
  } catch (error) {
    show($("action-message"), `${clock(new Date())} ${error.message}`, "error");
  } finally {
    button.disabled = false;
  }
  poll();
}

$("bulk-random").addEventListener("click", (event) => action(
  event.currentTarget, "POST", "albums/bulk-random", ROLE.bulkRandom,
  (body) => `${formatNumber(body.accepted)} albums got a random title`));

$("flush").addEventListener("click", (event) => action(
  event.currentTarget, "POST", "write-back/flush", ROLE.flush,
  (body) => `flush scheduled; ${formatNumber(body.pending)} rows were pending`));

// Row lookup

function showSide(prefix, side, fields) {
  for (const [id, text] of Object.entries(fields)) {
    $(`${prefix}-${id}`).textContent = text;
  }
  $(`${prefix}-value`).textContent = side.present ? JSON.stringify(side.value, null, 2) : "(not held)";
}

$("lookup-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const entity = $("lookup-entity").value;
  const id = $("lookup-id").value.trim();
  show($("lookup-error"), "", "error");
  try {
    const row = await call(
      "GET", `write-back/rows/${encodeURIComponent(entity)}/${encodeURIComponent(id)}`, ROLE.rows);
    showSide("cache", row.cache, {
      // A partial row holds only the fields written; reads fill it from Postgres.
      state: row.cache.state.replace("_", " ") + (row.cache.partial ? ", partial row" : ""),
      since: row.cache.state === "absent" ? "" : formatSince(row.cache.since),
      version: row.cache.version === null ? "" : String(row.cache.version),
    });
    showSide("pg", row.postgres, {
      present: row.postgres.present ? "yes" : "no",
      version: row.postgres.present ? String(row.postgres.wb_version) : "",
    });
    $("cache-state").className = `state ${row.cache.state}`;
    show($("agree"), row.agree ? "agree" : "differ", row.agree ? "ok" : "warn");
    $("lookup-time").textContent = `as of ${clock(new Date())}`;
    $("lookup-result").hidden = false;
  } catch (error) {
    $("lookup-result").hidden = true;
    show($("lookup-error"), `${entity} ${id}: ${error.message}`, "error");
  }
});

// Polling: the next round a second after the last one ended. A round started at once
// (after an action) supersedes one in progress, whose answers are then dropped.

let timer = null;
let round = 0;

async function poll() {
  clearTimeout(timer);
  const thisRound = ++round;
  const [status, deadLetters] = await Promise.allSettled([
    call("GET", "write-back/status", ROLE.status),
    call("GET", "write-back/dead-letters", ROLE.deadLetters),
  ]);
  if (thisRound !== round) return;
  const failures = [];
  if (status.status === "fulfilled") {
    addSample(status.value);
    showStatus(status.value);
    $("updated").textContent = `updated ${clock(new Date())}`;
  } else {
    failures.push(`status: ${status.reason.message}`);
  }
  if (deadLetters.status === "fulfilled") {
    showDeadLetters(deadLetters.value);
  } else {
    failures.push(`dead letters: ${deadLetters.reason.message}`);
  }
  show($("poll-error"), failures.length ? `polling failed at ${clock(new Date())}: ${failures.join("; ")}` : "",
       "error");
  document.body.classList.toggle("stale", status.status !== "fulfilled");
  drawChart();
  timer = setTimeout(poll, POLL_INTERVAL_MS);
}

showTokenState();
poll();
