// kvreplica operator console.
//
// One file, no framework, no build step: the page is served by the admin listener under a strict CSP
// (no inline script, no eval), so everything happens here, through the admin API with the bearer token
// kept in sessionStorage. Keys and values come from the database and are attacker-controlled: every
// piece of data reaches the DOM through textContent or setAttribute, never through innerHTML.
//
// Sections: helpers, API, session (login/logout), status + polling, timeline, find, commits, selection,
// paged tables, diff, browse, act (checkout), restore plan, start-up.
"use strict";

(function () {
  // ---------------------------------------------------------------- helpers

  const TOKEN_KEY = "kvreplica.adminToken";
  // The admin API sits beside the console's folder: "/" when the page is /console/, "/kv-admin/" behind a
  // reverse proxy that serves it as /kv-admin/console/. API paths below are written from that root.
  const API_ROOT = location.pathname.replace(/console\/[^/]*$/, "");
  const POLL_MS = 2000;
  const PAGE = 100; // rows per diff/browse page: keeps the DOM small on big diffs
  const MAX_ROWS = 2000; // "more" stops here: past it, a prefix narrows better than scrolling
  const COMMITS_AROUND = 20; // commits before and after the anchor in the commits list
  const COMMITS_MAX = 100; // the server's limit of `count`
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  /** Creates an element; `text` goes in as textContent (never parsed as HTML). */
  function el(tag, opts, ...children) {
    const node = document.createElement(tag);
    setProps(node, opts);
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function svgEl(tag, opts) {
    const node = document.createElementNS(SVG_NS, tag);
    setProps(node, opts);
    return node;
  }

  function setProps(node, opts) {
    if (!opts) return;
    for (const [name, value] of Object.entries(opts)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "cls") node.setAttribute("class", value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
  }

  function clear(node) {
    node.replaceChildren();
  }

  function setText(id, text) {
    $(id).textContent = text;
  }

  /** RFC 3339 UTC with milliseconds, the form the API's `time` strings have. */
  function isoTime(ms) {
    return new Date(ms).toISOString();
  }

  // The server's clock, learned from /status, so that "3 min ago" does not depend on the
  // operator's laptop clock being right.
  let clockOffsetMs = 0;
  const serverNow = () => Date.now() + clockOffsetMs;

  /** "3 min ago", "in 2 s": a hint beside absolute times, which stay the reference. */
  function ago(ms) {
    const delta = serverNow() - ms;
    const future = delta < 0;
    const text = duration(Math.abs(delta));
    return future ? "in " + text : text + " ago";
  }

  /** A span of time in the largest unit that keeps it readable. */
  function duration(ms) {
    const s = ms / 1000;
    if (ms < 1000) return Math.round(ms) + " ms";
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + " s";
    if (s < 3600) return Math.round(s / 60) + " min";
    if (s < 86400 * 2) return (s / 3600).toFixed(s < 36000 ? 1 : 0) + " h";
    return Math.round(s / 86400) + " days";
  }

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  function timeWithHint(time, ms) {
    return ms === null || ms === undefined ? time : time + " (" + ago(ms) + ")";
  }

  const isVersionstamp = (text) => /^[0-9a-fA-F]{20}$/.test(text);

  /** A value cell's content: `code.value` with exactly JSON.stringify(value), plus encoding/expiry. */
  function valueCell(cls, entry) {
    const td = el("td", { cls });
    if (!entry) {
      td.append(el("span", { cls: "absent", text: "(absent)" }));
      return td;
    }
    td.append(el("code", { cls: "value", text: JSON.stringify(entry.value) }));
    const meta = [];
    if (entry.encoding && entry.encoding !== "v8") meta.push(entry.encoding);
    if (entry.expires_at_ms !== null && entry.expires_at_ms !== undefined) {
      meta.push("expires " + isoTime(entry.expires_at_ms));
    }
    if (meta.length) td.append(el("span", { cls: "meta", text: meta.join(" · ") }));
    return td;
  }

  function keyCell(key) {
    return el("td", { cls: "key" }, el("code", { text: JSON.stringify(key) }));
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** Thrown after a 401 has sent the operator back to the login form: callers just stop. */
  class SessionEnded extends Error {}

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  /**
   * Calls the admin API with the stored token. Resolves to the JSON body; rejects with ApiError
   * carrying the server's `{"error": …}` text. A 401 ends the session (token rotated or wrong).
   */
  async function api(path, { method = "GET", body, authToken } = {}) {
    const headers = { Authorization: "Bearer " + (authToken || token() || "") };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(API_ROOT + path.replace(/^\//, ""), init);
    } catch (err) {
      throw new ApiError(0, "cannot reach the replica's admin listener (" + err.message + ")");
    }
    const data = await readJson(response);
    if (response.ok) return data;
    if (response.status === 401 && !authToken) {
      endSession("Logged out: session expired or token rotated. Log in again.");
      throw new SessionEnded("401");
    }
    const text = data && typeof data.error === "string" ? data.error : response.status + " " + response.statusText;
    throw new ApiError(response.status, text);
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch (_) {
      return null;
    }
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== "") q.set(name, String(value));
    }
    const s = q.toString();
    return s ? "?" + s : "";
  }

  /** Shows an error in its panel's element; SessionEnded is already handled by the login form. */
  function showError(id, err) {
    if (err instanceof SessionEnded) return;
    const node = $(id);
    node.textContent = err instanceof ApiError ? err.message : "Error: " + err.message;
  }

  function clearError(id) {
    $(id).textContent = "";
  }

  /**
   * Per-panel request counters: when the operator clicks faster than the server answers, only the
   * answer to the newest request is drawn.
   */
  function latestOnly() {
    let seq = 0;
    return () => {
      const mine = ++seq;
      return () => mine === seq;
    };
  }

  // ---------------------------------------------------------------- session

  function showLogin(message) {
    $("app").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    setText("login-error", message || "");
    setText("live", "");
    $("login-token").value = "";
    $("login-token").focus();
  }

  function showApp() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = false;
    setText("login-error", "");
  }

  async function onLogin(event) {
    event.preventDefault();
    const candidate = $("login-token").value.trim();
    if (!candidate) {
      setText("login-error", "Enter the admin token.");
      return;
    }
    $("login-submit").disabled = true;
    setText("login-error", "Checking…");
    try {
      await api("/status", { authToken: candidate });
      sessionStorage.setItem(TOKEN_KEY, candidate);
      $("login-token").value = "";
      startApp();
    } catch (err) {
      setText("login-error", err.status === 401 ? "Login failed: wrong token." : err.message);
    } finally {
      $("login-submit").disabled = false;
    }
  }

  function endSession(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    stopPolling();
    resetState();
    showLogin(message);
  }

  /** The first poll comes first: the lists below use the position it learns (the initial point). */
  async function startApp() {
    showApp();
    resetState();
    await startPolling();
    if (!token()) return;
    loadTimeline();
    loadCommits(null);
  }

  // ---------------------------------------------------------------- status + polling

  const status = {
    timer: null,
    previous: null, // the previous /status reading, for objects/s
    current: null, // the latest /pitr/current answer
    newest: null, // newest point's versionstamp at the last poll
    visible: null, // visible versionstamp at the last poll
    seen: false, // whether a poll answered since login (the first one only records the position)
    polls: 0,
    chain: 0, // the polling loop's generation (see stopPolling)
  };

  function startPolling() {
    stopPolling();
    return poll(status.chain);
  }

  /** Also ends a poll still in flight: it belongs to an older chain and schedules nothing. */
  function stopPolling() {
    clearTimeout(status.timer);
    status.timer = null;
    status.chain += 1;
  }

  /** One refresh of status and position; schedules the next (no overlap on a slow server). */
  async function poll(chain) {
    status.timer = null;
    try {
      await refreshStatus();
    } catch (err) {
      if (err instanceof SessionEnded) return;
      // Keep polling: the replica may be restarting. Say so where the operator looks.
      showError("status-error", err);
      setText("live", "Update failed at " + isoTime(Date.now()).slice(11, 19) + " UTC; retrying every 2 s");
    }
    if (chain === status.chain && token()) status.timer = setTimeout(poll, POLL_MS, chain);
  }

  async function refreshStatus() {
    const st = await api("/status");
    const cur = currentMayHaveMoved(st) ? await currentOrNull() : status.current;
    status.polls += 1;
    clockOffsetMs = st.now_ms - Date.now();
    renderStatus(st, cur);
    setText("live", "Live: updated " + isoTime(st.now_ms).slice(11, 19) + " UTC, every 2 s");
    clearError("status-error");
    noticeMoves(cur);
  }

  /**
   * /status is cheap; /pitr/current counts the points, which costs on a long history. Ask for it when
   * /status says what readers see or the newest commit moved, and every 30 s for the rest.
   */
  function currentMayHaveMoved(st) {
    const cur = status.current;
    const prev = status.previous;
    return !cur || !prev || st.visible === undefined || st.visible !== prev.visible ||
      st.latest_commit_ms !== prev.latest_commit_ms || st.mode !== cur.mode || status.polls % 15 === 0;
  }

  /** /pitr/current, or null while the initial snapshot loads (409). */
  async function currentOrNull() {
    try {
      return await api("/pitr/current");
    } catch (err) {
      if (err instanceof ApiError && err.status === 409) return null;
      throw err;
    }
  }

  function renderStatus(st, cur) {
    setText("status-ready", st.ready ? "ready" : (st.reason || "not ready") + loadingText(st));
    $("status-ready").className = st.ready ? "ok" : "warn";
    setText("status-mode", cur ? cur.mode : st.mode || "…");
    $("status-mode").className = cur && cur.mode === "pinned" ? "warn" : "";
    setText("status-visible", cur ? cur.versionstamp : "(initial snapshot loading)");
    setText("status-latest", cur && cur.latest ? cur.latest.versionstamp : "…");
    setText("status-behind", cur ? behindText(cur) : "…");
    setText("status-lag", lagText(syncLag(st, cur)));
    setText("status-source", st.source || "…");
    setText("status-rate", rateText(st));
    setText("status-last-poll", st.last_successful_poll
      ? timeWithHint(st.last_successful_poll, Date.parse(st.last_successful_poll)) : "never");
    setText("status-last-error", st.last_error || "none");
    $("status-last-error").className = st.last_error ? "warn" : "";
    status.previous = st;
    status.current = cur;
    const lag = syncLag(st, cur);
    $("timeline-follow").textContent = cur ? cur.mode + (lag === null ? "" : ", replication lag " + lagText(lag)) : "";
  }

  /**
   * Seconds from the newest commit fetched to now: /status's figure once the sync applied something
   * since the start, else from the newest commit's time, else /pitr/current's (maybe a poll old).
   */
  function syncLag(st, cur) {
    if (st.sync_lag_seconds !== null && st.sync_lag_seconds !== undefined) return st.sync_lag_seconds;
    if (st.latest_commit_ms) return Math.max(0, (st.now_ms - st.latest_commit_ms) / 1000);
    return cur ? cur.sync_lag_seconds : null;
  }

  /** Progress of the initial snapshot, while it loads. */
  function loadingText(st) {
    const r = st.snapshot_ranges;
    return !st.initial_complete && r && r.total ? " (snapshot ranges " + r.loaded + " of " + r.total + ")" : "";
  }

  /** "0.8 s" up to a minute; beyond, the larger unit (an old backup lags by days). */
  function lagText(seconds) {
    if (seconds === null || seconds === undefined) return "n/a";
    return seconds < 60 ? seconds.toFixed(1) + " s" : duration(seconds * 1000);
  }

  function behindText(cur) {
    if (cur.mode === "following" && !cur.points_behind) return "0 commits (following)";
    const secs = cur.behind_latest_seconds;
    return plural(cur.points_behind, "commit") + (secs ? ", " + duration(secs * 1000) : "");
  }

  /** objects/s between this reading and the previous one (the server only gives counters). */
  function rateText(st) {
    const prev = status.previous;
    const applied = st.counters.objects_applied;
    if (!prev || st.now_ms <= prev.now_ms) return applied + " total";
    const rate = (applied - prev.counters.objects_applied) / ((st.now_ms - prev.now_ms) / 1000);
    return rate.toFixed(1) + " objects/s (" + applied + " total)";
  }

  /** Redraws what depends on the position when a sync or another operator moved it. */
  function noticeMoves(cur) {
    const newest = cur && cur.latest ? cur.latest.versionstamp : null;
    const visible = cur ? cur.versionstamp : null;
    const moved = newest !== status.newest || visible !== status.visible;
    const first = !status.seen;
    status.seen = true;
    status.newest = newest;
    status.visible = visible;
    if (moved && !first) {
      loadTimeline();
      loadCommits(commitsView.around, { keepScroll: true, count: commitsView.count });
    }
    updateActTargets();
  }

  // ---------------------------------------------------------------- timeline

  const PLOT_H = 150; // bars area height in px
  const AXIS_H = 22; // time labels below
  const TOP_PAD = 14; // room for marker labels
  const MIN_SPAN_MS = 20; // deepest zoom: a few ms (bucket_ms bottoms out at 1)
  const ZOOM = 4;

  const timeline = {
    range: null, // {start, end} in ms while zoomed; null = the whole history
    data: null, // the last /pitr/timeline answer
    cursor: -1, // bucket index under keyboard focus
    selected: null, // {start, end} of the selected interval
    drag: null, // {x0, x1} while dragging across the plot
    suppressClick: false,
    width: 0,
  };
  const timelineTurn = latestOnly();

  function plotWidth() {
    return Math.max(200, Math.floor($("timeline").getBoundingClientRect().width));
  }

  /** Bars of ~2 px or more: as many buckets as the plot can show, within the server's 2000. */
  function bucketCount(width) {
    return Math.max(10, Math.min(2000, Math.floor(width / 2)));
  }

  async function loadTimeline() {
    const mine = timelineTurn();
    const width = plotWidth();
    const params = { buckets: bucketCount(width) };
    if (timeline.range) {
      params.start = Math.floor(timeline.range.start);
      params.end = Math.ceil(timeline.range.end);
    }
    try {
      const data = await api("/pitr/timeline" + query(params));
      if (!mine()) return;
      timeline.data = data;
      if (timeline.cursor >= data.counts.length) timeline.cursor = -1;
      clearError("timeline-error");
      drawTimeline();
    } catch (err) {
      if (mine()) showError("timeline-error", err);
    }
  }

  /** Whole history as [start, end): oldest point's time to the newest's + 1 ms. */
  function wholeRange() {
    const d = timeline.data;
    if (!d || !d.oldest || !d.newest) return null;
    return { start: d.oldest.timestamp_ms, end: d.newest.timestamp_ms + 1 };
  }

  function scaleX(ms) {
    const d = timeline.data;
    return ((ms - d.start_ms) / (d.end_ms - d.start_ms)) * timeline.width;
  }

  function msAtX(x) {
    const d = timeline.data;
    return d.start_ms + (x / timeline.width) * (d.end_ms - d.start_ms);
  }

  function bucketAt(ms) {
    const d = timeline.data;
    return Math.floor((ms - d.start_ms) / d.bucket_ms);
  }

  function bucketRange(i) {
    const d = timeline.data;
    const start = d.start_ms + i * d.bucket_ms;
    return { start, end: Math.min(start + d.bucket_ms, d.end_ms) };
  }

  function drawTimeline() {
    const svg = $("timeline");
    const d = timeline.data;
    clear(svg);
    if (!d) return;
    timeline.width = plotWidth();
    const height = TOP_PAD + PLOT_H + AXIS_H;
    svg.setAttribute("viewBox", "0 0 " + timeline.width + " " + height);
    svg.setAttribute("height", String(height));
    svg.append(svgEl("line", { cls: "baseline", x1: 0, x2: timeline.width, y1: TOP_PAD + PLOT_H, y2: TOP_PAD + PLOT_H }));
    if (!d.oldest) {
      svg.append(svgEl("text", { cls: "empty", x: timeline.width / 2, y: TOP_PAD + PLOT_H / 2, text: "No commits yet" }));
    } else {
      drawBars(svg);
      drawAxis(svg);
      drawMarkers(svg);
      drawCursor(svg);
      drawDrag(svg);
    }
    describeTimeline();
  }

  /** One rect per non-empty bucket: an empty bucket costs no DOM. */
  function drawBars(svg) {
    const d = timeline.data;
    const max = Math.max(1, ...d.counts);
    const group = svgEl("g", { cls: "bars" });
    // At least 2 px, so that a lone commit in a long range can still be seen and clicked.
    const barW = Math.max(2, scaleX(d.start_ms + d.bucket_ms) - scaleX(d.start_ms) - (d.counts.length > 300 ? 0 : 1));
    for (let i = 0; i < d.counts.length; i++) {
      const count = d.counts[i];
      if (!count) continue;
      const { start, end } = bucketRange(i);
      const h = Math.max(2, (count / max) * PLOT_H);
      const rect = svgEl("rect", {
        cls: "bar" + (isSelectedBucket(start, end) ? " selected" : ""),
        x: scaleX(start).toFixed(2), y: (TOP_PAD + PLOT_H - h).toFixed(2),
        width: barW.toFixed(2), height: h.toFixed(2),
        "data-start-ms": start, "data-end-ms": end, "data-count": count, "data-index": i,
      });
      rect.append(svgEl("title", { text: bucketText(i) }));
      group.append(rect);
    }
    svg.append(group);
    svg.append(svgEl("text", { cls: "scale", x: 2, y: TOP_PAD - 3, text: "max " + plural(max, "commit") + " per bar" }));
  }

  function isSelectedBucket(start, end) {
    const s = timeline.selected;
    return !!s && s.start < end && start < s.end;
  }

  function bucketText(i) {
    const { start, end } = bucketRange(i);
    const count = timeline.data.counts[i];
    const span = end - start <= 1 ? isoTime(start) : isoTime(start) + " – " + isoTime(end);
    return span + ": " + plural(count, "commit");
  }

  /** Time labels at the ends and a few between, thinned for narrow plots. */
  function drawAxis(svg) {
    const d = timeline.data;
    const n = Math.max(1, Math.min(4, Math.floor(timeline.width / 260)));
    const y = TOP_PAD + PLOT_H + 15;
    for (let k = 0; k <= n; k++) {
      const ms = d.start_ms + ((d.end_ms - d.start_ms) * k) / n;
      const anchor = k === 0 ? "start" : k === n ? "end" : "middle";
      svg.append(svgEl("line", { cls: "tick", x1: scaleX(ms), x2: scaleX(ms), y1: TOP_PAD + PLOT_H, y2: TOP_PAD + PLOT_H + 4 }));
      svg.append(svgEl("text", { cls: "axis", x: scaleX(ms), y, "text-anchor": anchor, text: axisLabel(ms, d.end_ms - d.start_ms) }));
    }
  }

  /** Shorter labels when the whole range is within a day: the range line gives the date. */
  function axisLabel(ms, span) {
    const iso = isoTime(ms);
    if (span < 60 * 1000) return iso.slice(11, 23);
    if (span < 86400 * 1000) return iso.slice(11, 19);
    return iso.slice(0, 16).replace("T", " ");
  }

  function drawMarkers(svg) {
    const d = timeline.data;
    const visibleMs = d.visible ? d.visible.timestamp_ms : null;
    const newestMs = d.newest.timestamp_ms;
    // Following, the two markers coincide: one label says both rather than two overprinted ones.
    const together = visibleMs !== null && Math.abs(scaleX(visibleMs) - scaleX(newestMs)) < 90;
    marker(svg, "marker-visible", visibleMs, together ? "" : "visible", "start");
    marker(svg, "marker-newest", newestMs, together ? "newest = visible" : "newest", "end");
    const sel = selection.newer;
    if (sel && sel.timestamp_ms !== null) marker(svg, "marker-selected", sel.timestamp_ms, "", "start");
  }

  /** A vertical line at `ms` when it falls within the shown range. */
  function marker(svg, id, ms, label, side) {
    const d = timeline.data;
    if (ms === null || ms === undefined || ms < d.start_ms || ms >= d.end_ms) return;
    const x = Math.min(Math.max(scaleX(ms), 1), timeline.width - 1);
    svg.append(svgEl("line", { id, cls: "marker " + id, x1: x, x2: x, y1: TOP_PAD - 2, y2: TOP_PAD + PLOT_H }));
    if (label) {
      // Labels sit beside the line, on the side with room; "visible" and "newest" often coincide,
      // so one goes left and one right.
      const left = side === "end" ? x > 110 : x > timeline.width - 110;
      svg.append(svgEl("text", {
        cls: "marker-label " + id, x: x + (left ? -3 : 3), y: TOP_PAD - 3,
        "text-anchor": left ? "end" : "start", text: label,
      }));
    }
  }

  /** The keyboard cursor's frame, shown while the plot has the focus; redrawn alone on focus changes. */
  function drawCursor(svg) {
    const d = timeline.data;
    const old = svg.querySelector(".cursor");
    if (old) old.remove();
    if (!d || !d.oldest) return;
    if (timeline.cursor < 0 || timeline.cursor >= d.counts.length || document.activeElement !== svg) return;
    const { start, end } = bucketRange(timeline.cursor);
    const x = scaleX(start);
    const w = Math.max(3, scaleX(end) - x);
    svg.append(svgEl("rect", { cls: "cursor", x: x - 1, y: TOP_PAD - 1, width: w + 2, height: PLOT_H + 2 }));
  }

  function drawDrag(svg) {
    const old = svg.querySelector(".drag");
    if (old) old.remove();
    if (!timeline.drag) return;
    const x = Math.min(timeline.drag.x0, timeline.drag.x1);
    const w = Math.abs(timeline.drag.x1 - timeline.drag.x0);
    svg.append(svgEl("rect", { cls: "drag", x, y: TOP_PAD, width: w, height: PLOT_H }));
  }

  function describeTimeline() {
    const d = timeline.data;
    const svg = $("timeline");
    if (!d.oldest) {
      setText("timeline-range", "No commits in the history yet.");
      svg.setAttribute("aria-label", "Commits per interval: no commits yet");
      return;
    }
    const whole = !timeline.range ? "whole history, " : "";
    const range = isoTime(d.start_ms) + " – " + isoTime(d.end_ms) + " (" + whole + duration(d.end_ms - d.start_ms) + ")";
    const per = d.bucket_ms === 1 ? "1 ms per bar" : duration(d.bucket_ms) + " per bar";
    setText("timeline-range", range + ": " + plural(d.commits, "commit") + ", " + per);
    const label = "Commits per interval from " + isoTime(d.start_ms) + " to " + isoTime(d.end_ms) + ": " +
      plural(d.commits, "commit") + " in " + plural(d.counts.length, "interval") + " of " + per.replace(" per bar", "") +
      (d.visible && d.visible.timestamp_ms !== null ? "; visible position at " + isoTime(d.visible.timestamp_ms) : "") +
      "; newest commit at " + isoTime(d.newest.timestamp_ms) + ".";
    svg.setAttribute("aria-label", label);
    $("timeline-zoom-out").disabled = !timeline.range;
    $("timeline-reset").disabled = !timeline.range;
  }

  /** Zooms to [start, end), clamped to the whole history; the whole history drops the range. */
  function zoomTo(start, end) {
    const whole = wholeRange();
    if (!whole) return;
    // Too narrow a range widens around its middle; then it slides inside the history.
    const span = Math.max(MIN_SPAN_MS, end - start);
    if (span >= whole.end - whole.start) {
      timeline.range = null;
    } else {
      const wanted = (start + end) / 2 - span / 2;
      const s = Math.max(whole.start, Math.min(wanted, whole.end - span));
      timeline.range = { start: s, end: s + span };
    }
    timeline.cursor = -1;
    loadTimeline();
  }

  /** Zooms by `factor` around the selected interval, else the keyboard cursor, else the middle. */
  function zoomBy(factor) {
    const d = timeline.data;
    if (!d || !d.oldest) return;
    let center = (d.start_ms + d.end_ms) / 2;
    if (timeline.selected && timeline.selected.start < d.end_ms && timeline.selected.end > d.start_ms) {
      center = (timeline.selected.start + timeline.selected.end) / 2;
    } else if (timeline.cursor >= 0) {
      const b = bucketRange(timeline.cursor);
      center = (b.start + b.end) / 2;
    }
    const span = (d.end_ms - d.start_ms) * factor;
    zoomTo(center - span / 2, center + span / 2);
  }

  function resetZoom() {
    timeline.range = null;
    timeline.cursor = -1;
    loadTimeline();
  }

  /** Centers the plot on `ms`, narrowing it to at most a 16th of the history (a find, a jump). */
  function zoomAround(ms) {
    const whole = wholeRange();
    if (!whole) return;
    const d = timeline.data;
    const span = Math.max(2000, Math.min(d.end_ms - d.start_ms, (whole.end - whole.start) / 16));
    zoomTo(ms - span / 2, ms + span / 2);
  }

  /** Selecting an interval: the commits list loads around its last commit. */
  function selectBucket(i) {
    const d = timeline.data;
    if (!d || i < 0 || i >= d.counts.length) return;
    timeline.cursor = i;
    timeline.selected = bucketRange(i);
    drawTimeline();
    // Enough rows for every commit of the interval (they often share one time), within the limit.
    const count = timeline.data.counts[i];
    const listed = Math.max(COMMITS_AROUND, Math.min(COMMITS_MAX, count));
    setText("commits-note", count > COMMITS_MAX ? "This interval holds " + count + " commits: the last " +
      COMMITS_MAX + " are listed. Zoom in to reach the others." : "");
    loadCommits(String(timeline.selected.end - 1), { count: listed });
  }

  function onTimelineClick(event) {
    if (timeline.suppressClick) {
      timeline.suppressClick = false;
      return;
    }
    const d = timeline.data;
    if (!d || !d.oldest) return;
    const target = event.target;
    if (target instanceof SVGRectElement && target.classList.contains("bar")) {
      selectBucket(Number(target.getAttribute("data-index")));
      return;
    }
    // A click between bars selects that moment: the commits at or before it.
    const i = bucketAt(msAtX(svgX(event)));
    selectBucket(Math.max(0, Math.min(d.counts.length - 1, i)));
  }

  /** The pointer's x in the plot's own units (the viewBox is the plot's pixel width). */
  function svgX(event) {
    const box = $("timeline").getBoundingClientRect();
    return ((event.clientX - box.left) / box.width) * timeline.width;
  }

  function onTimelinePointerDown(event) {
    if (event.button !== 0 || !timeline.data || !timeline.data.oldest) return;
    const x = svgX(event);
    timeline.drag = { x0: x, x1: x, id: event.pointerId };
  }

  function onTimelinePointerMove(event) {
    if (!timeline.drag) return;
    timeline.drag.x1 = svgX(event);
    if (Math.abs(timeline.drag.x1 - timeline.drag.x0) > 4) {
      if (!$("timeline").hasPointerCapture(event.pointerId)) $("timeline").setPointerCapture(event.pointerId);
      drawDrag($("timeline"));
    }
  }

  /** A drag wider than a few pixels zooms into the dragged range; a shorter one is a click. */
  function onTimelinePointerUp(event) {
    const drag = timeline.drag;
    timeline.drag = null;
    if (!drag) return;
    drag.x1 = svgX(event);
    if (Math.abs(drag.x1 - drag.x0) <= 4) return;
    timeline.suppressClick = true;
    const a = msAtX(Math.max(0, Math.min(drag.x0, drag.x1)));
    const b = msAtX(Math.min(timeline.width, Math.max(drag.x0, drag.x1)));
    zoomTo(a, b);
  }

  /** ←/→ move between the drawn (non-empty) intervals, Enter selects, +/− zoom, Home/End ends. */
  function onTimelineKey(event) {
    const d = timeline.data;
    if (!d) return;
    const keys = {
      ArrowLeft: () => moveCursor(-1),
      ArrowRight: () => moveCursor(1),
      Home: () => moveCursorTo(nextNonEmpty(-1, 1)),
      End: () => moveCursorTo(nextNonEmpty(d.counts.length, -1)),
      Enter: () => timeline.cursor >= 0 && selectBucket(timeline.cursor),
      " ": () => timeline.cursor >= 0 && selectBucket(timeline.cursor),
      "+": () => zoomBy(1 / ZOOM),
      "=": () => zoomBy(1 / ZOOM),
      "-": () => zoomBy(ZOOM),
      "_": () => zoomBy(ZOOM),
      "0": () => resetZoom(),
    };
    const action = keys[event.key];
    if (!action || event.ctrlKey || event.metaKey || event.altKey) return;
    event.preventDefault();
    action();
  }

  function nextNonEmpty(from, step) {
    const counts = timeline.data.counts;
    for (let i = from + step; i >= 0 && i < counts.length; i += step) {
      if (counts[i] > 0) return i;
    }
    return -1;
  }

  function moveCursor(step) {
    const d = timeline.data;
    let from = timeline.cursor;
    if (from < 0) from = step > 0 ? -1 : d.counts.length;
    const next = nextNonEmpty(from, step);
    if (next >= 0) moveCursorTo(next);
  }

  function moveCursorTo(i) {
    if (i < 0) return;
    timeline.cursor = i;
    drawCursor($("timeline"));
    setText("timeline-cursor", bucketText(i));
  }

  // ---------------------------------------------------------------- find

  async function onFind(event) {
    event.preventDefault();
    clearError("find-error");
    const text = $("find").value.trim();
    if (!text) {
      showError("find-error", new Error("enter an RFC 3339 time (2026-11-23T10:15:00Z), epoch milliseconds or a versionstamp (20 hex digits)"));
      return;
    }
    const around = isVersionstamp(text) ? text.toLowerCase() : text;
    setText("commits-note", "");
    let answer = await loadCommits(around, { errorId: "find-error" });
    if (!answer) return;
    let anchor = answer.commits.find((c) => c.versionstamp === answer.anchor);
    // A backup stamps many commits with one time: when the list starts inside the anchor's time,
    // widen it so that every commit of that time shows.
    if (anchor && answer.more_before && answer.commits[0].timestamp_ms === anchor.timestamp_ms) {
      answer = (await loadCommits(around, { errorId: "find-error", count: COMMITS_MAX })) || answer;
      anchor = answer.commits.find((c) => c.versionstamp === answer.anchor);
    }
    if (anchor && anchor.timestamp_ms !== null) {
      timeline.selected = { start: anchor.timestamp_ms, end: anchor.timestamp_ms + 1 };
      zoomAround(anchor.timestamp_ms);
    }
  }

  // ---------------------------------------------------------------- commits

  const commitsView = {
    around: null, // the `around` parameter of the list shown (null = the visible position)
    count: COMMITS_AROUND, // its `count`
    answer: null, // the last /pitr/commits answer
  };
  const commitsTurn = latestOnly();

  /**
   * Loads the commits around `around` (versionstamp, time or epoch ms; null = the visible position).
   * Resolves to the answer, or null when it failed (the error is shown in `errorId`).
   */
  async function loadCommits(around, opts = {}) {
    const { errorId = "commits-error", keepScroll = false, count = COMMITS_AROUND } = opts;
    const mine = commitsTurn();
    try {
      const answer = await api("/pitr/commits" + query({ around, count }));
      if (!mine()) return null;
      commitsView.around = around;
      commitsView.count = count;
      commitsView.answer = answer;
      clearError("commits-error");
      clearError(errorId);
      renderCommits(keepScroll);
      return answer;
    } catch (err) {
      if (mine()) showError(errorId, err);
      return null;
    }
  }

  function renderCommits(keepScroll) {
    const answer = commitsView.answer;
    const tbody = $("commits").tBodies[0];
    const focusedVs = document.activeElement && document.activeElement.closest
      ? attr(document.activeElement.closest("tr.commit"), "data-versionstamp") : null;
    const scroller = $("commits-scroll");
    const scrollTop = scroller.scrollTop;
    clear(tbody);
    for (const c of answer.commits) {
      knownCommits.set(c.versionstamp, c);
      tbody.append(commitRow(c, c.versionstamp === answer.anchor));
    }
    if (!answer.commits.length) {
      tbody.append(el("tr", null, el("td", { colspan: 4, cls: "empty", text: "No commits yet." })));
    }
    $("commits-earlier").disabled = !answer.more_before;
    $("commits-later").disabled = !answer.more_after;
    if (keepScroll) scroller.scrollTop = scrollTop;
    else scrollToAnchor();
    if (focusedVs) {
      const row = rowOf(focusedVs);
      if (row) row.focus({ preventScroll: true });
    }
  }

  function attr(node, name) {
    return node ? node.getAttribute(name) : null;
  }

  function commitRow(c, isAnchor) {
    const selected = isSelected(c.versionstamp);
    const row = el("tr", {
      cls: "commit" + (selected ? " selected" : "") + (isAnchor ? " anchor" : ""),
      tabindex: 0,
      "aria-selected": selected ? "true" : "false",
      "data-versionstamp": c.versionstamp,
      "data-previous": c.previous || "",
      "data-time-ms": c.timestamp_ms === null ? "" : c.timestamp_ms,
    });
    row.append(
      el("td", { cls: "time", title: c.timestamp_ms === null ? null : ago(c.timestamp_ms), text: c.time }),
      el("td", { cls: "vs mono", text: c.versionstamp }),
      el("td", { cls: "num", text: c.mutations === null ? "–" : c.mutations }),
      el("td", { cls: "badges" }, ...badges(c)),
    );
    return row;
  }

  function badges(c) {
    const out = [];
    if (c.visible) out.push(el("span", { cls: "badge badge-visible", text: "visible" }));
    if (c.newest) out.push(el("span", { cls: "badge badge-newest", text: "newest" }));
    // The oldest recoverable point: the state before it (the backup's
    // snapshot) is not a point, so what it changed cannot be diffed.
    if (c.previous === null) out.push(el("span", { cls: "badge badge-oldest", text: "oldest" }));
    return out;
  }

  function rowOf(vs) {
    return $("commits").querySelector('tr.commit[data-versionstamp="' + vs + '"]');
  }

  /** Scrolls the list (not the page) so that the anchor row shows. */
  function scrollToAnchor() {
    const scroller = $("commits-scroll");
    const row = scroller.querySelector("tr.anchor");
    if (!row) return;
    const top = row.offsetTop - scroller.clientHeight / 2 + row.offsetHeight / 2;
    scroller.scrollTop = Math.max(0, top);
  }

  function pageCommits(direction) {
    const commits = commitsView.answer ? commitsView.answer.commits : [];
    if (!commits.length) return;
    const edge = direction < 0 ? commits[0] : commits[commits.length - 1];
    setText("commits-note", "");
    loadCommits(edge.versionstamp);
  }

  function onCommitsClick(event) {
    const row = event.target.closest("tr.commit");
    if (!row) return;
    selectCommit(row.getAttribute("data-versionstamp"), event.shiftKey);
  }

  /** Enter/Space select; ↑/↓ move the selection (Shift extends it). */
  function onCommitsKey(event) {
    const row = event.target.closest("tr.commit");
    if (!row) return;
    const vs = row.getAttribute("data-versionstamp");
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      selectCommit(vs, event.shiftKey);
    } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      const next = event.key === "ArrowDown" ? row.nextElementSibling : row.previousElementSibling;
      if (!next || !next.classList.contains("commit")) return;
      event.preventDefault();
      next.focus();
      selectCommit(next.getAttribute("data-versionstamp"), event.shiftKey);
    }
  }

  // ---------------------------------------------------------------- selection

  // Commits seen in any list, by versionstamp: a selection outlives the page of the list it came from.
  const knownCommits = new Map();

  const selection = {
    first: null, // the commit clicked first (a Shift+click extends from it)
    older: null, // the selection's ends, oldest first
    newer: null,
  };

  // Versionstamps are fixed-width hex: string order is commit order.
  function isSelected(vs) {
    return !!selection.older && selection.older.versionstamp <= vs && vs <= selection.newer.versionstamp;
  }

  function selectCommit(vs, extend) {
    const commit = knownCommits.get(vs);
    if (!commit) return;
    if (!extend || !selection.first) selection.first = commit;
    const [a, b] = [selection.first, commit].sort((x, y) => (x.versionstamp < y.versionstamp ? -1 : 1));
    selection.older = a;
    selection.newer = b;
    markSelectedRows();
    if (timeline.data) drawTimeline();
    updateActTargets();
    loadDiffForSelection();
  }

  function markSelectedRows() {
    for (const row of $("commits").querySelectorAll("tr.commit")) {
      const on = isSelected(row.getAttribute("data-versionstamp"));
      row.classList.toggle("selected", on);
      row.setAttribute("aria-selected", on ? "true" : "false");
    }
  }

  /** The point the act, browse and restore panels use: the newest commit of the selection. */
  function selectedPoint() {
    return selection.newer;
  }

  function describePoint(c) {
    return c.versionstamp + " (" + c.time + ")";
  }

  function updateActTargets() {
    const p = selectedPoint();
    const text = p ? describePoint(p) : "none (select a commit)";
    setText("act-selected", text);
    setText("restore-at", text);
    $("checkout-selected").disabled = !p || (status.current !== null && status.current !== undefined &&
      status.current.mode === "pinned" && status.current.versionstamp === p.versionstamp);
  }

  // ---------------------------------------------------------------- paged tables (diff, browse)

  /**
   * A table filled page by page (100 rows) through a cursor: the first page replaces the rows, "more"
   * appends the next. `params()` gives the query, `render(answer, more)` draws, `clear()` empties.
   */
  function pager(spec) {
    return Object.assign({ cursor: null, turn: latestOnly() }, spec);
  }

  async function loadPage(view, more) {
    const mine = view.turn();
    const params = view.params();
    if (more) params.cursor = view.cursor;
    const button = $(view.moreId);
    button.disabled = true;
    try {
      const answer = await api(view.path + query(params));
      if (!mine()) return;
      clearError(view.errorId);
      view.cursor = answer.next_cursor;
      button.hidden = !answer.next_cursor;
      view.render(answer, more);
      capRows(view, button);
    } catch (err) {
      if (!mine()) return;
      if (!more) view.clear();
      showError(view.errorId, err);
    } finally {
      button.disabled = button.dataset.full === "true";
    }
  }

  /** Past MAX_ROWS rows the button stays, disabled, saying how to see the rest. */
  function capRows(view, button) {
    const full = !!view.cursor && $(view.tableId).tBodies[0].rows.length >= MAX_ROWS;
    button.dataset.full = full ? "true" : "";
    if (full) button.textContent = "The first " + MAX_ROWS + " rows are shown: filter by a key prefix for the others";
  }

  // ---------------------------------------------------------------- diff

  const diffView = pager({
    path: "/pitr/diff", tableId: "diff", moreId: "diff-more", errorId: "diff-error",
    from: null, to: null, prefix: "", shown: 0,
    params: () => ({ from: diffView.from, to: diffView.to, prefix: diffView.prefix, limit: PAGE }),
    render: renderDiff,
    clear: clearDiffRows,
  });

  /** "What did this commit change" = previous → it; a range A..B = A.previous → B. */
  function loadDiffForSelection() {
    const a = selection.older;
    const b = selection.newer;
    const from = a.previous || (a.versionstamp !== b.versionstamp ? a.versionstamp : null);
    if (!from) {
      resetDiff();
      setText("diff-title", "The oldest recoverable point: the state before it came from the backup's snapshot " +
        "and is not recoverable, so what this commit changed cannot be shown. Select a later commit.");
      return;
    }
    diffView.from = from;
    diffView.to = b.versionstamp;
    loadDiff();
  }

  function loadDiff() {
    setText("diff-summary", "Loading…");
    loadPage(diffView, false);
  }

  function resetDiff() {
    diffView.turn(); // an answer still on its way is dropped
    diffView.from = diffView.to = diffView.cursor = null;
    clearDiffRows();
    clearError("diff-error");
  }

  function clearDiffRows() {
    diffView.shown = 0;
    clear($("diff").tBodies[0]);
    setText("diff-summary", "");
    $("diff-more").hidden = true;
  }

  function renderDiff(answer, more) {
    const tbody = $("diff").tBodies[0];
    if (!more) {
      clear(tbody);
      diffView.shown = 0;
      setText("diff-title", "From " + answer.from.versionstamp + " (" + answer.from.time + ") to " +
        answer.to.versionstamp + " (" + answer.to.time + ")" + (diffView.prefix ? ", keys under " + diffView.prefix : ""));
    }
    for (const change of answer.changes) tbody.append(changeRow(change));
    diffView.shown += answer.changes.length;
    const t = answer.totals;
    const total = t.added + t.removed + t.changed;
    setText("diff-summary", total + " keys differ: " + t.added + " added, " + t.removed + " removed, " +
      t.changed + " changed");
    $("diff-more").textContent = "More (" + diffView.shown + " of " + total + " shown)";
  }

  function changeRow(change) {
    return el("tr", { cls: "change", "data-kind": change.kind, "data-key": JSON.stringify(change.key) },
      el("td", { cls: "kind", text: change.kind }),
      keyCell(change.key),
      valueCell("before", change.before),
      valueCell("after", change.after));
  }

  function onDiffPrefix(event) {
    event.preventDefault();
    diffView.prefix = $("diff-prefix").value.trim();
    if (!diffView.from) {
      showError("diff-error", new Error("select a commit first"));
      return;
    }
    loadDiff();
  }

  // ---------------------------------------------------------------- browse

  const browseView = pager({
    path: "/kv", tableId: "browse", moreId: "browse-more", errorId: "browse-error",
    prefix: "", at: null,
    params: () => ({ prefix: browseView.prefix, at: browseView.at, limit: PAGE }),
    render: renderBrowse,
    clear: () => clear($("browse").tBodies[0]),
  });

  function onBrowse(event) {
    event.preventDefault();
    clearError("browse-error");
    let at = null;
    if ($("browse-at").value === "selected") {
      const p = selectedPoint();
      if (!p) {
        showError("browse-error", new Error("select a commit first (or browse the visible state)"));
        return;
      }
      at = p.versionstamp;
    }
    browseView.prefix = $("browse-prefix").value.trim();
    browseView.at = at;
    loadPage(browseView, false);
  }

  function renderBrowse(answer, more) {
    const tbody = $("browse").tBodies[0];
    if (!more) clear(tbody);
    for (const entry of answer.entries) {
      tbody.append(el("tr", { cls: "entry", "data-key": JSON.stringify(entry.key) },
        keyCell(entry.key), valueCell("value", entry)));
    }
    const count = tbody.querySelectorAll("tr.entry").length;
    const where = browseView.prefix ? "under " + browseView.prefix : "all keys";
    const state = browseView.at ? "at " : "visible state, ";
    setText("browse-title", count + (count === 1 ? " entry " : " entries ") + where + ", " + state +
      answer.at.versionstamp + " (" + answer.at.time + ")" + (answer.next_cursor ? ", more follow" : ""));
    setText("browse-more", "More");
  }

  // ---------------------------------------------------------------- act (checkout)

  // What the open confirmation will do when confirmed: {body, label}.
  let pendingCheckout = null;

  async function onCheckoutSelected() {
    const p = selectedPoint();
    if (!p) return;
    setText("act-result", "Preparing…");
    const [after, differ] = await Promise.all([commitsAfter(p), keysDiffering(p.versionstamp)]);
    if (!token()) return; // the session ended meanwhile
    const text = "KV Connect readers (Deno.openKv clients, watch streams) will see the database as it was at " +
      p.time + " (versionstamp " + p.versionstamp + ")" + (after === null ? "" : ", " + after + " before the newest") +
      ". " + differ + " The replica stays pinned there — new commits are fetched but not shown — until you go " +
      "back to latest.";
    confirmCheckout(text, { versionstamp: p.versionstamp }, "Check out " + p.versionstamp);
  }

  async function onCheckoutLatest() {
    setText("act-result", "Preparing…");
    let cur = status.current;
    try {
      cur = await api("/pitr/current");
    } catch (err) {
      if (err instanceof SessionEnded) return;
    }
    if (!cur || !cur.latest) {
      setText("act-result", "The initial snapshot is still loading: there is no point to go back to yet.");
      return;
    }
    const differ = cur.versionstamp === cur.latest.versionstamp ? "" : " " + (await keysDiffering("latest"));
    const text = "KV Connect readers (Deno.openKv clients, watch streams) will see the newest state, " +
      cur.latest.versionstamp + " at " + cur.latest.time + ", and follow new commits again." + differ;
    confirmCheckout(text, { latest: true }, "Back to latest");
  }

  /** "42 commits" newer than `p`, or null when it cannot be counted. */
  async function commitsAfter(p) {
    try {
      const newest = timeline.data && timeline.data.newest;
      if (!newest || p.timestamp_ms === null) return null;
      // Commits after p's time (the timeline counts by time), plus those sharing p's time after it.
      let later = 0;
      if (p.timestamp_ms < newest.timestamp_ms) {
        const range = { start: p.timestamp_ms + 1, end: newest.timestamp_ms + 1, buckets: 1 };
        later = (await api("/pitr/timeline" + query(range))).commits;
      }
      const around = await api("/pitr/commits" + query({ around: p.versionstamp, count: 100 }));
      const sameTime = around.commits.filter((c) => c.versionstamp > p.versionstamp && c.timestamp_ms === p.timestamp_ms);
      return plural(later + sameTime.length, "commit");
    } catch (_) {
      return null;
    }
  }

  /** How many keys differ between what readers see now and `target` (one cheap page of the diff). */
  async function keysDiffering(target) {
    const visible = status.current && status.current.versionstamp;
    if (!visible) return "";
    try {
      const answer = await api("/pitr/diff" + query({ from: visible, to: target, limit: 1 }));
      const t = answer.totals;
      const n = t.added + t.removed + t.changed;
      return n === 0 ? "No key differs from what readers see now." :
        plural(n, "key") + " differ from what readers see now (" + t.added + " added, " + t.removed +
        " removed, " + t.changed + " changed).";
    } catch (err) {
      return err instanceof ApiError ? "(Could not count the keys that differ: " + err.message + ")" : "";
    }
  }

  function confirmCheckout(text, body, okLabel) {
    pendingCheckout = body;
    setText("act-result", "");
    setText("confirm-text", text);
    setText("confirm-ok", okLabel);
    $("confirm").showModal();
    $("confirm-cancel").focus();
  }

  function onConfirmCancel() {
    pendingCheckout = null;
    if ($("confirm").open) $("confirm").close();
    setText("act-result", "Cancelled: nothing changed.");
  }

  async function onConfirmOk() {
    const body = pendingCheckout;
    pendingCheckout = null;
    $("confirm").close();
    if (!body) return;
    setText("act-result", "Checking out…");
    try {
      const r = await api("/pitr/checkout", { method: "POST", body });
      setText("act-result", checkoutOutcome(r));
    } catch (err) {
      if (!(err instanceof SessionEnded)) setText("act-result", "Checkout failed: " + err.message);
      return;
    }
    try {
      await refreshStatus(); // the status panel, timeline and list follow at once
    } catch (_) {
      /* the next poll retries */
    }
  }

  function checkoutOutcome(r) {
    const moves = " (from " + r.previous + ": " + plural(r.undone, "mutation") + " reverted, " + r.redone + " re-applied)";
    return r.mode === "pinned"
      ? "Checked out " + r.versionstamp + " (pinned) at " + r.time + moves + ". Readers see this state until you go back to latest."
      : "Back to latest: " + r.versionstamp + " at " + r.time + " (following)" + moves + ".";
  }

  // ---------------------------------------------------------------- restore plan (dry run)

  const restoreTurn = latestOnly();

  async function onRestorePlan(event) {
    event.preventDefault();
    const out = $("restore-result");
    const p = selectedPoint();
    const to = $("restore-to").value.trim();
    const prefix = $("restore-prefix").value.trim();
    if (!p) return restoreError("Select a commit first: the plan restores the state at it.");
    if (!to) return restoreError("Enter the primary's KV Connect URL.");
    const body = { to, token: $("restore-token").value, at: p.versionstamp, apply: false, show: PAGE };
    if (prefix) body.prefix = [prefix];
    const mine = restoreTurn();
    out.removeAttribute("role");
    out.replaceChildren(el("p", { text: "Planning (dry run, nothing is written)… An unreachable primary takes a few " +
      "seconds to give up (the connection is retried)." }));
    $("restore-plan").disabled = true;
    try {
      const answer = await api("/restore", { method: "POST", body });
      if (mine()) renderRestore(answer, to, p.versionstamp, prefix);
    } catch (err) {
      if (mine() && !(err instanceof SessionEnded)) restoreError(err.message);
    } finally {
      $("restore-plan").disabled = false;
    }
  }

  function restoreError(message) {
    const out = $("restore-result");
    out.setAttribute("role", "alert");
    out.replaceChildren(el("p", { cls: "error", text: message }));
  }

  function renderRestore(answer, to, at, prefix) {
    const out = $("restore-result");
    const plan = answer.plan;
    const rows = answer.keys.map((k) => el("tr", { cls: "plan-key", "data-action": k.action, "data-key": JSON.stringify(k.key) },
      el("td", { cls: "kind", text: k.action }), keyCell(k.key), valueCell("before", k.before), valueCell("after", k.after)));
    const listed = plan.set + plan.delete > answer.keys.length ? " (the first " + answer.keys.length + " keys listed)" : "";
    out.replaceChildren(
      el("p", { cls: "summary", text: "Plan: " + plan.set + " to set, " + plan.delete + " to delete, " + plan.unchanged + " unchanged" + listed }),
      el("p", { cls: "hint", text: "Dry run: nothing was written. Before: the primary now; after: the replica at " + answer.point + "." }),
      el("div", { cls: "scroll" }, el("table", { cls: "plan" },
        el("thead", null, el("tr", null, el("th", { text: "Action" }), el("th", { text: "Key" }),
          el("th", { text: "Before (primary)" }), el("th", { text: "After (restored)" }))),
        el("tbody", null, ...rows))),
      el("p", { text: "To apply it (the token from --token-file or DENO_KV_ACCESS_TOKEN):" }),
      el("pre", { cls: "command" }, el("code", { text: restoreCommand(to, at, prefix) })));
  }

  /** The CLI command that applies the plan; the token is never part of it. */
  function restoreCommand(to, at, prefix) {
    const parts = ["kvreplica restore --db replica.sqlite", "--to " + shellQuote(to), "--at " + at];
    if (prefix) parts.push("--prefix " + shellQuote(prefix));
    parts.push("--token-file TOKEN_FILE --apply");
    return parts.join(" \\\n    ");
  }

  function shellQuote(s) {
    return /^[A-Za-z0-9_.:\/@%+=,-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'";
  }

  // ---------------------------------------------------------------- start-up

  function resetState() {
    status.previous = status.current = status.newest = status.visible = null;
    status.seen = false;
    status.polls = 0;
    timeline.range = timeline.data = timeline.selected = timeline.drag = null;
    timeline.cursor = -1;
    commitsView.around = commitsView.answer = null;
    commitsView.count = COMMITS_AROUND;
    selection.first = selection.older = selection.newer = null;
    knownCommits.clear();
    browseView.cursor = browseView.at = null;
    pendingCheckout = null;
    diffView.prefix = "";
    resetDiff();
    for (const id of ["commits", "browse"]) clear($(id).tBodies[0]);
    clear($("timeline"));
    $("restore-token").value = "";
    $("restore-result").replaceChildren();
    for (const id of ["act-result", "browse-title", "timeline-range", "status-error", "timeline-error", "find-error", "commits-error", "commits-note", "browse-error"]) setText(id, "");
    setText("diff-title", "Select a commit or a range of commits.");
    $("browse-more").hidden = true;
    updateActTargets();
  }

  function wire() {
    $("login").addEventListener("submit", onLogin);
    $("logout").addEventListener("click", () => endSession("Logged out."));

    const svg = $("timeline");
    svg.addEventListener("click", onTimelineClick);
    svg.addEventListener("keydown", onTimelineKey);
    svg.addEventListener("pointerdown", onTimelinePointerDown);
    svg.addEventListener("pointermove", onTimelinePointerMove);
    svg.addEventListener("pointerup", onTimelinePointerUp);
    svg.addEventListener("pointercancel", () => { timeline.drag = null; drawDrag(svg); });
    // Only the cursor frame: redrawing the bars here would replace the bar under a click in progress.
    svg.addEventListener("focus", () => drawCursor(svg));
    svg.addEventListener("blur", () => drawCursor(svg));
    $("timeline-zoom-in").addEventListener("click", () => zoomBy(1 / ZOOM));
    $("timeline-zoom-out").addEventListener("click", () => zoomBy(ZOOM));
    $("timeline-reset").addEventListener("click", resetZoom);
    $("find-form").addEventListener("submit", onFind);
    redrawOnResize(svg);

    $("commits").addEventListener("click", onCommitsClick);
    $("commits").addEventListener("keydown", onCommitsKey);
    $("commits-earlier").addEventListener("click", () => pageCommits(-1));
    $("commits-later").addEventListener("click", () => pageCommits(1));

    $("diff-form").addEventListener("submit", onDiffPrefix);
    $("diff-more").addEventListener("click", () => loadPage(diffView, true));
    $("browse-form").addEventListener("submit", onBrowse);
    $("browse-more").addEventListener("click", () => loadPage(browseView, true));

    $("checkout-selected").addEventListener("click", onCheckoutSelected);
    $("checkout-latest").addEventListener("click", onCheckoutLatest);
    $("confirm-ok").addEventListener("click", onConfirmOk);
    $("confirm-cancel").addEventListener("click", onConfirmCancel);
    // Esc closes the dialog natively ("cancel" event): the same as the Cancel button.
    $("confirm").addEventListener("cancel", (event) => { event.preventDefault(); onConfirmCancel(); });

    $("restore-form").addEventListener("submit", onRestorePlan);
  }

  /** The plot's pixel width sets the bucket count: redraw at once, refetch when it changed a lot. */
  function redrawOnResize(svg) {
    if (typeof ResizeObserver !== "function") return;
    let fetchedFor = 0;
    let timer = null;
    new ResizeObserver(() => {
      if (!timeline.data || $("app").hidden) return;
      drawTimeline();
      const width = plotWidth();
      if (Math.abs(width - fetchedFor) < 100) return;
      clearTimeout(timer);
      timer = setTimeout(() => { fetchedFor = width; loadTimeline(); }, 300);
    }).observe(svg);
  }

  function start() {
    wire();
    if (token()) startApp();
    else showLogin("");
  }

  start();
})();
