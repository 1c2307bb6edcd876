// zmqws live page: one WebSocket to the gateway's /ws, messages rendered in batches per animation
// frame, a topic filter driven by subscribe/unsubscribe commands, per-topic rates, and automatic
// reconnection. No framework, no build step, nothing loaded from elsewhere (the page's CSP forbids
// it). Everything that comes from the gateway is untrusted text: it only ever reaches the DOM
// through textContent, dataset or attribute values, never through innerHTML.
"use strict";

(() => {
  // -- limits ---------------------------------------------------------------------------------
  const MAX_ROWS = 2000; // rows kept in the DOM; the oldest go first
  const CHUNK = 100; // rows per block of the log: layout and paint skip the blocks out of view
  const MAX_DATA = 10000; // characters of one message shown; the rest is summarised
  const TOP_RATES = 20; // rows of the rate table
  const MAX_TOPICS = 5000; // topics whose rates are tracked
  const TOPIC_IDLE_MS = 60000; // a topic silent this long leaves the rate table
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  const COLORS = 8; // .c0 … .c7 in style.css

  // -- elements -------------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"),
    reconnect: $("reconnect"),
    total: $("total"),
    totalRate: $("total").querySelector(".rate"),
    totalCount: $("total").querySelector(".count"),
    gaps: $("gaps"),
    pause: $("pause"),
    clear: $("clear"),
    form: $("topic-form"),
    input: $("topic-input"),
    add: $("topic-add"),
    all: $("topic-all"),
    subs: $("subscriptions"),
    pending: $("pending"),
    error: $("error"),
    errorText: $("error").querySelector(".error-text"),
    errorClose: $("error-close"),
    log: $("messages"),
    pausedBanner: $("paused-banner"),
    resume: $("resume-scroll"),
    rates: $("rates"),
    ratesEmpty: $("rates-empty"),
  };

  // -- state ----------------------------------------------------------------------------------
  let ws = null; // the current WebSocket, or null between connections
  let state = "connecting";
  let attempt = 0; // failed connections since the last successful open
  let retryTimer = 0;
  let retryAt = 0;
  let countdownTimer = 0;
  let sent = []; // commands awaiting their reply, oldest first: {cmd, then}
  let subs = initialTopics(); // the subscriptions the gateway acknowledged (sorted)

  let pending = []; // rows waiting for the next animation frame
  let frame = 0;
  let paused = false;
  let pausedNew = 0; // messages received while paused
  let stick = true; // follow the newest row
  let lastTop = 0; // the log's scrollTop when last seen, to tell the user's scrolls up
  let unseen = 0; // rows added while not following
  let rowCount = 0; // rows in the log

  const stats = new Map(); // topic → {n (this second), total, rate, last}
  let totalCount = 0;
  let totalWindow = 0;
  let lastTick = performance.now();
  let gapsMissed = 0;

  // -- helpers --------------------------------------------------------------------------------
  function initialTopics() {
    const list = new URLSearchParams(location.search).getAll("topic");
    return list.length ? [...new Set(list)].sort() : [""];
  }

  function isAll(list) {
    return list.length === 1 && list[0] === "";
  }

  function span(cls, text) {
    const s = document.createElement("span");
    s.className = cls;
    s.textContent = text;
    return s;
  }

  const pad2 = (n) => (n < 10 ? "0" : "") + n;
  function fmtTime(ms) {
    const d = new Date(ms);
    const milli = d.getMilliseconds();
    return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds()) + "." +
      (milli < 10 ? "00" : milli < 100 ? "0" : "") + milli;
  }

  function fmtRate(r) {
    if (r === 0) return "0";
    if (r < 9.95) return r.toFixed(1);
    return Math.round(r).toLocaleString("en-US");
  }

  const colorCache = new Map();
  function colorOf(topic) {
    let c = colorCache.get(topic);
    if (c === undefined) {
      let h = 0;
      for (let i = 0; i < topic.length; i++) h = (h * 31 + topic.charCodeAt(i)) | 0;
      c = "topic c" + (((h % COLORS) + COLORS) % COLORS);
      if (colorCache.size > 10000) colorCache.clear();
      colorCache.set(topic, c);
    }
    return c;
  }

  const utf8 = new TextDecoder("utf-8"); // lossy: invalid bytes become U+FFFD

  // Base64 data is what was not valid UTF-8: show it as text when it mostly is, else as hex.
  function decodeBase64(b64) {
    let bin;
    try {
      bin = atob(b64);
    } catch (e) {
      return { text: "(invalid base64 data)", binary: true };
    }
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const text = utf8.decode(bytes);
    let bad = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c === 0xfffd || (c < 32 && c !== 9 && c !== 10 && c !== 13) || c === 127) bad++;
    }
    if (text.length && bad <= text.length / 10) return { text, binary: false };
    const shown = Math.min(bytes.length, 48);
    let hex = "";
    for (let i = 0; i < shown; i++) hex += (i ? " " : "") + bytes[i].toString(16).padStart(2, "0");
    if (bytes.length > shown) hex += " …";
    return { text: bytes.length + " bytes: " + hex, binary: true };
  }

  // -- status and errors ----------------------------------------------------------------------
  function setStatus(s, text) {
    state = s;
    el.status.dataset.state = s;
    el.status.dataset.attempt = String(attempt);
    el.status.textContent = text;
    const open = s === "open";
    el.add.disabled = !open;
    el.all.disabled = !open || isAll(subs);
    for (const b of el.subs.querySelectorAll("button")) b.disabled = !open;
    el.reconnect.hidden = s !== "closed";
  }

  function showError(text) {
    el.errorText.textContent = text;
    el.error.hidden = false;
  }

  el.errorClose.addEventListener("click", () => {
    el.error.hidden = true;
  });

  // -- connection -----------------------------------------------------------------------------
  function wsUrl() {
    // The page is served at <base>/ (or <base>/index.html); the socket is <base>/ws.
    let base = location.pathname.replace(/[^/]*$/, "");
    if (base.endsWith("/static/")) base = base.slice(0, -"static/".length);
    const q = new URLSearchParams();
    if (!isAll(subs)) for (const t of subs) q.append("topic", t);
    // A gateway that requires a token: the page passes on its own ?access_token= (browsers
    // cannot set an Authorization header on a WebSocket).
    const token = new URLSearchParams(location.search).get("access_token");
    if (token) q.append("access_token", token);
    const qs = q.toString();
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + base + "ws" + (qs ? "?" + qs : "");
  }

  function connect() {
    clearRetry();
    const url = wsUrl();
    setStatus("connecting", "connecting…");
    let sock;
    try {
      sock = new WebSocket(url);
    } catch (e) {
      showError("cannot open " + url + ": " + e.message);
      scheduleRetry();
      return;
    }
    ws = sock;
    sent = [];
    updatePending();
    sock.onopen = () => {
      if (ws !== sock) return;
      attempt = 0;
      setStatus("open", "open");
      renderSubs();
      notice("connected, " + filterText(subs), "info");
    };
    sock.onmessage = (ev) => {
      if (ws === sock) onFrame(ev.data);
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      sent = [];
      updatePending();
      const why = ev.code === 1006 ? "connection lost" : "closed by the gateway (" + ev.code +
        (ev.reason ? ": " + ev.reason : "") + ")";
      if (state === "open") notice("disconnected: " + why, "warn");
      scheduleRetry();
    };
    sock.onerror = () => {}; // a close event follows, which schedules the retry
  }

  function scheduleRetry() {
    // Exponential backoff with jitter: 0.5 s doubling to 30 s, each delay drawn in [d/2, d].
    const d = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(attempt, 16));
    attempt++;
    const delay = d / 2 + Math.random() * (d / 2);
    retryAt = Date.now() + delay;
    retryTimer = setTimeout(connect, delay);
    showCountdown();
    countdownTimer = setInterval(showCountdown, 250);
  }

  function showCountdown() {
    const s = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    setStatus("closed", "closed, reconnecting in " + s + " s");
  }

  function clearRetry() {
    clearTimeout(retryTimer);
    clearInterval(countdownTimer);
    retryTimer = countdownTimer = 0;
  }

  el.reconnect.addEventListener("click", () => {
    if (state === "closed") connect();
  });

  // -- incoming frames ------------------------------------------------------------------------
  function onFrame(text) {
    if (typeof text !== "string") return; // binary frames are the raw format, never asked for
    let m;
    try {
      m = JSON.parse(text);
    } catch (e) {
      notice("unreadable frame from the gateway", "error");
      return;
    }
    if (m === null || typeof m !== "object") return;
    if (typeof m.op === "string") {
      onControl(m);
      return;
    }
    if (typeof m.topic !== "string") return;
    countMessage(m.topic);
    queue({ m, t: Date.now() });
  }

  function onControl(m) {
    switch (m.op) {
      case "subscribed":
      case "unsubscribed": {
        const cmd = sent.shift();
        updatePending();
        if (Array.isArray(m.topics)) {
          setSubs(m.topics.filter((t) => typeof t === "string"));
          notice(filterText(subs), "filter", subs);
        }
        if (cmd && cmd.then) cmd.then(subs);
        break;
      }
      case "error": {
        sent.shift();
        updatePending();
        const text = "gateway error" + (m.code ? " [" + m.code + "]" : "") + ": " + (m.message || "");
        showError(text);
        notice(text, "error");
        break;
      }
      case "gap": {
        const n = Number(m.missed) || 0;
        gapsMissed += n;
        el.gaps.textContent = "⚠ " + gapsMissed.toLocaleString("en-US") + " missed";
        el.gaps.hidden = false;
        notice("missed " + n.toLocaleString("en-US") + " messages (this page could not keep up)",
          "gap");
        break;
      }
      case "pong":
      case "published":
        sent.shift();
        updatePending();
        break;
      default:
        break;
    }
  }

  // -- subscriptions --------------------------------------------------------------------------
  function filterText(list) {
    if (!list.length) return "filter: nothing (no subscription)";
    return "filter: " + list.map((t) => (t === "" ? "all topics" : t)).join(", ");
  }

  function send(cmd, then) {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      showError("not connected: the filter can change once the connection is open");
      return false;
    }
    ws.send(JSON.stringify(cmd));
    sent.push({ cmd, then });
    updatePending();
    return true;
  }

  function updatePending() {
    el.pending.hidden = sent.length === 0;
  }

  function setSubs(list) {
    subs = [...new Set(list)].sort();
    renderSubs();
    // Keep the address bar in step, so that a reload keeps the filter.
    const u = new URL(location.href);
    u.searchParams.delete("topic");
    if (!isAll(subs)) for (const t of subs) u.searchParams.append("topic", t);
    if (u.href !== location.href) history.replaceState(null, "", u.href);
  }

  function renderSubs() {
    const open = state === "open";
    const items = [];
    if (!subs.length) {
      const li = document.createElement("li");
      li.className = "chip none";
      li.textContent = "no subscription: nothing arrives";
      items.push(li);
    }
    for (const t of subs) {
      const li = document.createElement("li");
      li.className = t === "" ? "chip all" : "chip";
      li.dataset.topic = t;
      li.dataset.testid = "subscription";
      li.append(span("chip-label", t === "" ? "all topics" : t));
      if (!(t === "" && subs.length === 1)) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "chip-remove";
        b.textContent = "×";
        b.title = t === "" ? "stop receiving every topic" : "unsubscribe from " + t;
        b.setAttribute("aria-label", b.title);
        b.dataset.testid = "unsubscribe";
        b.disabled = !open;
        b.addEventListener("click", () => removeTopic(t));
        li.append(b);
      }
      items.push(li);
    }
    el.subs.replaceChildren(...items);
    el.all.disabled = !open || isAll(subs);
  }

  function addTopic(prefix) {
    if (prefix === "") {
      allTopics();
      return;
    }
    if (subs.includes(prefix) && !subs.includes("")) return;
    // Subscribe first, then drop "" once the gateway has the prefix: the filter narrows without
    // ever passing through an empty subscription set.
    send({ op: "subscribe", topics: [prefix] }, (now) => {
      if (now.includes("") && now.some((t) => t !== "")) send({ op: "unsubscribe", topics: [""] });
    });
  }

  function removeTopic(prefix) {
    const rest = subs.filter((t) => t !== prefix);
    if (rest.length) {
      send({ op: "unsubscribe", topics: [prefix] });
    } else if (prefix !== "") {
      // The last prefix: back to everything rather than to nothing.
      send({ op: "subscribe", topics: [""] }, (now) => {
        if (now.includes(prefix)) send({ op: "unsubscribe", topics: [prefix] });
      });
    }
  }

  function allTopics() {
    const others = subs.filter((t) => t !== "");
    if (!subs.includes("")) {
      send({ op: "subscribe", topics: [""] }, (now) => {
        const rest = now.filter((t) => t !== "");
        if (rest.length) send({ op: "unsubscribe", topics: rest });
      });
    } else if (others.length) {
      send({ op: "unsubscribe", topics: others });
    }
  }

  el.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = el.input.value.trim();
    if (!p) return;
    if (addTopicIfOpen(p)) el.input.value = "";
  });

  function addTopicIfOpen(p) {
    if (state !== "open") {
      showError("not connected: the filter can change once the connection is open");
      return false;
    }
    addTopic(p);
    return true;
  }

  el.all.addEventListener("click", () => {
    if (state === "open") allTopics();
  });

  // -- the log: batched per animation frame ---------------------------------------------------
  function queue(item) {
    pending.push(item);
    if (pending.length > 2 * MAX_ROWS) pending = pending.slice(-MAX_ROWS);
    if (paused && item.m) pausedNew++;
    if (!frame) frame = requestAnimationFrame(flush);
  }

  function notice(text, kind, topics) {
    queue({ notice: text, kind, topics, t: Date.now() });
  }

  function renderRow(item) {
    const row = document.createElement("div");
    if (item.notice !== undefined) {
      row.className = "notice " + item.kind;
      row.append(span("time", fmtTime(item.t)), span("text", item.notice));
      if (item.topics) row.dataset.topics = JSON.stringify(item.topics);
      return row;
    }
    const m = item.m;
    row.className = "msg";
    row.append(
      span("time", fmtTime(typeof m.ts === "number" ? m.ts * 1000 : item.t)),
      span(colorOf(m.topic), m.topic),
    );
    if (m.source != null || m.source_seq != null) {
      row.append(span("meta", (m.source != null ? String(m.source) : "") +
        (m.source_seq != null ? "#" + m.source_seq : "")));
    }
    let text = typeof m.data === "string" ? m.data : String(m.data ?? "");
    if (m.encoding === "base64") {
      const d = decodeBase64(text);
      text = d.text;
      row.classList.add(d.binary ? "binary" : "decoded");
      row.append(span("badge", d.binary ? "binary" : "not utf-8"));
    }
    if (text.length > MAX_DATA) {
      text = text.slice(0, MAX_DATA) + " … [" + (text.length - MAX_DATA) + " more characters]";
    }
    row.append(span("data", text));
    if (typeof m.seq === "number") row.dataset.seq = m.seq;
    return row;
  }

  function flush() {
    frame = 0;
    if (paused) {
      el.pausedBanner.textContent = "paused: " + pausedNew.toLocaleString("en-US") +
        (pausedNew === 1 ? " new message" : " new messages") +
        (pausedNew > MAX_ROWS ? " (the newest " + MAX_ROWS + " will show)" : "");
      return;
    }
    if (!pending.length) return;
    let items = pending;
    pending = [];
    if (items.length > MAX_ROWS) items = items.slice(-MAX_ROWS);
    appendRows(items);
    if (stick) {
      toBottom();
      settle(5);
    } else {
      unseen += items.length;
      el.resume.textContent = "↓ Resume auto-scroll (" + unseen.toLocaleString("en-US") + " new)";
    }
  }

  // The log is a list of blocks (.chunk) of up to CHUNK rows. A block out of view is skipped by
  // layout and paint (content-visibility in style.css), so a frame costs what the new rows and
  // the visible blocks cost, not what all MAX_ROWS rows would.
  function appendRows(items) {
    const log = el.log;
    let chunk = log.lastElementChild;
    let n = chunk ? chunk.childElementCount : CHUNK;
    const rows = document.createDocumentFragment();
    const chunks = document.createDocumentFragment();
    for (const it of items) {
      if (n >= CHUNK) {
        if (rows.firstChild) chunk.appendChild(rows);
        chunk = document.createElement("div");
        chunk.className = "chunk";
        chunks.appendChild(chunk);
        n = 0;
      }
      rows.appendChild(renderRow(it));
      n++;
    }
    chunk.appendChild(rows);
    log.appendChild(chunks);
    rowCount += items.length;
    // Drop the oldest rows: whole blocks, then the start of the first one.
    let excess = rowCount - MAX_ROWS;
    while (excess > 0) {
      const first = log.firstElementChild;
      const c = first.childElementCount;
      if (c <= excess) {
        first.remove();
        excess -= c;
        rowCount -= c;
      } else {
        const r = document.createRange();
        r.setStartBefore(first.firstElementChild);
        r.setEndBefore(first.children[excess]);
        r.deleteContents();
        rowCount -= excess;
        excess = 0;
      }
    }
  }

  function toBottom() {
    const log = el.log;
    log.scrollTop = log.scrollHeight;
    lastTop = log.scrollTop;
  }

  // Rows out of view are not laid out (content-visibility in style.css), so the rows just
  // scrolled into view may turn out taller than estimated a frame later: follow them down.
  let settleFrame = 0;
  function settle(tries) {
    if (settleFrame) cancelAnimationFrame(settleFrame);
    settleFrame = requestAnimationFrame(() => {
      settleFrame = 0;
      const log = el.log;
      if (!stick || log.scrollHeight - log.scrollTop - log.clientHeight < 1) return;
      toBottom();
      if (tries > 1) settle(tries - 1);
    });
  }

  // Following stops only when the user scrolls up, not when rows change size or go away above
  // the view (which moves the position by itself); it starts again at the bottom.
  let userAt = -1e9; // when the user last touched the log: wheel, touch, pointer, keys
  const userInput = () => {
    userAt = performance.now();
  };
  for (const type of ["wheel", "touchstart", "touchmove", "pointerdown"]) {
    el.log.addEventListener(type, userInput, { passive: true });
  }
  const scrollKeys = new Set(["ArrowUp", "PageUp", "Home", "ArrowDown", "PageDown", "End", " "]);
  document.addEventListener("keydown", (ev) => {
    if (scrollKeys.has(ev.key) && !(ev.target instanceof HTMLInputElement)) userInput();
  }, { passive: true });

  el.log.addEventListener("scroll", () => {
    const log = el.log;
    const top = log.scrollTop;
    const atBottom = log.scrollHeight - top - log.clientHeight < 24;
    if (atBottom && !stick) {
      stick = true;
      unseen = 0;
      el.resume.hidden = true;
    } else if (!atBottom && stick && top < lastTop && performance.now() - userAt < 1000) {
      stick = false;
      el.resume.textContent = "↓ Resume auto-scroll";
      el.resume.hidden = false;
    } else if (!atBottom && stick) {
      settle(5);
    }
    lastTop = top;
  }, { passive: true });

  // A resized log (window, phone rotation) keeps following the newest row.
  new ResizeObserver(() => {
    if (stick) toBottom();
  }).observe(el.log);

  el.resume.addEventListener("click", () => {
    stick = true;
    unseen = 0;
    el.resume.hidden = true;
    toBottom();
    settle(5);
  });

  el.pause.addEventListener("click", () => {
    paused = !paused;
    el.pause.textContent = paused ? "Resume" : "Pause";
    el.pause.setAttribute("aria-pressed", String(paused));
    el.pause.classList.toggle("active", paused);
    el.pausedBanner.hidden = !paused;
    if (paused) {
      pausedNew = 0;
      el.pausedBanner.textContent = "paused";
    } else if (!frame) {
      frame = requestAnimationFrame(flush);
    }
  });

  el.clear.addEventListener("click", () => {
    pending = [];
    pausedNew = 0;
    unseen = 0;
    el.log.replaceChildren();
    rowCount = 0;
    stick = true;
    el.resume.hidden = true;
  });

  // -- rates: counted per message, shown once a second ----------------------------------------
  function countMessage(topic) {
    let s = stats.get(topic);
    if (s === undefined) {
      s = { n: 0, total: 0, rate: 0, last: 0 };
      stats.set(topic, s);
    }
    s.n++;
    s.total++;
    totalWindow++;
    totalCount++;
  }

  function byRate(a, b) {
    return b[1].rate - a[1].rate || b[1].total - a[1].total || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
  }

  function tick() {
    const now = performance.now();
    const dt = Math.max(0.001, (now - lastTick) / 1000);
    lastTick = now;
    for (const [topic, s] of stats) {
      s.rate = s.n / dt;
      if (s.n) s.last = now;
      s.n = 0;
      if (!s.rate && now - s.last > TOPIC_IDLE_MS) stats.delete(topic);
    }
    let ranked = [...stats];
    ranked.sort(byRate);
    if (ranked.length > MAX_TOPICS) {
      for (const [topic] of ranked.slice(MAX_TOPICS)) stats.delete(topic);
    }
    ranked = ranked.slice(0, TOP_RATES);
    const top = ranked.length ? ranked[0][1].rate : 0;
    const rows = ranked.map(([topic, s]) => {
      const tr = document.createElement("tr");
      tr.dataset.topic = topic;
      tr.dataset.testid = "rate-row";
      const name = span("", topic);
      name.title = topic;
      const td = document.createElement("td");
      td.className = "topic";
      td.append(name);
      // The bar behind the name: set through the CSSOM, which the page's CSP allows.
      td.style.setProperty("--w", (top ? (100 * s.rate) / top : 0).toFixed(1) + "%");
      const rate = document.createElement("td");
      rate.className = "num rate";
      rate.textContent = fmtRate(s.rate);
      const count = document.createElement("td");
      count.className = "num count";
      count.textContent = s.total.toLocaleString("en-US");
      tr.append(td, rate, count);
      return tr;
    });
    el.rates.replaceChildren(...rows);
    el.ratesEmpty.hidden = rows.length > 0;
    el.totalRate.textContent = fmtRate(totalWindow / dt);
    el.totalCount.textContent = totalCount.toLocaleString("en-US");
    el.total.dataset.rate = String(totalWindow / dt);
    el.total.dataset.count = String(totalCount);
    totalWindow = 0;
  }

  setInterval(tick, 1000);

  // -- start ----------------------------------------------------------------------------------
  renderSubs();
  connect();
})();
