// Portcullis review UI: live updates (server-sent events), countdowns, shortcuts,
// JSON highlighting. No framework; everything here is progressive enhancement.
"use strict";

(function () {
  const page = document.body.dataset.page;
  const baseTitle = document.title;

  function fmt(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 60) return seconds + "s";
    if (seconds < 3600) return Math.floor(seconds / 60) + "m " + String(seconds % 60).padStart(2, "0") + "s";
    return Math.floor(seconds / 3600) + "h " + String(Math.floor((seconds % 3600) / 60)).padStart(2, "0") + "m";
  }

  function tick() {
    const now = Date.now() / 1000;
    document.querySelectorAll(".countdown[data-deadline]").forEach((el) => {
      const left = parseFloat(el.dataset.deadline) - now;
      el.textContent = left > 0 ? fmt(left) : "expiring…";
      el.classList.toggle("urgent", left < 60);
    });
    document.querySelectorAll(".age[data-since]").forEach((el) => {
      el.textContent = fmt(now - parseFloat(el.dataset.since));
    });
  }

  async function refreshCount() {
    const response = await fetch("/api/pending", { credentials: "same-origin" });
    if (!response.ok) return [];
    const pending = (await response.json()).pending;
    const badge = document.getElementById("pending-count");
    if (badge) badge.textContent = pending.length ? String(pending.length) : "";
    document.title = (pending.length ? "(" + pending.length + ") " : "") + baseTitle;
    return pending;
  }

  const seen = new Set();
  function notifyNew(pending) {
    pending.forEach((hold) => {
      if (seen.has(hold.flow_id)) return;
      seen.add(hold.flow_id);
      if (window.Notification && Notification.permission === "granted" && document.hidden) {
        new Notification("Portcullis: " + hold.method + " held", { body: hold.reason + "\n" + hold.url, tag: hold.flow_id });
      }
    });
  }

  async function refreshQueue() {
    const body = document.getElementById("queue-rows");
    if (!body) return;
    const response = await fetch(body.dataset.src, { credentials: "same-origin" });
    if (response.ok) {
      // Server-rendered (escaped) rows: one template for the first paint and for updates.
      body.innerHTML = await response.text();
      tick();
    }
  }

  // Once the reviewer submits a form, a live update must not reload the page: the
  // reload would cancel the submission's own navigation (and its confirmation message).
  let submitting = false;
  document.addEventListener("submit", () => { submitting = true; });

  function onChange(event) {
    if (submitting) return;
    refreshCount().then(notifyNew);
    if (page === "queue") refreshQueue();
    if (page === "review") {
      const review = document.getElementById("review");
      let data = {};
      try { data = JSON.parse(event.data); } catch (e) { /* keepalive or empty */ }
      if (review && data.flow_id === review.dataset.flowId) {
        const comment = document.getElementById("comment");
        if (event.type === "decided" || !comment || comment.value === "") window.location.reload();
      }
    }
    if (page === "decisions" && event.type !== "held") window.location.reload();
  }

  function connect() {
    const status = document.getElementById("live-status");
    if (!status) return; // not signed in
    // EventSource reconnects by itself and sends Last-Event-ID, so nothing is missed.
    // Start from the state the page was rendered with; on reconnects the browser sends
    // Last-Event-ID itself, which the server prefers over this parameter.
    const since = encodeURIComponent(document.body.dataset.eventsSince || "");
    const source = new EventSource("/api/events?last_event_id=" + since);
    source.addEventListener("open", () => { status.classList.add("on"); status.title = "Live"; });
    source.addEventListener("error", () => { status.classList.remove("on"); status.title = "Reconnecting…"; });
    source.addEventListener("hello", () => { refreshCount().then(notifyNew); if (page === "queue") refreshQueue(); });
    ["held", "updated", "decided", "grants"].forEach((kind) => source.addEventListener(kind, onChange));
    window.portcullisLive = source;
  }

  function shortcuts() {
    document.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      const tag = (event.target.tagName || "").toLowerCase();
      if (tag === "input" || tag === "textarea" || tag === "select") return;
      const id = event.key === "a" ? "approve" : event.key === "r" ? "reject" : null;
      const button = id && document.getElementById(id);
      if (button) { event.preventDefault(); button.click(); }
    });
  }

  function highlightJson() {
    const pre = document.querySelector("pre.json");
    if (!pre) return;
    const text = pre.textContent;
    const token = /("(?:\\.|[^"\\])*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
    const out = document.createDocumentFragment();
    let last = 0;
    let match;
    const span = (cls, value) => { const s = document.createElement("span"); s.className = cls; s.textContent = value; return s; };
    while ((match = token.exec(text))) {
      out.append(text.slice(last, match.index));
      if (match[1]) {
        out.append(span(match[2] ? "j-key" : "j-str", match[1]));
        if (match[2]) out.append(match[2]);
      } else if (match[3]) {
        out.append(span("j-lit", match[3]));
      } else {
        out.append(span("j-num", match[4]));
      }
      last = token.lastIndex;
    }
    out.append(text.slice(last));
    pre.textContent = "";
    pre.append(out);
  }

  function notificationsButton() {
    const button = document.getElementById("enable-notifications");
    if (!button || !window.Notification || Notification.permission !== "default") return;
    button.hidden = false;
    button.addEventListener("click", () => Notification.requestPermission().then(() => { button.hidden = true; }));
  }

  document.addEventListener("DOMContentLoaded", () => {
    tick();
    setInterval(tick, 1000);
    connect();
    if (page === "review") { shortcuts(); highlightJson(); }
    if (page === "queue") notificationsButton();
  });
})();
