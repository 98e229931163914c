"use strict";
// cutover dashboard: one file, no build step, no dependencies. It only reads the admin API, and
// sends the five operator commands with the admin token kept in this tab's sessionStorage.
//
// Rules this file keeps because of the page's Content-Security-Policy and because names, versions
// and messages come from users: the DOM is built with createElement and textContent only (never
// markup parsed from strings), no inline style or handler attributes are ever set (sizes go through el.style, the
// CSSOM, which the CSP allows), and nothing is evaluated.

(function () {
  // ------------------------------------------------------------------------------ constants

  const TOKEN_KEY = "cutover.token";
  const SERIES_SPAN_MS = 10 * 60 * 1000;
  const BACKSTOP_MS = 10000;
  const READ_TIMEOUT_MS = 10000;    // every read gives up after this, and says so
  const COMMAND_TIMEOUT_MS = 30000; // commands may take longer (a rollback drains)
  const WATCHDOG_MS = 12000;        // the stream sends something at least every 5 s (heartbeat)
  const EVENTS_PAGE = 1000;
  const MAX_DECISIONS_SHOWN = 50;
  const SLOTS = ["blue", "green"];
  const TERMINAL = new Set(["succeeded", "rolled_back", "aborted", "failed"]);

  // Phase → [symbol, tone]. The symbol and the name carry the meaning; the tone only adds colour.
  const PHASES = {
    idle: ["–", "neutral"], migrating: ["…", "busy"], provisioning: ["…", "busy"], verifying: ["…", "busy"],
    gating: ["…", "busy"], canary: ["▸", "busy"], awaiting_confirmation: ["‖", "warn"], paused: ["‖", "warn"],
    promoted: ["✓", "good"], succeeded: ["✓", "good"], rolled_back: ["↶", "bad"], aborted: ["■", "bad"], failed: ["✗", "bad"],
  };
  const OUTCOMES = {
    pass: ["✓", "pass", "good"], fail: ["✗", "fail", "bad"], inconclusive: ["?", "inconclusive", "warn"],
    // Passing windows that are not a pass yet (see verdictKind).
    holding: ["…", "holding", "warn"], thin: ["?", "not enough traffic yet", "warn"],
  };
  const RAMP_PHASES = { running: ["▸", "busy"], paused: ["‖", "warn"], completed: ["✓", "good"], killed: ["✗", "bad"], aborted: ["■", "bad"] };
  const EVENT_SYMBOLS = {
    deploy: "●", window_closed: "–", migrated: "✓", migration_retry: "…", migration_cancelled: "■",
    not_ready_yet: "…", ready: "✓", verified: "✓", gating: "…", gates_passed: "✓", step: "▸",
    step_extended: "…", paused: "‖", resumed: "▸", awaiting_confirmation: "‖",
    confirmation_timed_out: "‖", promoted: "✓", succeeded: "✓", rolled_back: "↶", aborted: "■",
    failed: "✗", recovered: "↻", restarted: "↻", restart_failed: "✗",
  };
  const CHECK_NAMES = {
    error_rate_ceiling: "5xx rate ceiling", error_rate_vs_baseline: "5xx rate vs baseline",
    client_error_rate_vs_baseline: "4xx rate vs baseline", p99_ceiling: "p99 ceiling", p99_vs_baseline: "p99 vs baseline",
  };
  const VERBS = { promote: "promote", pause: "pause", resume: "resume", abort: "abort", rollback: "roll back" };
  const DANGEROUS = new Set(["abort", "rollback"]);
  const CONNECTION = { live: "live", reconnecting: "reconnecting…", hidden: "paused while hidden" };

  // ------------------------------------------------------------------------------ state

  const state = {
    route: null,
    routeGen: 0,        // bumped on navigation, so answers meant for an older view are dropped
    status: null,       // GET /v1/status
    statusError: null,
    skew: 0,            // server clock minus ours, so "5 s ago" is measured on the server's clock
    app: null,          // the open app's data (app and history views), see newAppData()
    lastApp: null,      // for the History link when no app is open
    history: null,      // {app, list, error, code}
    flags: null,        // {flags, ramps, ...}
    startedAt: null,    // the server's start, from `hello`: a change means it restarted
    announced: new Map(), // app → what was last announced about it
    openDetails: new Set(), // keys of <details> the user opened, kept open across redraws
    routes: new Map(),  // app → its route table (GET /v1/apps), for apps routed by a fixed table
    commandBusy: false, // a command is on its way: the buttons are disabled
    focusControls: false, // after a command: bring focus back to the controls once they change
    confirming: null,   // the open confirmation: {app, snapshot, cancel}
  };
  let view = null;      // the element references of the current view
  let memoryToken = null; // only when sessionStorage is unavailable; still dies with the tab

  function newAppData(name) {
    return {
      name, status: null, statusCode: 0, statusError: null, events: null, eventsError: null, metrics: null,
      // seriesState: loading | ok | none (no per-slot metrics for this router) | error
      series: null, seriesState: "loading", seriesError: null, interval: 1000, pendingSamples: [],
    };
  }

  // ------------------------------------------------------------------------------ DOM helpers

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const SVG_NS = "http://www.w3.org/2000/svg";
  let uidCounter = 0;
  const uid = (p) => `${p}-${++uidCounter}`;

  function setProps(el, props) {
    if (!props) return;
    for (const [k, v] of Object.entries(props)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") el.textContent = String(v);
      else if (k === "testid") el.setAttribute("data-testid", v);
      else if (k === "on") for (const [type, fn] of Object.entries(v)) el.addEventListener(type, fn);
      // The CSP would block both anyway; failing loudly keeps them out of the code.
      else if (k === "style" || k.startsWith("on")) throw new Error(`attribute ${k} is not allowed`);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }

  function addChildren(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    setProps(el, props);
    return addChildren(el, children);
  }

  function s(tag, props, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setProps(el, props);
    return addChildren(el, children);
  }

  // Replaces a container's content only when its key changed: a redraw with the same data keeps
  // focus, selection and scroll where the user left them.
  function region(el, key, build) {
    if (el.__key === key) return false;
    el.__key = key;
    el.replaceChildren();
    addChildren(el, [build()]);
    return true;
  }

  // Table rows patched one by one (same reason as region): only changed rows are replaced.
  function patchRows(tbody, items, idOf, build) {
    const old = new Map();
    for (const tr of tbody.children) old.set(tr.__id, tr);
    const rows = items.map((it) => {
      const id = idOf(it);
      const sig = JSON.stringify(it);
      const tr = old.get(id);
      if (tr && tr.__sig === sig) return tr;
      const row = build(it);
      row.__id = id;
      row.__sig = sig;
      return row;
    });
    const current = Array.from(tbody.children);
    const sameOrder = current.length === rows.length && current.every((tr, i) => tr.__id === rows[i].__id);
    if (sameOrder) rows.forEach((row, i) => { if (current[i] !== row) current[i].replaceWith(row); });
    else tbody.replaceChildren(...rows);
  }

  // A captioned table in its own scroll box. Headers are {label, num}: num right-aligns.
  function table(caption, headers, rows) {
    return scrollBox(h("table", null,
      h("caption", { text: caption }),
      h("thead", null, h("tr", null, headers.map((c) => h("th", { scope: "col", class: c.num ? "num" : null, text: c.label })))),
      h("tbody", null, rows)), caption);
  }

  // Wide tables scroll inside their own box, never the page; the box is focusable so that
  // keyboard users can scroll it too.
  function scrollBox(content, label) {
    return h("div", { class: "table-wrap", tabindex: "0", role: "group", "aria-label": label }, content);
  }

  function badge(symbol, label, tone, testid) {
    return h("span", { class: `badge ${tone}` },
      h("span", { "aria-hidden": "true", text: symbol }),
      h("span", { testid, text: label }));
  }

  function phaseBadge(name, testid) {
    const [symbol, tone] = PHASES[name] || ["•", "neutral"];
    return badge(symbol, name, tone, testid);
  }

  // What a decision's badge says. A window the judge passed is not shown as a pass while the
  // step is held (evidence of a regression is building) or when there was too little traffic
  // to judge anything.
  function verdictKind(verdict) {
    const v = verdict || {};
    if (v.outcome === "pass" && v.hold) return "holding";
    if (v.outcome !== "fail" && !v.conclusive && /not enough traffic/i.test(v.summary || "")) return "thin";
    return v.outcome;
  }

  function outcomeBadge(outcome) {
    const [symbol, label, tone] = OUTCOMES[outcome] || ["•", String(outcome || "unknown"), "neutral"];
    return badge(symbol, label, tone);
  }

  function empty(text) {
    return h("p", { class: "empty-state", text });
  }

  // <details> that stay open across redraws when the user opened them.
  function details(key, summary, ...content) {
    const d = h("details", { "data-key": key, open: state.openDetails.has(key) }, h("summary", null, summary), content);
    d.addEventListener("toggle", () => {
      if (d.open) state.openDetails.add(key);
      else state.openDetails.delete(key);
    });
    return d;
  }

  // ------------------------------------------------------------------------------ formatting

  const trimNum = (x, digits) => String(Number(Number(x).toFixed(digits)));
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);

  // Basis points as the tests and operators read them: 500 → "5 %", 1250 → "12.5 %".
  const pct = (bp) => `${trimNum((Number(bp) || 0) / 100, 2)} %`;
  // A share 0..1 as a percentage; a tiny one is not shown as a reassuring "0 %".
  const fraction = (f) => (!isNum(f) ? "—" : f > 0 && f < 0.0001 ? "< 0.01 %" : `${trimNum(f * 100, 2)} %`);
  const millis = (v) => (!isNum(v) ? "—" : v >= 10000 ? `${trimNum(v / 1000, 1)} s` : `${trimNum(v, v < 100 ? 1 : 0)} ms`);
  const count = (n) => (isNum(n) ? n.toLocaleString("en-US") : "—");
  // Messages may quote an instance's log: line breaks and tabs stay (the CSS shows them), the
  // other control characters go.
  const cleanText = (text) => String(text === null || text === undefined ? "" : text).replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, "");

  function duration(ms) {
    if (!isNum(ms)) return "—";
    const sec = Math.round(ms / 1000);
    if (sec < 60) return `${sec} s`;
    const d = Math.floor(sec / 86400), hr = Math.floor((sec % 86400) / 3600);
    const min = Math.floor((sec % 3600) / 60), rest = sec % 60;
    if (d) return hr ? `${d} d ${hr} h` : `${d} d`;
    if (hr) return min ? `${hr} h ${min} min` : `${hr} h`;
    return rest ? `${min} min ${rest} s` : `${min} min`;
  }

  const serverNow = () => Date.now() + state.skew;

  function ago(at) {
    const d = Math.max(0, serverNow() - at);
    if (d < 5000) return "just now";
    if (d < 60000) return `${Math.floor(d / 1000)} s ago`;
    if (d < 3600000) return `${Math.floor(d / 60000)} min ago`;
    if (d < 86400000) return `${Math.floor(d / 3600000)} h ago`;
    return `${Math.floor(d / 86400000)} d ago`;
  }

  // "+1:05" after the deploy; hours only when needed.
  function relTime(ms) {
    const t = Math.round(Math.abs(ms) / 1000);
    const hr = Math.floor(t / 3600), min = Math.floor((t % 3600) / 60), sec = t % 60;
    const two = (n) => String(n).padStart(2, "0");
    return `${ms < 0 ? "−" : "+"}${hr ? `${hr}:${two(min)}` : min}:${two(sec)}`;
  }

  const localTime = (at) => new Date(at).toLocaleString();
  const clock = (at) => new Date(at).toLocaleTimeString();

  function timeEl(at, text) {
    if (!isNum(at)) return h("span", { text: "—" });
    return h("time", { datetime: new Date(at).toISOString(), title: localTime(at), text });
  }

  // Times like "12 s ago" are refreshed in place by a timer instead of redrawing their rows.
  function agoEl(at) {
    const t = timeEl(at, isNum(at) ? ago(at) : "—");
    if (isNum(at)) t.dataset.ago = String(at);
    return t;
  }

  function refreshAgo() {
    for (const t of document.querySelectorAll("time[data-ago]")) t.textContent = ago(Number(t.dataset.ago));
  }

  // ------------------------------------------------------------------------------ API

  // Every answer as {ok, status, body, error}; never throws. `token` only for the requests that
  // need it: it is sent as a header, never in the URL. Nothing waits forever: a request that gets
  // no whole answer in time is aborted and reads as a failure (status 0) that says so.
  async function api(path, { method = "GET", token = null } = {}) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const limit = method === "GET" ? READ_TIMEOUT_MS : COMMAND_TIMEOUT_MS;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), limit);
    const failed = (error) => ({ ok: false, status: 0, body: null, error });
    const timedOut = () => failed(`the server did not answer within ${limit / 1000} s`);
    try {
      let res;
      try {
        res = await fetch(path, { method, headers, cache: "no-store", redirect: "error", signal: abort.signal });
      } catch (_) {
        return abort.signal.aborted ? timedOut() : failed("the server could not be reached");
      }
      let text;
      try {
        text = await res.text();
      } catch (_) {
        return abort.signal.aborted ? timedOut() : failed("the answer was cut off");
      }
      const body = text ? parseJSON(text) : null;
      return { ok: res.ok, status: res.status, body, error: res.ok ? null : errorText(body, res) };
    } finally {
      clearTimeout(timer);
    }
  }

  function parseJSON(text) {
    try { return JSON.parse(text); } catch (_) { return null; }
  }

  function errorText(body, res) {
    if (body && typeof body.error === "string") {
      const fields = Array.isArray(body.errors)
        ? body.errors.filter((e) => e && e.message).map((e) => (e.field ? `${e.field}: ${e.message}` : e.message))
        : [];
      return fields.length ? `${body.error} (${fields.join("; ")})` : body.error;
    }
    return `the server answered ${res.status} ${res.statusText || ""}`.trim();
  }

  const appPath = (name, rest = "") => `/v1/apps/${enc(name)}${rest}`;
  const appHref = (name) => `#/apps/${enc(name)}`;

  // ------------------------------------------------------------------------------ token and mode

  // sessionStorage can throw (storage disabled): then the token lives in memory, still per tab.
  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (_) { return memoryToken; }
  }
  function storeToken(t) {
    try { sessionStorage.setItem(TOKEN_KEY, t); } catch (_) { memoryToken = t; }
  }
  function dropToken() {
    memoryToken = null;
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing was stored */ }
  }

  const isAdmin = () => Boolean(token());

  function renderMode() {
    const admin = isAdmin();
    $("mode").textContent = admin ? "admin" : "read-only";
    $("token-form").hidden = admin;
    $("readonly-note").hidden = admin;
    $("admin-note").hidden = !admin;
    renderView();
  }

  async function onTokenSubmit(event) {
    event.preventDefault(); // the CSP's form-action 'none' would block a real submission anyway
    const input = $("token-input");
    const value = input.value.trim();
    if (!value) {
      showError("Enter the admin token first.");
      input.focus();
      return;
    }
    const button = $("token-submit");
    button.disabled = true;
    const res = await api("/v1/auth", { token: value });
    button.disabled = false;
    input.value = "";
    if (res.ok) {
      storeToken(value);
      clearError();
      renderMode();
      announce("Admin mode: the controls are shown");
      $("token-forget").focus();
      return;
    }
    showError(res.status === 401 ? `The token was not accepted: ${res.error}` : `The token could not be checked: ${res.error}`);
    input.focus();
  }

  function onTokenForget() {
    dropToken();
    renderMode();
    announce("Token forgotten: the dashboard is read-only");
    $("token-input").focus();
  }

  // A token kept from before a reload, or from before the server restarted (the new server may
  // have another token), is checked again; a refused one is dropped. A failure to ask keeps it:
  // the next command would find out anyway.
  async function recheckStoredToken(restarted) {
    const t = token();
    if (!t) return;
    const res = await api("/v1/auth", { token: t });
    if (res.status === 401 && token() === t) {
      dropToken();
      renderMode();
      showError(restarted
        ? `The server restarted and refused the admin token kept for this tab (${res.error}): the dashboard is read-only. Enter the server's current token to use the controls.`
        : `The admin token kept for this tab was refused (${res.error}): the dashboard is read-only.`);
    }
  }

  // ------------------------------------------------------------------------------ messages

  function showError(message) {
    $("error").textContent = message;
    $("error-dismiss").hidden = !message;
  }
  const clearError = () => showError("");

  let noticeTimer = 0;
  function showNotice(message) {
    Object.assign($("notice"), { textContent: message, hidden: false });
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { $("notice").hidden = true; }, 20000);
  }

  // The polite live region ("Latest change"): screen readers hear it, everyone sees it.
  const announce = (message) => { $("announcer").textContent = message; };

  // "live", "reconnecting" or "hidden" (the stream is closed while the tab is hidden).
  function setConnection(how) {
    $("connection").textContent = CONNECTION[how];
    $("connection-indicator").classList.toggle("live", how === "live");
    $("connection-indicator").classList.toggle("paused", how === "hidden");
  }

  // ------------------------------------------------------------------------------ app facts

  const phaseName = (rollout) =>
    !rollout ? "idle" : typeof rollout.phase === "string" ? rollout.phase : (rollout.phase && rollout.phase.phase) || "unknown";

  const isActive = (rollout) => Boolean(rollout) && !TERMINAL.has(phaseName(rollout));

  const weightOf = (weights, slot) => (weights && isNum(weights[slot]) ? weights[slot] : 0);

  const policySteps = (policy) => (policy && Array.isArray(policy.steps) ? policy.steps : []);
  // The canary steps of a policy: those before the first 10 000 bp step, which is the promotion
  // (and ends the list). "Step 1 of N" counts every step, as the engine's messages do.
  function canarySteps(policy) {
    const steps = policySteps(policy);
    const end = steps.findIndex((st) => st.weight_bp >= 10000);
    return end < 0 ? steps : steps.slice(0, end);
  }

  function summaryOf(name) {
    return state.status && Array.isArray(state.status.apps) ? state.status.apps.find((a) => a.app === name) : null;
  }

  // What the app view shows, from the app's own status when it has one (a managed app), else from
  // the overview's summary and the proxy's metrics (an app routed by a fixed route table).
  function appInfo(a) {
    const st = a.status;
    const summary = summaryOf(a.name);
    if (st) {
      const slots = Array.isArray(st.slots) ? st.slots : [];
      const liveSlot = slots.find((x) => x.slot === st.live);
      return {
        managed: true, live: st.live, liveVersion: liveSlot ? liveSlot.version : null,
        weights: st.weights || {}, rollout: st.rollout || null, slots,
        decisions: Array.isArray(st.recent_decisions) ? st.recent_decisions : [],
        fleet: st.fleet || null,
      };
    }
    // Routed by a fixed route table only: no status of its own (409), but the proxy's numbers.
    const unmanaged = a.statusCode === 409 || (summary && summary.managed === false);
    if (unmanaged && (summary || a.metrics)) {
      const slots = (a.metrics || []).map((m) => ({
        slot: m.slot, version: m.version || null, metrics: m.metrics,
        backends: Array.isArray(m.backends) ? m.backends.map((b) => b.addr) : [],
      }));
      const weights = summary ? summary.weights : Object.fromEntries((a.metrics || []).map((m) => [m.slot, m.weight_bp]));
      return {
        managed: false,
        live: summary ? summary.live : null, liveVersion: summary ? summary.live_version : null,
        weights: weights || {}, rollout: null, slots, decisions: [],
      };
    }
    return null;
  }

  function slotVersion(info, slot) {
    const s = info.slots.find((x) => x.slot === slot);
    if (s && s.version) return s.version;
    if (slot === info.live) return info.liveVersion;
    if (info.rollout && info.rollout.target === slot && info.rollout.release) return info.rollout.release.version;
    return null;
  }

  // What a slot is for now, in words. A slot that serves users is never "idle"; one whose
  // release was stopped (rolled back, aborted, failed, retired) is "stopped"; "warm for rollback"
  // only while a promoted rollout keeps the old release running.
  function slotRole(info, slot) {
    const r = info.rollout;
    const phase = phaseName(r);
    const sv = info.slots.find((x) => x.slot === slot);
    const running = Boolean(sv && Array.isArray(sv.backends) && sv.backends.length);
    const version = slotVersion(info, slot);
    if (isActive(r) && r.target === slot && phase !== "promoted") return "new release";
    if (slot === info.live) return "live";
    if (weightOf(info.weights, slot) > 0) return "canary (serves users)";
    if (!version) return "empty";
    if (!sv) return "idle"; // nothing known of its instances
    if (!running) return "stopped";
    if (phase === "promoted" && r.target !== slot && r.previous_version) return "warm for rollback";
    return "idle";
  }

  // One sentence about an app for the live region ("web: step 2 of 3, 25 % on v2").
  function describeApp(a) {
    const r = a.rollout;
    if (a.managed === false) return `${a.app}: fixed routes, ${SLOTS.map((sl) => `${sl} ${pct(weightOf(a.weights, sl))}`).join(", ")}`;
    if (!r) return `${a.app}: ${a.live_version ? `${a.live_version} live` : "nothing live"}, no rollout in progress`;
    const on = `${pct(weightOf(a.weights, r.target))} on ${r.version}`;
    const step = isNum(r.step) && isNum(r.steps) ? `step ${r.step + 1} of ${r.steps}` : null;
    switch (r.phase) {
      case "canary": return `${a.app}: ${step || "canary"}, ${on}`;
      case "paused": return `${a.app}: paused${step ? ` at ${step}` : ""}, ${on}`;
      case "promoted": return `${a.app}: ${r.version} promoted, ${on}`;
      case "succeeded": return `${a.app}: ${r.version} succeeded and is live`;
      case "rolled_back": return `${a.app}: rolled back, all traffic on ${a.live_version || "the old version"}`;
      case "aborted": return `${a.app}: aborted, all traffic on ${a.live_version || "the old version"}`;
      case "failed": return `${a.app}: ${r.version} failed before any user traffic`;
      default: return `${a.app}: ${r.version} ${String(r.phase).replace(/_/g, " ")}`;
    }
  }

  function announceChanges(apps) {
    const changes = [];
    for (const a of apps) {
      const r = a.rollout;
      const key = JSON.stringify([a.live, a.live_version, a.weights, r && [r.id, r.phase, r.step]]);
      const before = state.announced.get(a.app);
      state.announced.set(a.app, key);
      if (before !== undefined && before !== key) changes.push(describeApp(a));
    }
    if (changes.length) announce(changes.join(" · "));
  }

  // ------------------------------------------------------------------------------ loading

  async function loadStatus() {
    const res = await api("/v1/status");
    if (res.ok && res.body && Array.isArray(res.body.apps)) {
      state.status = res.body;
      state.statusError = null;
      announceChanges(res.body.apps);
      $("server-version").textContent = res.body.version ? `server ${res.body.version}` : "";
      // The overview shows both slots' versions; for an app routed by a fixed table only its
      // route table has the other one.
      if (res.body.apps.some((a) => a.managed === false)) await loadRoutes();
    } else {
      state.statusError = res.error || "unexpected answer";
    }
  }

  async function loadRoutes() {
    const res = await api("/v1/apps");
    if (!res.ok || !Array.isArray(res.body)) return; // the overview falls back to the live version
    state.routes = new Map(res.body.filter((x) => x && x.route).map((x) => [x.app || x.name, x.route]));
  }

  async function loadApp(a, withSeries) {
    const jobs = [
      api(appPath(a.name, "/status")).then(async (res) => {
        a.statusCode = res.status;
        if (res.ok && res.body) {
          a.status = res.body;
          a.statusError = null;
          if (isNum(res.body.now)) state.skew = res.body.now - Date.now();
          if (res.body.rollout) await loadEvents(a, res.body.rollout.id);
          else a.events = null;
        } else {
          // A network failure keeps the last answer on screen; a real "no" replaces it.
          if (res.status !== 0) a.status = null;
          a.statusError = res.error;
        }
      }),
      // Backend health, where the app has cutover's own proxy; optional.
      api(appPath(a.name, "/metrics")).then((res) => {
        if (res.ok && Array.isArray(res.body)) a.metrics = res.body;
        else if (res.status !== 0) a.metrics = null;
      }),
    ];
    if (withSeries || a.seriesState === "loading" || a.seriesState === "error") jobs.push(loadSeries(a));
    await Promise.all(jobs);
  }

  // The rollout's events, fetched incrementally: only those after the last one we have.
  async function loadEvents(a, rolloutId) {
    if (!a.events || a.events.rolloutId !== rolloutId) a.events = { rolloutId, list: [], lastSeq: 0 };
    const ev = a.events;
    for (let page = 0; page < 10; page++) {
      const res = await api(appPath(a.name, `/events?rollout=${enc(rolloutId)}&after=${ev.lastSeq}&limit=${EVENTS_PAGE}`));
      a.eventsError = res.ok && Array.isArray(res.body) ? null : res.error || "unexpected answer";
      if (a.eventsError) return;
      for (const e of res.body) if (e && e.seq > ev.lastSeq) { ev.list.push(e); ev.lastSeq = e.seq; }
      if (res.body.length < EVENTS_PAGE) return;
    }
  }

  async function loadSeries(a) {
    const res = await api(appPath(a.name, "/series"));
    // 404: the app's router is not cutover's own proxy, so there are no per-slot numbers.
    if (res.status === 404) return Object.assign(a, { seriesState: "none", series: null });
    if (!res.ok || !res.body || !Array.isArray(res.body.points)) {
      return Object.assign(a, { seriesState: "error", seriesError: res.error || "unexpected answer" });
    }
    a.interval = isNum(res.body.interval_ms) && res.body.interval_ms > 0 ? res.body.interval_ms : 1000;
    const points = res.body.points.slice();
    // Samples that came over the stream while this answer was on its way.
    const last = points.length ? points[points.length - 1].at : -Infinity;
    const later = (a.series || []).concat(a.pendingSamples).filter((p) => p.at > last).sort((x, y) => x.at - y.at);
    for (const p of later) if (!points.length || p.at > points[points.length - 1].at) points.push(p);
    Object.assign(a, { pendingSamples: [], series: points, seriesState: "ok" });
    trimSeries(a);
  }

  function trimSeries(a) {
    const pts = a.series;
    if (!pts || !pts.length) return;
    const cut = pts.findIndex((p) => p.at >= pts[pts.length - 1].at - SERIES_SPAN_MS);
    if (cut > 0) pts.splice(0, cut);
  }

  async function loadHistory(name) {
    const res = await api(appPath(name, "/history?limit=50"));
    state.history = { app: name, code: res.status, list: res.ok && Array.isArray(res.body) ? res.body : null, error: res.error };
  }

  async function loadFlags() {
    const [f, r] = await Promise.all([api("/v1/flags"), api("/v1/ramps")]);
    state.flags = {
      flags: f.ok && f.body && Array.isArray(f.body.flags) ? f.body : null, flagsCode: f.status, flagsError: f.error,
      ramps: r.ok && Array.isArray(r.body) ? r.body : null, rampsCode: r.status, rampsError: r.error,
    };
  }

  // At most one refresh runs; what is asked meanwhile is merged and run once after it, so a
  // burst of events costs two round trips, not one per event.
  let refreshing = false;
  let pending = null;

  function requestRefresh(scope) {
    const before = pending || { view: false, series: false, apps: new Set() };
    pending = { view: before.view || Boolean(scope.view), series: before.series || Boolean(scope.series), apps: new Set(before.apps) };
    if (scope.app) pending.apps.add(scope.app);
    if (!refreshing) runRefresh();
  }

  async function runRefresh() {
    refreshing = true;
    try {
      while (pending) {
        const scope = pending;
        pending = null;
        await refresh(scope);
      }
    } catch (err) {
      console.error("cutover dashboard: refresh failed", err);
    } finally {
      refreshing = false;
    }
  }

  async function refresh(scope) {
    const gen = state.routeGen;
    const route = state.route;
    const dirty = scope.view || (route.app && scope.apps.has(route.app));
    const jobs = [loadStatus()];
    if (dirty && route.name === "app" && state.app) jobs.push(loadApp(state.app, scope.series));
    if (dirty && route.name === "history") jobs.push(loadHistory(route.app));
    if (scope.view && route.name === "flags") jobs.push(loadFlags());
    await Promise.all(jobs);
    if (gen === state.routeGen) renderView();
    else renderNav();
  }

  // ------------------------------------------------------------------------------ live stream

  // One EventSource per visible tab. Browsers allow six HTTP/1.1 connections per host, so a tab
  // that is hidden closes its stream (a seventh request would otherwise wait behind six idle
  // streams) and opens it again, reading everything, when it is shown. A watchdog replaces a
  // stream that went silent: the server writes at least a heartbeat every 5 s, so a stream with
  // nothing for WATCHDOG_MS is stuck, whatever the socket says.
  let source = null;
  let retryTimer = 0;
  let lastMessageAt = 0;
  let hellos = 0;

  const tabHidden = () => document.visibilityState === "hidden";

  function connect() {
    closeStream();
    if (typeof EventSource !== "function") return; // then the backstop alone keeps the page fresh
    if (tabHidden()) return void setConnection("hidden");
    const es = new EventSource("/v1/stream");
    source = es;
    lastMessageAt = Date.now();
    // Every message of any kind shows the stream is alive; one from a replaced stream is dropped.
    const on = (type, handle) => es.addEventListener(type, (e) => {
      if (source !== es) return;
      lastMessageAt = Date.now();
      if (handle) handle(e);
    });
    on("open", () => setConnection("live"));
    es.addEventListener("error", () => {
      if (source !== es) return;
      setConnection("reconnecting");
      // The browser retries by itself unless the answer was not a stream at all; then we do.
      if (es.readyState === EventSource.CLOSED) {
        closeStream();
        retryTimer = setTimeout(connect, 3000);
      }
    });
    on("hello", (e) => {
      setConnection("live");
      const data = parseJSON(e.data);
      hellos++;
      if (data && data.started_at !== undefined) {
        if (state.startedAt !== null && data.started_at !== state.startedAt) onServerRestart(data);
        state.startedAt = data.started_at;
      }
      // Whatever happened while we were away: fetch it all (the first time, the view's own
      // first load already fetched the series).
      requestRefresh({ view: true, series: hellos > 1 });
    });
    on("event", (e) => {
      const ev = parseJSON(e.data);
      if (ev && typeof ev.app === "string") requestRefresh({ app: ev.app });
    });
    // This connection fell behind and missed some: read everything again.
    on("resync", () => requestRefresh({ view: true, series: true }));
    on("sample", (e) => {
      const data = parseJSON(e.data);
      if (data && typeof data.app === "string" && data.point) onSample(data.app, data.point);
    });
    on("heartbeat", null);
  }

  function closeStream() {
    clearTimeout(retryTimer);
    retryTimer = 0;
    if (source) source.close();
    source = null;
  }

  function watchdog() {
    if (!source || Date.now() - lastMessageAt <= WATCHDOG_MS) return;
    setConnection("reconnecting");
    connect(); // a new stream; its `hello` fetches everything again
  }

  function onVisibilityChange() {
    if (tabHidden()) {
      closeStream();
      setConnection("hidden");
      return;
    }
    connect();
    requestRefresh({ view: true, series: true });
  }

  function onServerRestart(hello) {
    const when = isNum(hello.started_at) ? ` at ${clock(hello.started_at)}` : "";
    showNotice(`The server restarted${when}: everything shown was fetched again.`);
    announce("server restarted");
    // Its event log and series may have been reset: fetch them whole, not after what we had.
    if (state.app) Object.assign(state.app, { events: null, series: null, seriesState: "loading" });
    // The new server may have another admin token.
    recheckStoredToken(true);
  }

  function onSample(appName, point) {
    const a = state.app;
    if (!a || a.name !== appName || !isNum(point.at) || !Array.isArray(point.slots)) return;
    if (a.seriesState === "ok") {
      const pts = a.series;
      if (pts.length && point.at <= pts[pts.length - 1].at) return;
      pts.push(point);
      trimSeries(a);
      scheduleCharts();
    } else if (a.seriesState === "loading") {
      a.pendingSamples.push(point);
      if (a.pendingSamples.length > 1200) a.pendingSamples.shift();
    }
  }

  let chartFrame = 0;
  function scheduleCharts() {
    if (chartFrame) return;
    chartFrame = requestAnimationFrame(() => { chartFrame = 0; renderCharts(); });
  }

  // ------------------------------------------------------------------------------ routing

  function parseRoute(hash) {
    const path = (hash || "").replace(/^#/, "") || "/";
    if (!path.startsWith("/")) return { name: "notfound", path };
    const parts = path.slice(1).split("/");
    if (parts.length > 1 && parts[parts.length - 1] === "") parts.pop();
    let segs;
    try { segs = parts.map(decodeURIComponent); } catch (_) { return { name: "notfound", path }; } // a stray "%"
    if (segs.length === 1 && segs[0] === "") return { name: "overview" };
    if (segs.length === 1 && segs[0] === "flags") return { name: "flags" };
    if (segs[0] === "apps" && segs.length === 2 && segs[1]) return { name: "app", app: segs[1] };
    if (segs[0] === "apps" && segs.length === 3 && segs[1] && segs[2] === "history") return { name: "history", app: segs[1] };
    return { name: "notfound", path };
  }

  function onRouteChange() {
    const first = state.route === null;
    const route = parseRoute(location.hash);
    state.route = route;
    state.routeGen++;
    if (route.app) {
      state.lastApp = route.app;
      if (!state.app || state.app.name !== route.app) state.app = newAppData(route.app);
    } else {
      state.app = null;
    }
    if (route.name !== "history" || (state.history && state.history.app !== route.app)) state.history = null;
    buildView();
    renderView();
    if (!first) {
      const h1 = document.querySelector("#view h1");
      if (h1) h1.focus();
    }
    requestRefresh({ view: true, series: true });
  }

  function renderNav() {
    const r = state.route;
    const apps = (state.status && state.status.apps) || [];
    // Only apps with rollouts have a history: not one routed by a fixed route table.
    const hasHistory = (name) => {
      const known = apps.find((a) => a.app === name);
      return Boolean(name) && (known ? known.managed !== false : !state.status);
    };
    const managed = apps.find((a) => a.managed !== false);
    const histApp = [r.app, state.lastApp, managed && managed.app].find(hasHistory) || null;
    const link = $("nav-history");
    link.hidden = !histApp;
    if (histApp) {
      link.setAttribute("href", `${appHref(histApp)}/history`);
      link.textContent = `History: ${histApp}`;
    }
    const current = { overview: "nav-overview", history: "nav-history", flags: "nav-flags" }[r.name];
    for (const id of ["nav-overview", "nav-history", "nav-flags"]) {
      if (id === current) $(id).setAttribute("aria-current", "page");
      else $(id).removeAttribute("aria-current");
    }
  }

  // ------------------------------------------------------------------------------ views

  function buildView() {
    const builders = { overview: buildOverview, app: buildApp, history: buildHistory, flags: buildFlags, notfound: buildNotFound };
    view = builders[state.route.name](state.route);
    $("view").replaceChildren(view.root);
  }

  function renderView() {
    if (!view) return;
    renderNav();
    const r = state.route;
    const titles = { overview: "Overview", app: r.app, history: `History of ${r.app}`, flags: "Flags", notfound: "Not found" };
    document.title = `${titles[r.name]} · cutover`;
    view.render();
    refreshAgo();
    checkConfirmation();
  }

  function card(title, ...content) {
    const id = uid("h");
    return h("section", { class: "card", "aria-labelledby": id }, h("h2", { id, tabindex: "-1", text: title }), content);
  }

  // ---- overview

  // On a phone the rows become stacked cards (CSS): each cell says what it is with its
  // data-label, as the column headers are out of sight.
  const OVERVIEW_COLUMNS = ["App", "Live version", "Phase", "Traffic", "Last decision"];

  function buildOverview() {
    const tbody = h("tbody");
    const msg = h("p", { class: "empty-state" });
    const tableEl = h("table", { class: "app-table" },
      h("caption", { class: "sr-only", text: "Apps and their rollouts" }),
      h("thead", null, h("tr", null, OVERVIEW_COLUMNS.map((c) => h("th", { scope: "col", text: c })))),
      tbody);
    const root = h("div", null,
      h("h1", { tabindex: "-1", text: "Overview" }),
      card("Apps", msg, scrollBox(tableEl, "Apps")));
    return {
      root,
      render() {
        const st = state.status;
        const apps = st ? st.apps : [];
        msg.textContent = !st
          ? (state.statusError ? `Could not load the apps: ${state.statusError}` : "Loading…")
          : state.statusError ? `Showing the last answer: the latest refresh failed (${state.statusError}).`
            : apps.length ? "" : "No apps are configured.";
        msg.hidden = !msg.textContent;
        // The route table is part of a row's data: a fixed-route app's other version shows once read.
        const rows = apps.map((a) => (a.managed === false ? Object.assign({}, a, { route: state.routes.get(a.app) || null }) : a));
        patchRows(tbody, rows, (a) => a.app, overviewRow);
      },
    };
  }

  // Both slots with their versions and weights; an empty slot without traffic is left out.
  function summarySlots(a) {
    return SLOTS.map((slot) => {
      let version;
      if (a.managed === false) {
        const pool = a.route && a.route[slot];
        version = (pool && pool.version) || (slot === a.live ? a.live_version : null);
      } else {
        version = slot === a.live ? a.live_version : a.rollout && a.rollout.target === slot ? a.rollout.version : null;
      }
      return { slot, version, weight: weightOf(a.weights, slot) };
    }).filter((x) => x.version || x.weight > 0);
  }

  function overviewRow(a) {
    const r = a.rollout;
    let phase;
    if (a.managed === false) phase = badge("≡", "fixed routes", "neutral");
    else phase = h("span", null, phaseBadge(phaseName(r)),
      r && isNum(r.step) && isNum(r.steps) && !TERMINAL.has(r.phase) ? ` step ${r.step + 1} of ${r.steps}` : null,
      r ? h("span", { class: "muted" }, ` · #${r.id} ${r.version}`) : null);
    const slots = summarySlots(a);
    const d = a.last_decision;
    // The summary carries no verdict flags: a held step reads "... is building".
    const kind = d && verdictKind({ outcome: d.outcome, summary: d.summary, hold: d.hold, conclusive: d.conclusive });
    const [app, live, ph, traffic, decision] = OVERVIEW_COLUMNS;
    return h("tr", { testid: "app-row", "data-app": a.app },
      h("th", { scope: "row", "data-label": app }, h("a", { href: appHref(a.app), text: a.app })),
      h("td", { "data-label": live, text: a.live_version || "none" }),
      h("td", { "data-label": ph }, phase),
      h("td", { class: "traffic", "data-label": traffic },
        h("span", { class: "tabular", text: slots.map((x) => `${x.slot}${x.version ? ` ${x.version}` : ""} ${pct(x.weight)}`).join(" · ") || "no traffic" }),
        miniBar(a.weights)),
      h("td", { "data-label": decision }, d
        ? [outcomeBadge(kind), " ", h("span", { text: cleanText(d.summary) }), " ", h("span", { class: "muted" }, "(", agoEl(d.at), ")")]
        : h("span", { class: "muted", text: a.managed === false ? "none: no rollouts" : "none" })));
  }

  function miniBar(weights) {
    const bar = h("div", { class: "minibar", "aria-hidden": "true" });
    for (const slot of SLOTS) {
      const seg = h("span", { class: `seg ${slot}` });
      seg.style.width = `${weightOf(weights, slot) / 100}%`; // CSSOM: allowed by the CSP
      bar.append(seg);
    }
    return bar;
  }

  // ---- app

  const CHARTS = [
    { id: "rps", title: "Request rate", unit: "req/s", floor: 1,
      get: (x) => (isNum(x.rps) ? x.rps : null), fmt: (v) => `${trimNum(v, v < 10 ? 2 : 1)} req/s`, tick: (v) => trimNum(v, 2) },
    { id: "e5", title: "5xx error rate", unit: "%", floor: 1,
      get: (x) => (x.requests > 0 && isNum(x.error_rate_5xx) ? x.error_rate_5xx * 100 : null), fmt: (v) => `${trimNum(v, 2)} %`, tick: (v) => `${trimNum(v, 2)} %` },
    { id: "e4", title: "4xx error rate", unit: "%", floor: 1,
      get: (x) => (x.requests > 0 && isNum(x.error_rate_4xx) ? x.error_rate_4xx * 100 : null), fmt: (v) => `${trimNum(v, 2)} %`, tick: (v) => `${trimNum(v, 2)} %` },
    { id: "p99", title: "p99 latency", unit: "ms", floor: 10,
      get: (x) => (isNum(x.p99_ms) ? x.p99_ms : null), fmt: (v) => millis(v), tick: (v) => trimNum(v, 1) },
  ];

  function buildApp(route) {
    const name = route.app;
    const v = {
      lede: h("div", { class: "lede" }), missing: h("div", { hidden: true }), split: h("div"), controls: h("div"),
      chartsMsg: h("p", { class: "empty-state", hidden: true }), chartGrid: h("div", { class: "charts" }),
      rollout: h("div"), plan: h("div"), timeline: h("div"), decisionsMsg: h("div"), slots: h("div"), fleet: h("div"),
      decisions: h("ol", { class: "decisions", "aria-label": "Decisions, newest first" }),
    };
    v.charts = CHARTS.map((def) => {
      const box = h("div", { class: "chart-box" });
      const legend = h("ul", { class: "legend", "aria-label": `${def.title}: series` });
      // A wrapper, not the table, is visually hidden: tables ignore the 1px width.
      const alt = h("div", { class: "sr-only" });
      v.chartGrid.append(h("figure", { class: "chart" }, h("h3", { text: `${def.title} (${def.unit})` }), box, legend, alt));
      return { def, box, legend, alt };
    });
    v.controlsCard = card("Controls", v.controls);
    v.rolloutCard = card("Rollout", v.rollout);
    v.rolloutHead = v.rolloutCard.querySelector("h2");
    v.decisionsCard = card("Decisions", v.decisionsMsg, v.decisions);
    v.body = h("div", null,
      card("Traffic split", v.split),
      v.controlsCard,
      card("Last 10 minutes", v.chartsMsg, v.chartGrid),
      v.rolloutCard,
      v.decisionsCard,
      card("Slots", v.slots));
    // A fleet's proxies (docs/fleet.md): shown only when the status has them.
    v.fleetCard = card("Fleet", v.fleet);
    v.fleetCard.hidden = true;
    v.body.append(v.fleetCard);
    v.root = h("div", null, h("h1", { tabindex: "-1", text: name }), v.lede, v.missing, v.body);
    v.render = () => renderApp(v);
    // Charts are drawn at the width they get, so that their text is never scaled down.
    if (typeof ResizeObserver === "function") {
      let lastWidth = 0;
      new ResizeObserver((entries) => {
        const w = Math.round(entries[0].contentRect.width);
        if (w !== lastWidth) { lastWidth = w; scheduleCharts(); }
      }).observe(v.chartGrid);
    }
    return v;
  }

  function renderApp(v) {
    const a = state.app;
    if (!a) return;
    const info = appInfo(a);
    const known = Boolean(summaryOf(a.name));
    if (!info) {
      const gone = a.statusCode === 404 || (state.status && !known && a.statusCode !== 0);
      v.body.hidden = true;
      v.missing.hidden = false;
      region(v.missing, `missing:${gone}:${a.statusError}`, () => gone
        ? [h("p", { text: `There is no app named “${a.name}”.` }), h("p", null, h("a", { href: "#/", text: "Back to the overview" }))]
        : h("p", { class: "empty-state", text: a.statusError ? `Could not load ${a.name}: ${a.statusError}` : "Loading…" }));
      return;
    }
    v.body.hidden = false;
    v.missing.hidden = true;
    const r = info.rollout;
    const phase = phaseName(r);
    // The lede's key leaves out what moves every second (a canary's observed time).
    region(v.lede, JSON.stringify([info.liveVersion, phase, r && [r.id, r.phase && r.phase.step], info.managed, a.statusError]), () => ledeContent(a, info));
    region(v.split, JSON.stringify([info.weights, SLOTS.map((sl) => [slotVersion(info, sl), slotRole(info, sl)])]), () => splitContent(info));
    renderControls(v, a, info);
    renderRollout(v, a, info);
    v.rolloutCard.hidden = v.decisionsCard.hidden = !info.managed;
    renderDecisions(v, a, info);
    region(v.slots, JSON.stringify([info.slots, a.metrics, info.live, info.weights, SLOTS.map((sl) => slotRole(info, sl))]), () => slotsContent(a, info));
    v.fleetCard.hidden = !info.fleet;
    if (info.fleet) {
      // Contact ages move every second; the key keeps them to the second so the table is not rebuilt more often.
      const key = JSON.stringify([info.fleet.leader, info.fleet.generation, info.fleet.error,
        (info.fleet.proxies || []).map((p) => [p.id, p.generation, p.lagging, p.problem, Math.round((p.last_contact_ms || 0) / 1000)])]);
      region(v.fleet, key, () => fleetContent(info.fleet));
    }
    renderCharts();
  }

  function ledeContent(a, info) {
    const r = info.rollout;
    const phase = phaseName(r);
    const items = [
      h("span", { class: "item" }, "Live version:", h("strong", { testid: "live-version", text: info.liveVersion || "none" })),
      h("span", { class: "item" }, "Phase:", info.managed ? phaseBadge(phase, "phase") : badge("≡", "fixed routes (no rollouts)", "neutral", "phase")),
    ];
    if (r) {
      const total = policySteps(r.policy).length;
      const step = r.phase && isNum(r.phase.step) && r.phase.step < total ? ` · step ${r.phase.step + 1} of ${total}` : "";
      items.push(h("span", { class: "item" }, `Rollout #${r.id}: ${r.previous_version || "nothing"} → ${r.release ? r.release.version : "?"}${step}`,
        h("span", { class: "muted" }, "(started ", agoEl(r.started_at), ")")));
    }
    if (info.managed) items.push(h("a", { href: `${appHref(a.name)}/history`, text: `History of ${a.name}` }));
    if (a.statusError && a.statusCode === 0) items.push(h("span", { class: "text-bad", text: `✗ Could not refresh: ${a.statusError}` }));
    return items;
  }

  function splitContent(info) {
    const bar = h("div", { class: "split-bar", "aria-hidden": "true" });
    const legend = h("ul", { class: "split-legend", "aria-label": "Share of users per slot" });
    for (const slot of SLOTS) {
      const w = weightOf(info.weights, slot);
      const seg = h("span", { class: `seg ${slot}` });
      seg.style.width = `${w / 100}%`;
      bar.append(seg);
      const version = slotVersion(info, slot);
      legend.append(h("li", null,
        h("span", { class: `swatch ${slot}`, "aria-hidden": "true" }),
        h("strong", { text: slot }),
        h("span", { text: version || "(empty)" }),
        h("span", { class: "weight", testid: `weight-${slot}`, text: pct(w) }),
        h("span", { class: "muted", text: `(${slotRole(info, slot)})` })));
    }
    return [bar, legend];
  }

  // Which commands make sense now. Mirrors what the engine accepts (core/src/rollout.rs,
  // on_command), so a button never leads to a certain refusal.
  function allowedCommands(r) {
    if (!isActive(r)) return [];
    const p = phaseName(r);
    const list = [];
    if (["verifying", "gating", "canary", "paused", "awaiting_confirmation"].includes(p)) list.push("promote");
    if (p === "canary") list.push("pause");
    if (p === "paused") list.push("resume");
    if (p !== "promoted") list.push("abort");
    // Once a first release is promoted there is nothing to go back to.
    if (p !== "promoted" || r.previous_version) list.push("rollback");
    return list;
  }

  function renderControls(v, a, info) {
    const show = isAdmin() && info.managed;
    v.controlsCard.hidden = !show;
    // Read-only: no control buttons in the page at all, not merely hidden ones.
    if (!show) return void region(v.controls, "none", () => null);
    const cmds = allowedCommands(info.rollout);
    const r = info.rollout;
    const changed = region(v.controls, JSON.stringify([cmds, r && r.id, r && r.release && r.release.version, r && r.previous_version]), () => {
      if (!cmds.length) return empty("No rollout in progress: nothing to control.");
      const nu = r.release ? r.release.version : "the new version";
      const labels = {
        promote: `Promote ${nu} now`, pause: "Pause the rollout", resume: "Resume the rollout", abort: "Abort the rollout",
        rollback: r.previous_version ? `Roll back to ${r.previous_version}` : `Roll back ${nu}`,
      };
      return h("div", { class: "controls" }, cmds.map((cmd) => h("button", {
        type: "button", testid: `control-${cmd}`, text: labels[cmd],
        class: cmd === "rollback" || cmd === "abort" ? "danger" : cmd === "promote" ? "primary" : null,
        on: { click: () => runCommand(a.name, cmd) },
      })));
    });
    for (const b of v.controls.querySelectorAll("button")) b.disabled = state.commandBusy;
    // A command that changed the phase replaced the buttons: keep keyboard users in the section.
    if (changed && document.activeElement === document.body && state.focusControls) {
      state.focusControls = false;
      v.controlsCard.querySelector("h2").focus();
    }
  }

  function renderRollout(v, a, info) {
    const r = info.rollout;
    const ev = a.events && r && a.events.rolloutId === r.id ? a.events : null;
    v.rolloutHead.textContent = r ? `Rollout #${r.id}: ${r.previous_version || "nothing"} → ${r.release ? r.release.version : "?"}` : "Rollout";
    const shown = region(v.rollout, JSON.stringify([info.managed, Boolean(r)]), () => {
      if (!info.managed) return empty("No rollouts for this app: it is routed by a fixed route table.");
      if (!r) return empty(`No rollout yet: \`cutover deploy ${a.name} VERSION\` starts one.`);
      return [h("h3", { text: "Plan" }), v.plan, h("h3", { text: "What happened" }), v.timeline];
    });
    if (shown) v.plan.__key = v.timeline.__key = undefined; // put back in the page: draw them again
    if (!info.managed || !r) return;
    const events = ev ? ev.list : [];
    // The plan follows the phase (a canary's observed time); the timeline only new events.
    region(v.plan, JSON.stringify([r.id, r.phase, ev && ev.lastSeq]), () => stepsList(r, events, Boolean(ev) && !a.eventsError));
    region(v.timeline, JSON.stringify([r.id, ev && ev.lastSeq, a.eventsError]), () => {
      const t0 = (events.find((e) => e.kind === "deploy") || {}).at || r.started_at;
      return [
        a.eventsError ? h("p", { class: "text-bad", text: `✗ Could not load the events: ${a.eventsError}` }) : null,
        events.length ? h("ol", { class: "events" }, timelineItems(events, t0)) : empty("No events yet."),
      ];
    });
  }

  // The policy's steps as done / now / to come / skipped. A step is done only when the rollout's
  // events have its `step` (or the phase proves it ran: a canary at step 3 went through 1 and 2);
  // a first release is promoted without any step, and the plan says so.
  function stepsList(r, events, eventsKnown) {
    const p = phaseName(r);
    const ph = r.phase || {};
    const steps = canarySteps(r.policy);
    const n = steps.length;
    const total = policySteps(r.policy).length;
    const policy = r.policy || {};
    const nu = r.release ? r.release.version : "the new version";
    const old = r.previous_version;
    const has = (kind) => events.some((e) => e.kind === kind);
    const stepsOf = (kind) => events.filter((e) => e.kind === kind && e.data && isNum(e.data.step)).map((e) => e.data.step);

    const ran = new Set(stepsOf("step"));
    const current = ["canary", "gating", "paused"].includes(p) && isNum(ph.step) ? ph.step : null;
    for (let i = 0; i < (current === null ? 0 : current); i++) ran.add(i);
    if (p === "awaiting_confirmation" && isNum(ph.hold_step)) for (let i = 0; i <= ph.hold_step; i++) ran.add(i);
    const preparing = ["migrating", "provisioning", "verifying"].includes(p);
    const ended = ["rolled_back", "aborted", "failed"].includes(p);
    const promoted = p === "promoted" || p === "succeeded" || has("promoted");
    const direct = promoted && eventsKnown && ran.size === 0;
    // Where an ended rollout stopped, if it never got promoted: its last step, or the step
    // whose gates it was asking; -1 before any.
    const stoppedAt = ended && !promoted ? Math.max(-1, ...ran, ...stepsOf("gating")) : null;
    const prepStopped = ended && !promoted && stoppedAt === -1 && (p === "failed" || !has("verified"));

    const DONE = ["done", "✓ done"], TODO = ["todo", "○ to come"], STOPPED = ["stopped", "✗ stopped here"];
    const NOT_REACHED = ["skipped", "– not reached"], SKIPPED = ["skipped", "– skipped"], UNKNOWN = ["skipped", "? not known"];
    const item = ([cls, label], text, extra) => h("li", { class: `state-${cls}` }, h("span", { class: "state", text: label }),
      h("span", null, text, extra ? h("span", { class: "muted" }, " ", extra) : null));

    const items = [item(preparing ? ["now", "▸ now"] : prepStopped ? STOPPED : DONE,
      "Prepare: migrations, start, readiness and smoke checks", preparing ? `(${p})` : null)];
    steps.forEach((st, i) => {
      let at = TODO;
      let extra = null;
      if (i === current) {
        at = p === "paused" ? (ph.step_done ? DONE : ["now", "‖ paused"]) : ["now", "▸ now"];
        if (p === "canary" && isNum(ph.observed_ms)) extra = `(${duration(ph.observed_ms)} of ${duration(st.duration_ms)} observed)`;
        if (p === "gating") extra = "(asking the step gates)";
        if (p === "paused" && ph.reason) extra = `(${cleanText(ph.reason)})`;
      } else if (i === stoppedAt) {
        at = STOPPED;
        if (!ran.has(i)) extra = "(at its gates)";
      } else if (ran.has(i)) {
        at = DONE;
      } else if (promoted || ended) {
        at = !eventsKnown ? UNKNOWN : promoted ? SKIPPED : NOT_REACHED;
      }
      items.push(item(at, `Step ${i + 1} of ${total}: ${pct(st.weight_bp)} of users on ${nu} for ${duration(st.duration_ms)}${st.pause ? ", then wait for a person" : ""}`, extra));
    });
    // The promotion is a step of the policy when it has a 10 000 bp one, else it follows the last.
    const promotion = n < total ? `Step ${n + 1} of ${total}: promotion` : "Promotion";
    let promoExtra = p === "awaiting_confirmation" ? "(waiting for the confirmation)" : null;
    if (direct) promoExtra = old ? "· promoted directly, before any canary step" : "· promoted directly (first release: nothing to compare against)";
    items.push(item(promoted ? DONE : p === "awaiting_confirmation" ? ["now", "‖ waiting"] : ended ? NOT_REACHED : TODO,
      `${promotion}: all users on ${nu}${policy.confirm_promotion ? ", once confirmed" : ""}`, promoExtra));
    if (old) {
      const windowAt = p === "promoted" ? ["now", "▸ now"] : p === "succeeded" ? DONE : ended && promoted ? STOPPED : ended ? NOT_REACHED : TODO;
      items.push(item(windowAt, `Rollback window: ${old} stays warm for ${duration(policy.rollback_window_ms)}`,
        p === "promoted" && isNum(ph.until) ? ["(until ", timeEl(ph.until, clock(ph.until)), ")"] : null));
    }
    return h("ol", { class: "steps", "aria-label": "Rollout plan" }, items);
  }

  // Events in order; runs of decisions fold into one line (their details are under Decisions).
  function timelineItems(events, t0) {
    const out = [];
    let run = null;
    for (const e of events) {
      if (e.kind !== "decision") { out.push(e); run = null; }
      else if (run) run.push(e);
      else { run = [e]; out.push(run); }
    }
    return out.map((it) => (Array.isArray(it) ? decisionRunItem(it, t0) : eventItem(it, t0)));
  }

  function eventRow(at, t0, kind, symbol, body) {
    return h("li", null,
      timeEl(at, relTime(at - t0)),
      h("span", { class: "kind" }, h("span", { "aria-hidden": "true", text: `${symbol} ` }), kind),
      h("div", { class: "body" }, body));
  }

  function eventItem(e, t0) {
    const data = e.data || {};
    const body = [h("span", { class: "message", text: cleanText(e.message) })];
    if (["promoted", "rolled_back", "aborted"].includes(e.kind) && isNum(data.canary_requests)) {
      const parts = [`canary served ${count(data.canary_requests)} requests, ${count(data.canary_failed_requests)} failed`];
      if (isNum(data.users_exposed)) parts.push(`about ${count(data.users_exposed)} users`);
      if (isNum(data.first_canary_request_to_decision_ms)) parts.push(`exposed for ${duration(data.first_canary_request_to_decision_ms)}`);
      if (isNum(data.detection_to_rollback_ms)) parts.push(`rolled back ${duration(data.detection_to_rollback_ms)} after the first failed window`);
      body.push(h("div", { class: "muted", text: parts.join(" · ") }));
    }
    if (e.kind === "paused" && typeof data.statistics === "string" && data.statistics) {
      body.push(details(`pause-${e.seq}`, "Statistics", h("pre", { class: "wrap", text: cleanText(data.statistics) })));
    }
    return eventRow(e.at, t0, e.kind, EVENT_SYMBOLS[e.kind] || "•", body);
  }

  function decisionRunItem(run, t0) {
    const tally = new Map();
    for (const e of run) {
      const kind = verdictKind(e.data && e.data.verdict);
      if (OUTCOMES[kind]) tally.set(kind, (tally.get(kind) || 0) + 1);
    }
    const last = run[run.length - 1];
    const lastVerdict = (last.data && last.data.verdict) || {};
    const counts = Object.keys(OUTCOMES).filter((k) => tally.get(k)).map((k) => `${OUTCOMES[k][0]} ${tally.get(k)} ${OUTCOMES[k][1]}`).join(" · ");
    const kind = run.length === 1 ? "decision" : `${run.length} decisions`;
    const symbol = tally.get("fail") ? "✗" : tally.get("holding") ? "…" : tally.get("inconclusive") || tally.get("thin") ? "?" : "✓";
    return eventRow(run[0].at, t0, kind, symbol, [
      run.length > 1 ? h("div", { class: "tabular", text: counts }) : null,
      h("div", null, run.length > 1 ? "Latest: " : null, outcomeBadge(verdictKind(lastVerdict)), " ",
        h("span", { class: "message", text: cleanText(lastVerdict.summary || last.message) })),
    ]);
  }

  // Decisions newest first. New ones are inserted above the others and existing items are left
  // alone, so an open evidence panel (or focus in it) survives the next decision.
  function renderDecisions(v, a, info) {
    const r = info.rollout;
    const ev = a.events && r && a.events.rolloutId === r.id ? a.events : null;
    let list = ev ? ev.list.filter((e) => e.kind === "decision") : info.decisions;
    const total = list.length;
    list = list.slice(-MAX_DECISIONS_SHOWN);
    const rolloutKey = r ? r.id : null;
    if (v.decisions.__rollout !== rolloutKey) {
      v.decisions.__rollout = rolloutKey;
      v.decisions.replaceChildren();
    }
    const shown = new Map(Array.from(v.decisions.children, (li) => [li.__seq, li]));
    const keep = new Set(list.map((e) => e.seq));
    for (const [seq, li] of shown) if (!keep.has(seq)) li.remove();
    const names = { canary: r && r.release ? r.release.version : "canary", baseline: (r && r.previous_version) || "baseline" };
    const t0 = r ? r.started_at : 0;
    let anchor = v.decisions.firstElementChild;
    // list is oldest first: walk it newest first, inserting each new item before the older ones.
    for (let i = list.length - 1; i >= 0; i--) {
      const e = list[i];
      const existing = shown.get(e.seq);
      if (existing) {
        anchor = existing.nextElementSibling;
        continue;
      }
      const li = decisionItem(e, names, t0);
      li.__seq = e.seq;
      v.decisions.insertBefore(li, anchor);
    }
    region(v.decisionsMsg, JSON.stringify([info.managed, total, list.length]), () => {
      if (!info.managed) return null;
      if (!total) return empty(r ? "No decisions yet in this rollout." : "No rollout yet.");
      return total > list.length ? h("p", { class: "muted", text: `The newest ${list.length} of ${total} decisions; \`cutover events ${a.name}\` shows them all.` }) : null;
    });
  }

  function decisionItem(e, names, t0) {
    const verdict = (e.data && e.data.verdict) || {};
    return h("li", { class: "decision" },
      h("h3", null, outcomeBadge(verdictKind(verdict)),
        h("span", { class: "muted" }, timeEl(e.at, `${relTime(e.at - t0)} (${clock(e.at)})`))),
      h("p", { class: "summary message", text: cleanText(verdict.summary || e.message) }),
      details(`dec-${e.seq}`, ["Evidence", h("span", { class: "sr-only", text: ` for the decision at ${clock(e.at)}` })],
        h("div", { class: "evidence" }, evidence(verdict, names))));
  }

  function evidence(verdict, names) {
    const stats = verdict.stats || {};
    const parts = [];
    if (stats.canary) parts.push(statsTable(stats, names), usersTable(stats, names));
    if (stats.unavailable) parts.push(h("p", { class: "text-warn", text: `? Metrics unavailable: ${stats.unavailable}` }));
    if (Array.isArray(verdict.checks) && verdict.checks.length) parts.push(checksTable(verdict.checks));
    if (Array.isArray(stats.external) && stats.external.length) {
      parts.push(h("ul", { "aria-label": "Custom checks" }, stats.external.map((x) =>
        h("li", null, outcomeBadge(x.outcome), " ", h("strong", { text: x.name }), `: ${cleanText(x.reason)}`))));
    }
    if (verdict.reason) parts.push(h("div", null, h("p", { class: "muted", text: "Statistics" }), h("pre", { class: "wrap", text: cleanText(verdict.reason) })));
    return parts;
  }

  function statsTable(stats, names) {
    const c = stats.canary;
    const b = stats.baseline || null;
    const has = (k) => isNum(c[k]) || (b && isNum(b[k]));
    const rate = (w, k) => (w && isNum(w[k]) && w.requests > 0 ? fraction(w[k] / w.requests) : "—");
    const rows = [
      ["Requests", (w) => count(w && w.requests)],
      ["5xx errors", (w) => count(w && w.errors)],
      ["5xx error rate", (w) => rate(w, "errors")],
    ];
    if (has("client_errors")) rows.push(["4xx errors", (w) => count(w && w.client_errors)], ["4xx error rate", (w) => rate(w, "client_errors")]);
    rows.push(["p99 latency", (w) => millis(w && w.p99_ms)]);
    const caption = `Window of ${duration(stats.duration_ms)}: canary against baseline${b ? "" : " (no baseline: judged on ceilings)"}`;
    return compareTable(caption, rows, c, b, names);
  }

  // Users are counted since each release started, not per window: a table of their own.
  function usersTable(stats, names) {
    const c = stats.canary;
    const b = stats.baseline || null;
    const has = (k) => isNum(c[k]) || (b && isNum(b[k]));
    if (!has("users")) return null;
    const rows = [["Users so far", (w) => count(w && w.users)]];
    if (has("users_with_client_errors")) rows.push(["Of them, got a 4xx", (w) => count(w && w.users_with_client_errors)]);
    return compareTable("Users so far (whole rollout, estimated; not this window)", rows, c, b, names);
  }

  function compareTable(caption, rows, c, b, names) {
    return table(caption, [{ label: "Measure" }, { label: `Canary (${names.canary})`, num: true }, { label: `Baseline (${names.baseline})`, num: true }],
      rows.map(([label, f]) => h("tr", null, h("th", { scope: "row", text: label }), h("td", { class: "num", text: f(c) }), h("td", { class: "num", text: b ? f(b) : "—" }))));
  }

  function checkValue(name, v) {
    if (!isNum(v)) return "—";
    if (name.includes("p99")) return millis(v);
    if (name.includes("rate")) return fraction(v);
    return trimNum(v, 4);
  }

  function checksTable(checks) {
    return table("Checks", [{ label: "Check" }, { label: "Canary", num: true }, { label: "Baseline", num: true }, { label: "Threshold", num: true }, { label: "Outcome" }],
      checks.map((c) => h("tr", null,
        h("th", { scope: "row", text: CHECK_NAMES[c.name] || c.name }),
        h("td", { class: "num", text: checkValue(c.name, c.canary) }),
        h("td", { class: "num", text: checkValue(c.name, c.baseline) }),
        h("td", { class: "num", text: checkValue(c.name, c.threshold) }),
        h("td", null, outcomeBadge(c.outcome)))));
  }

  function slotsContent(a, info) {
    const health = new Map();
    for (const m of a.metrics || []) for (const b of m.backends || []) health.set(b.addr, b);
    const rows = SLOTS.map((slot) => {
      const sv = info.slots.find((x) => x.slot === slot) || { backends: [] };
      const m = sv.metrics || null;
      const fromProxy = (a.metrics || []).find((x) => x.slot === slot);
      const addrs = (sv.backends && sv.backends.length ? sv.backends : (fromProxy ? fromProxy.backends.map((b) => b.addr) : [])).map(String);
      return h("tr", null,
        h("th", { scope: "row", class: "nowrap", text: slot }),
        h("td", { text: slotVersion(info, slot) || "—" }),
        h("td", { class: "role", text: slotRole(info, slot) }),
        h("td", { class: "num", text: pct(weightOf(info.weights, slot)) }),
        h("td", null, addrs.length ? h("ul", { class: "backends" }, addrs.map((addr) => h("li", null, addr, backendHealth(health.get(addr))))) : "none"),
        h("td", { class: "num", text: count(m && m.requests) }),
        h("td", { class: "num", text: fraction(m && m.error_rate) }),
        h("td", { class: "num", text: fraction(m && m.client_error_rate) }),
        h("td", { class: "num", text: millis(m && m.latency_p99_ms) }));
    });
    return table("Slots: counts since each release started", [
      { label: "Slot" }, { label: "Version" }, { label: "Role" }, { label: "Weight", num: true }, { label: "Backends" },
      { label: "Requests", num: true }, { label: "5xx rate", num: true }, { label: "4xx rate", num: true }, { label: "p99", num: true },
    ], rows);
  }

  function fleetContent(fleet) {
    if (fleet.error) return h("p", { class: "text-bad", text: `✗ The fleet could not be read: ${fleet.error}` });
    const proxies = Array.isArray(fleet.proxies) ? fleet.proxies : [];
    const seconds = (ms) => (isNum(ms) ? `${(ms / 1000).toFixed(1)} s ago` : "never");
    const rows = proxies.map((p) => h("tr", null,
      h("th", { scope: "row", class: "nowrap", text: p.id }),
      h("td", { class: "num", text: isNum(p.generation) ? String(p.generation) : "—" }),
      h("td", { class: "num", text: seconds(p.last_contact_ms) }),
      h("td", { class: "num", text: seconds(p.confirmed_ago_ms) }),
      h("td", null, p.lagging ? h("span", { class: "text-bad", text: `✗ ${p.problem || "lagging"}` }) : h("span", { class: "text-good", text: "✓ up to date" }))));
    return [
      h("p", { text: `Leader: ${fleet.leader || "none"} · route table generation ${isNum(fleet.generation) ? fleet.generation : "—"} · ${proxies.length} ${proxies.length === 1 ? "proxy" : "proxies"}` }),
      proxies.length ? table("Proxies of the fleet", [
        { label: "Proxy" }, { label: "Generation", num: true }, { label: "Last contact", num: true },
        { label: "Confirmed", num: true }, { label: "State" },
      ], rows) : h("p", { class: "empty-state", text: "No proxy is registered: nothing routes this app's traffic." }),
    ];
  }

  function backendHealth(b) {
    if (!b || typeof b.healthy !== "boolean") return null;
    if (b.ejected || !b.healthy) return h("span", { class: "text-bad", text: b.ejected ? " ✗ ejected" : " ✗ unhealthy" });
    return h("span", { class: "text-good", text: " ✓ healthy" });
  }

  // ---- charts

  function renderCharts() {
    if (!view || !view.charts || state.route.name !== "app") return;
    const a = state.app;
    if (!a) return;
    const info = appInfo(a);
    const fixed = Boolean(info) && !info.managed;
    const none = fixed || a.seriesState === "none";
    const msg = fixed ? "No rollouts for this app: it is routed by a fixed route table. The server charts only apps with rollouts; the Slots table below has this app's counts per slot."
      : none ? "No per-slot series for this app."
      : a.seriesState === "error" && !a.series ? `Could not load the metrics: ${a.seriesError}`
        : !a.series ? "Loading…" : "";
    view.chartsMsg.textContent = msg;
    view.chartsMsg.hidden = !msg;
    view.chartGrid.hidden = none || !a.series;
    if (view.chartGrid.hidden) return;
    for (const c of view.charts) drawChart(c, a.series, a.interval);
  }

  // 1, 2, 5 × 10^k: a step that gives about `n` gridlines up to `max`.
  function niceStep(max, n) {
    const raw = max / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
  }

  // A slot's samples, cut where its version changes: each run is one version's traffic, so that
  // nothing an old version served is put down to the new one. Runs of an empty slot that served
  // nothing are left out.
  function versionRuns(points, slot, get) {
    const runs = [];
    let run = null;
    for (const p of points) {
      const x = p.slots.find((y) => y.slot === slot);
      if (!x) continue;
      const version = x.version || null;
      if (!run || run.version !== version) runs.push((run = { slot, version, from: p.at, to: p.at, values: [], active: false }));
      run.to = p.at;
      run.active = run.active || x.requests > 0 || Boolean(version);
      run.values.push([p.at, get(x)]);
    }
    // `until`: when the next version (or an empty slot) took over; `first`: ran from the start.
    runs.forEach((r, i) => Object.assign(r, { first: i === 0, until: runs[i + 1] ? runs[i + 1].from : null }));
    return runs.filter((r) => r.active).map((r) => {
      const nums = r.values.map((v) => v[1]).filter(isNum);
      return Object.assign(r, {
        nums,
        avg: nums.length ? nums.reduce((x, y) => x + y, 0) / nums.length : null,
        max: nums.length ? Math.max(...nums) : null,
      });
    });
  }

  const versionName = (r) => r.version || "empty";
  // "v1 until 10:42:03", "v4 since 10:42:03", or just "v4" when it ran the whole window.
  const runSpan = (r) => [r.first ? null : `since ${clock(r.from)}`, r.until ? `until ${clock(r.until)}` : null].filter(Boolean).join(" ");
  const runLabel = (r) => `${r.slot} ${versionName(r)}${runSpan(r) ? ` (${runSpan(r)})` : ""}`;
  // The legend names every version a slot ran in the window: "green: v1 until 10:42:03, then v4".
  function slotLegend(runs) {
    const parts = runs.map((r, i) => {
      const follows = i > 0 && runs[i - 1].until === r.from; // no empty stretch between them
      const since = r.first || follows ? "" : ` since ${clock(r.from)}`;
      return `${follows && !r.until ? "then " : ""}${versionName(r)}${since}${r.until ? ` until ${clock(r.until)}` : ""}`;
    });
    return runs.length === 1 ? `${runs[0].slot} ${parts[0]}` : `${runs[0].slot}: ${parts.join(", ")}`;
  }

  function drawChart(c, points, interval) {
    const { def } = c;
    const width = Math.max(260, Math.round(c.box.clientWidth || 560));
    const height = 190;
    const m = { l: 56, r: 14, t: 16, b: 26 };
    const pw = width - m.l - m.r;
    const ph = height - m.t - m.b;
    const end = points.length ? points[points.length - 1].at : serverNow();
    const start = end - SERIES_SPAN_MS;

    // One series per slot that served anything or ran a version in the window, in runs by version.
    const series = SLOTS.map((slot) => versionRuns(points, slot, def.get)).filter((runs) => runs.length);
    const runs = series.flat();
    // Only the run still going has a "now".
    for (const r of runs) r.now = !r.until && r.to === end && r.nums.length ? r.nums[r.nums.length - 1] : null;

    const max = Math.max(def.floor, ...runs.map((r) => r.max).filter(isNum));
    const step = niceStep(max, 4);
    const top = Math.ceil(max / step - 1e-9) * step;
    const xOf = (t) => m.l + ((t - start) / SERIES_SPAN_MS) * pw;
    const yOf = (v) => m.t + ph - (v / top) * ph;
    const said = (r) => (!r.nums.length ? "no data"
      : `${r.now === null ? "" : `now ${def.fmt(r.now)}, `}average ${def.fmt(r.avg)}, maximum ${def.fmt(r.max)}`);
    const label = runs.length
      ? `${def.title} over the last 10 minutes. ${runs.map((r) => `${runLabel(r)}: ${said(r)}`).join("; ")}.`
      : `${def.title}: no data in the last 10 minutes.`;

    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": label, focusable: "false" });
    for (let v = 0; v <= top + step / 2; v += step) {
      const y = yOf(v);
      svg.append(
        s("line", { class: v === 0 ? "axis-line" : "grid", x1: m.l, x2: width - m.r, y1: y, y2: y }),
        s("text", { class: "tick", x: m.l - 6, y: y + 4, "text-anchor": "end", text: def.tick(v) }));
    }
    const every = width < 420 ? 5 : 2;
    for (let min = 0; min <= 10; min += every) {
      const x = xOf(end - min * 60000);
      svg.append(
        s("line", { class: "grid", x1: x, x2: x, y1: m.t, y2: m.t + ph }),
        s("text", { class: "tick", x, y: height - 6, "text-anchor": min === 0 ? "end" : min === 10 ? "start" : "middle", text: min === 0 ? "now" : `−${min} min` }));
    }
    if (!runs.some((r) => r.nums.length)) {
      svg.append(s("text", { class: "empty", x: m.l + pw / 2, y: m.t + ph / 2, "text-anchor": "middle", text: "no data yet" }));
    }
    // Where a slot's version changed: a mark, with the new version's name where it fits.
    let labelsEnd = -Infinity;
    for (const r of runs.filter((q) => !q.first && xOf(q.from) >= m.l).sort((p, q) => p.from - q.from)) {
      const x = xOf(r.from);
      svg.append(s("line", { class: `change slot-${r.slot}`, x1: x, x2: x, y1: m.t, y2: m.t + ph }));
      const name = `→ ${versionName(r)}`;
      const w = name.length * 6.5;
      const left = Math.min(x + 3, width - m.r - w);
      if (left < labelsEnd + 6) continue;
      labelsEnd = left + w;
      svg.append(s("text", { class: "tick change-label", x: left, y: m.t - 4, text: name }));
    }
    // Lines break where the version changes, a value is missing or samples stopped for a
    // while; a lone point, which a line cannot show, is a dot.
    const gap = Math.max(3 * interval, 3000);
    for (const r of runs) {
      const pieces = [];
      let piece = null;
      let prevAt = -Infinity;
      for (const [at, v] of r.values) {
        if (!isNum(v)) { piece = null; continue; }
        if (!piece || at - prevAt > gap) pieces.push((piece = []));
        piece.push(`${xOf(at).toFixed(1)},${yOf(v).toFixed(1)}`);
        prevAt = at;
      }
      const d = pieces.filter((q) => q.length > 1).map((q) => `M${q.join("L")}`).join("");
      if (d) svg.append(s("path", { class: `line slot-${r.slot}`, d }));
      for (const q of pieces.filter((x) => x.length === 1)) {
        const [cx, cy] = q[0].split(",");
        svg.append(s("circle", { class: `dotmark slot-${r.slot}`, cx, cy, r: 2.5 }));
      }
    }
    c.box.replaceChildren(svg);

    const legendKey = JSON.stringify(series.map((rs) => rs.map((r) => [r.slot, r.version, r.first ? 0 : r.from, r.until, r.nums.length > 0])));
    region(c.legend, legendKey, () => series.map((rs) => h("li", null,
      s("svg", { viewBox: "0 0 28 10", "aria-hidden": "true", focusable: "false" }, s("line", { class: `line slot-${rs[0].slot}`, x1: 1, x2: 27, y1: 5, y2: 5 })),
      `${slotLegend(rs)}${rs.some((r) => r.nums.length) ? "" : " (no data)"}`)));
    // The text alternative: a small table, one row per slot and version, redrawn at most every
    // 10 s so that a screen reader reading it is not interrupted every second.
    const altKey = `${legendKey}:${Math.floor(end / 10000)}`;
    region(c.alt, altKey, () => h("table", null,
      h("caption", { text: `${def.title}, last 10 minutes` }),
      h("thead", null, h("tr", null, ["Slot and version", "Now", "Average", "Maximum"].map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", null, runs.map((r) => h("tr", null,
        h("th", { scope: "row", text: runLabel(r) }),
        h("td", { text: r.now !== null ? def.fmt(r.now) : r.until ? "no longer running" : "no data" }),
        [r.avg, r.max].map((v) => h("td", { text: isNum(v) ? def.fmt(v) : "no data" })))))));
  }

  // ---- history

  function buildHistory(route) {
    const name = route.app;
    const content = h("div");
    const root = h("div", null,
      h("h1", { tabindex: "-1", text: `History of ${name}` }),
      h("p", null, h("a", { href: appHref(name), text: `${name}: live view` })),
      card("Rollouts, newest first", content));
    return {
      root,
      render() {
        const hist = state.history && state.history.app === name ? state.history : null;
        // Keyed on what the table shows, not on the answer: a canary's window moving on must not
        // rebuild the table (and lose focus and scroll) when no cell changed.
        const rows = hist && hist.list ? hist.list.map(historyCells) : null;
        region(content, JSON.stringify(hist && [hist.code, hist.error, rows]), () => {
          if (!hist) return empty("Loading…");
          if (hist.code === 409) return empty(`No rollouts for ${name}: it is routed by a fixed route table.`);
          if (hist.code === 404) return [empty(`There is no app named “${name}”.`), h("p", null, h("a", { href: "#/", text: "Back to the overview" }))];
          if (!rows) return h("p", { class: "text-bad", text: `✗ Could not load the history: ${hist.error}` });
          if (!rows.length) return empty(`No rollouts of ${name} yet.`);
          return table(`Rollouts of ${name}`, [
            { label: "#", num: true }, { label: "Version" }, { label: "From" }, { label: "Started" },
            { label: "Took", num: true }, { label: "Outcome" }, { label: "Canary requests", num: true }, { label: "Failed", num: true },
            { label: "Reason" },
          ], rows.map(historyRow));
        });
      },
    };
  }

  // A past rollout as the history table shows it. "Took" runs from the deploy to the decision:
  // the end of a rollback, abort or failure; for a promoted release, its promotion.
  function historyCells(r) {
    const p = phaseName(r);
    const ph = r.phase || {};
    const e = r.exposure || {};
    let end = null;
    if (["rolled_back", "aborted", "failed"].includes(p)) end = ph.at;
    else if (p === "succeeded" || p === "promoted") end = isNum(e.decided_at) ? e.decided_at : isNum(ph.at) ? ph.at : ph.since;
    const failed = (isNum(e.canary_server_errors) ? e.canary_server_errors : 0) + (isNum(e.canary_client_errors) ? e.canary_client_errors : 0);
    return {
      id: r.id, version: r.release ? r.release.version : "?", from: r.previous_version || "nothing",
      started: r.started_at, phase: p,
      took: isNum(end) && isNum(r.started_at) ? duration(end - r.started_at) : isActive(r) ? "running" : "—",
      requests: isNum(e.canary_requests) ? count(e.canary_requests) : "—",
      failed: isNum(e.canary_requests) ? count(failed) : "—",
      reason: ph.reason ? cleanText(ph.reason) : "—",
    };
  }

  function historyRow(c) {
    return h("tr", null,
      h("td", { class: "num", text: String(c.id) }),
      h("th", { scope: "row", text: c.version }),
      h("td", { text: c.from }),
      h("td", { class: "nowrap" }, timeEl(c.started, isNum(c.started) ? localTime(c.started) : "—")),
      h("td", { class: "num", text: c.took }),
      h("td", null, phaseBadge(c.phase)),
      h("td", { class: "num", text: c.requests }),
      h("td", { class: "num", text: c.failed }),
      h("td", { class: "message", text: c.reason }));
  }

  // ---- flags

  function buildFlags() {
    const [flagsBox, staleBox, rampsBox] = [h("div"), h("div"), h("div")];
    const staleCard = card("Stale flags", staleBox);
    const rampsCard = card("Guarded ramps", rampsBox);
    const root = h("div", null, h("h1", { tabindex: "-1", text: "Feature flags" }), card("Flags", flagsBox), staleCard, rampsCard);
    return {
      root,
      render() {
        const f = state.flags;
        const unconfigured = (code) => code === 404 || code === 409;
        region(flagsBox, JSON.stringify(f && [f.flags, f.flagsCode, f.flagsError]), () => {
          if (!f) return empty("Loading…");
          if (unconfigured(f.flagsCode)) return empty("No feature flags configured.");
          if (!f.flags) return h("p", { class: "text-bad", text: `✗ Could not load the flags: ${f.flagsError}` });
          if (!f.flags.flags.length) return empty("No flags yet.");
          return table(`Flags (revision ${f.flags.revision})`, [
            { label: "Key" }, { label: "Description" }, { label: "Type" }, { label: "State" }, { label: "Default variant" },
            { label: "Rules", num: true }, { label: "Owner" }, { label: "Expires" },
          ], f.flags.flags.map(flagRow));
        });
        // Without a flag service, say so once: the ramps card goes too.
        rampsCard.hidden = Boolean(f) && unconfigured(f.flagsCode);
        const stale = f && f.flags && Array.isArray(f.flags.stale) ? f.flags.stale : [];
        staleCard.hidden = !stale.length;
        // The message says why in full ("expired on 2020-01-01 (30 days ago): ..."): the kind
        // alone only when there is no message.
        region(staleBox, JSON.stringify(stale), () => h("ul", { class: "stale" }, stale.map((x) =>
          h("li", null, h("strong", null, h("code", { text: x.key })), ` (${x.owner || "no owner"}): `,
            h("span", { class: "text-warn" }, h("span", { "aria-hidden": "true", text: "⚠ " }), cleanText(x.message || x.why || "stale"))))));
        region(rampsBox, JSON.stringify(f && [f.ramps, f.rampsCode, f.rampsError, f.flagsCode]), () => {
          if (!f) return empty("Loading…");
          if (unconfigured(f.rampsCode)) return empty("No feature flags configured.");
          if (!f.ramps) return h("p", { class: "text-bad", text: `✗ Could not load the ramps: ${f.rampsError}` });
          if (!f.ramps.length) return empty("No ramps yet: `cutover flag ramp KEY` starts one.");
          return table("Ramps", [
            { label: "Flag" }, { label: "Phase" }, { label: "Now", num: true }, { label: "Next step" }, { label: "Last check" },
          ], f.ramps.map(rampRow));
        });
      },
    };
  }

  function flagRow(f) {
    const expires = f.expires ? f.expires : f.permanent ? `never (permanent: ${cleanText(f.permanent)})` : "—";
    return h("tr", null,
      h("th", { scope: "row" }, h("code", { text: f.key })),
      h("td", { class: "message", text: f.description ? cleanText(f.description) : "—" }),
      h("td", { text: f.type || "—" }),
      h("td", null, f.enabled === false ? badge("✗", "killed", "bad") : badge("✓", "on", "good")),
      h("td", { text: f.default_variant || "—" }),
      h("td", { class: "num", text: String(Array.isArray(f.rules) ? f.rules.length : 0) }),
      h("td", { text: f.owner || "—" }),
      h("td", { class: f.expires ? "nowrap" : null, text: expires }));
  }

  function rampRow(r) {
    const phase = (r.phase && r.phase.phase) || "unknown";
    const [symbol, tone] = RAMP_PHASES[phase] || ["•", "neutral"];
    const plan = r.plan || {};
    const steps = Array.isArray(plan.steps_bp) ? plan.steps_bp : [];
    const step = r.phase && isNum(r.phase.step) ? r.phase.step : null;
    let next = "—";
    if (step !== null) next = step + 1 < steps.length ? `${pct(steps[step + 1])} (step ${step + 2} of ${steps.length})` : "last step: completes next";
    const decisions = Array.isArray(r.decisions) ? r.decisions : [];
    const last = decisions[decisions.length - 1];
    return h("tr", null,
      h("th", { scope: "row" }, h("code", { text: r.flag })),
      h("td", null, badge(symbol, phase, tone), r.phase && r.phase.reason ? h("div", { class: "muted", text: r.phase.reason }) : null),
      h("td", { class: "num", text: isNum(r.percent) ? `${trimNum(r.percent, 2)} %` : "—" }),
      h("td", { text: next }),
      h("td", null, last
        ? [OUTCOMES[last.kind] ? outcomeBadge(last.kind) : h("strong", { text: last.kind }), " ", last.message || "", " ", h("span", { class: "muted" }, "(", agoEl(last.at), ")")]
        : h("span", { class: "muted", text: "none yet" })));
  }

  // ---- not found

  function buildNotFound(route) {
    return {
      root: h("div", { class: "notfound" },
        h("h1", { tabindex: "-1", text: "Not found" }),
        h("p", { text: `There is no page at “#${route.path}”.` }),
        h("p", null, h("a", { href: "#/", text: "Go to the overview" }))),
      render() {},
    };
  }

  // ------------------------------------------------------------------------------ commands

  function confirmText(cmd, name, r) {
    const nu = r.release ? r.release.version : "the new version";
    const old = r.previous_version;
    const steps = policySteps(r.policy);
    const ph = r.phase || {};
    const at = isNum(ph.step) && ph.step < steps.length ? `step ${ph.step + 1} of ${steps.length}` : null;
    const w = at ? pct(steps[ph.step].weight_bp) : null;
    switch (cmd) {
      case "promote":
        return [`Promote ${nu}?`, `Promote ${name}: all traffic moves to ${nu} now, skipping the steps left.${old ? ` ${old} stays warm for the rollback window, so it can still be rolled back.` : ""}`, "Promote"];
      case "pause":
        return [`Pause ${name}?`, `Pause ${name}: the rollout stops${at ? ` at ${at}, with ${w} of users on ${nu},` : ""} until someone resumes, promotes or rolls it back.`, "Pause"];
      case "resume": {
        const following = steps[ph.step + 1];
        const next = !ph.step_done ? (at ? ` at ${at}` : "")
          : following && following.weight_bp < 10000 ? ` with step ${ph.step + 2} of ${steps.length}` : " to its promotion";
        return [`Resume ${name}?`, `Resume ${name}: the rollout of ${nu} goes on${next}, judged again window by window.`, "Resume"];
      }
      case "abort":
        return [`Abort ${name}?`, old ? `Abort ${name}: all traffic returns to ${old} and ${nu} stops. The rollout is recorded as aborted.` : `Abort ${name}: ${nu} stops; nothing was live before it.`, "Abort"];
      default:
        return [`Roll back ${name}?`, old ? `Roll back ${name}: all traffic returns to ${old} and ${nu} stops.` : `Roll back ${name}: ${nu} stops; nothing was live before it.`, "Roll back"];
    }
  }

  // The confirmation dialog; resolves true only for the confirm button. `cancel` closes it from
  // outside (the rollout changed under it) as if the person had cancelled.
  function confirmDialog(title, text, okLabel, danger) {
    const dlg = $("confirm-dialog");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel;
    $("confirm-ok").className = danger ? "danger" : "primary";
    if (typeof dlg.showModal !== "function") return { answer: Promise.resolve(window.confirm(text)), cancel() {} };
    let finish;
    const answer = new Promise((resolve) => {
      const listeners = new AbortController(); // removes all three at once
      finish = (yes) => {
        listeners.abort();
        if (dlg.open) dlg.close();
        resolve(yes);
      };
      const opts = { signal: listeners.signal };
      $("confirm-ok").addEventListener("click", () => finish(true), opts);
      $("confirm-cancel").addEventListener("click", () => finish(false), opts);
      dlg.addEventListener("close", () => finish(false), opts); // Escape closes it too
      dlg.showModal();
    });
    return { answer, cancel: () => finish(false) };
  }

  // What a confirmation is about: the rollout, its version, its phase and step. A change of any
  // of them while the dialog is open makes what it says untrue.
  function rolloutSnapshot(r) {
    if (!r) return "none";
    const ph = r.phase || {};
    return JSON.stringify([r.id, r.release ? r.release.version : null, phaseName(r), isNum(ph.step) ? ph.step : null]);
  }

  function currentSnapshot(name) {
    const a = state.app;
    const info = a && a.name === name && state.route.app === name ? appInfo(a) : null;
    return info ? rolloutSnapshot(info.rollout) : null;
  }

  const CHANGED_WHILE_CONFIRMING = "The rollout changed while you were confirming: nothing was sent.";

  // Called after every redraw: an open confirmation whose rollout changed is cancelled.
  function checkConfirmation() {
    const c = state.confirming;
    if (!c || currentSnapshot(c.app) === c.snapshot) return;
    state.confirming = null;
    c.changed = true;
    c.cancel();
    // The button that opened it may have been replaced meanwhile: keep keyboard users nearby.
    const lost = !document.activeElement || document.activeElement === document.body || $("confirm-dialog").contains(document.activeElement);
    if (lost && view && view.controlsCard) view.controlsCard.querySelector("h2").focus();
    const why = state.route.app === c.app ? CHANGED_WHILE_CONFIRMING : `You left the page of ${c.app} while confirming: nothing was sent.`;
    showNotice(why);
    announce(why);
  }

  async function runCommand(name, cmd) {
    const a = state.app;
    const info = a && a.name === name ? appInfo(a) : null;
    if (!info || !info.rollout || state.confirming) return;
    const r = info.rollout;
    const [title, text, okLabel] = confirmText(cmd, name, r);
    const dialog = confirmDialog(title, text, okLabel, DANGEROUS.has(cmd));
    const confirming = { app: name, snapshot: rolloutSnapshot(r), cancel: dialog.cancel, changed: false };
    state.confirming = confirming;
    const yes = await dialog.answer;
    if (state.confirming === confirming) state.confirming = null;
    if (!yes || confirming.changed) return;
    // A refresh may have landed in the same moment as the click.
    if (currentSnapshot(name) !== confirming.snapshot) {
      showNotice(CHANGED_WHILE_CONFIRMING);
      announce(CHANGED_WHILE_CONFIRMING);
      return;
    }
    const t = token();
    if (!t) {
      showError("Enter the admin token first: the dashboard is read-only.");
      renderMode();
      return;
    }
    state.commandBusy = true;
    renderView();
    // The rollout the dialog was about: the server refuses (409) if another one is current now.
    const res = await api(appPath(name, `/${cmd}?rollout=${enc(r.id)}`), { method: "POST", token: t });
    state.commandBusy = false;
    state.focusControls = true;
    if (res.ok) {
      clearError();
      announce(`${name}: ${VERBS[cmd]} accepted`);
      // The answer is the app's new status: show it at once, then fetch the rest.
      if (res.body && res.body.app === name && res.body.weights && state.app && state.app.name === name) state.app.status = res.body;
      renderView();
      requestRefresh({ app: name });
    } else if (res.status === 401) {
      dropToken();
      renderMode();
      showError(`The server refused the admin token (${res.error}): it was forgotten and the dashboard is read-only again. Enter a valid token to ${VERBS[cmd]} ${name}.`);
    } else {
      renderView();
      requestRefresh({ app: name });
      const outcome = res.status === 409 ? " Nothing was changed."
        : res.status === 0 ? " It may still have been carried out: the page shows the state as the server has it." : "";
      showError(`Could not ${VERBS[cmd]} ${name} (rollout #${r.id}): ${String(res.error).replace(/\.$/, "")}.${outcome}`);
    }
  }

  // ------------------------------------------------------------------------------ start

  function start() {
    $("token-form").addEventListener("submit", onTokenSubmit);
    $("token-forget").addEventListener("click", onTokenForget);
    $("error-dismiss").addEventListener("click", () => { clearError(); $("main").focus(); });
    // The skip link targets #main, which the hash router would take for a route.
    $("skip-link").addEventListener("click", (e) => { e.preventDefault(); $("main").focus(); });
    window.addEventListener("hashchange", onRouteChange);
    document.addEventListener("visibilitychange", onVisibilityChange);
    // The backstop: whatever the stream missed shows within BACKSTOP_MS. A hidden tab reads
    // nothing; it reads everything when it is shown again.
    setInterval(() => {
      if (tabHidden()) return;
      requestRefresh({ view: true });
      refreshAgo();
    }, BACKSTOP_MS);
    setInterval(watchdog, 2000);

    renderMode();
    onRouteChange();
    recheckStoredToken(false);
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
