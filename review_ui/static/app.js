// Portcullis review UI: live updates (server-sent events), honest connection state,
// countdowns, deliberate keyboard shortcuts. No framework; everything here is progressive
// enhancement: without it every page still works by reloading.
"use strict";

(function () {
  const page = document.body.dataset.page;
  const baseTitle = document.title;
  const byId = (id) => document.getElementById(id);

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

  // --- honest connection state ---------------------------------------------------------
  // "Live" is claimed only while the stream is open and the session is known to be valid.
  let state = "connecting";
  function setState(next, message) {
    state = next;
    const status = byId("live-status");
    if (status) {
      status.dataset.state = next;
      status.classList.toggle("on", next === "live");
      const text = status.querySelector(".live-text");
      if (text) text.textContent = { live: "Live", connecting: "Connecting…", down: "Offline", "signed-out": "Signed out" }[next];
    }
    const banner = byId("live-banner");
    if (!banner) return;
    banner.hidden = next === "live" || next === "connecting";
    byId("live-banner-text").textContent = message || "";
    byId("live-banner-signin").hidden = next !== "signed-out";
    byId("live-banner-reload").hidden = next !== "down";
  }

  function signedOut() {
    if (window.portcullisLive) window.portcullisLive.close();
    // Deciding from here would only bounce to the sign-in page: say so on the buttons too.
    document.querySelectorAll("#decide-form button, #confirm button").forEach((b) => { b.disabled = true; });
    setState("signed-out", "Your session has ended (signed out, expired or the gateway restarted). " +
      "This page no longer updates and decisions from it will not be accepted.");
  }

  // Asks the server whether this browser's session is still signed in: true, false, or
  // null when the server cannot be reached at all.
  async function probe() {
    try {
      const response = await fetch("/api/pending", { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) return false;
      return response.ok ? response : null;
    } catch (e) {
      return null;
    }
  }

  async function refreshCount() {
    const response = await probe();
    if (response === false) { signedOut(); return []; }
    if (!response) return [];
    const pending = (await response.json()).pending;
    const badge = byId("pending-count");
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

  // A fetch of a page fragment whose answer is the login page means the session ended.
  async function fetchPage(url) {
    let response;
    try {
      response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    } catch (e) {
      return null;
    }
    if (response.redirected && new URL(response.url).pathname === "/login") { signedOut(); return null; }
    return response.ok ? response.text() : null;
  }

  // --- the queue -------------------------------------------------------------------------
  let selected = null; // flow id of the row j/k selected
  function rows() { return Array.from(document.querySelectorAll("#queue-rows tr.hold")); }

  async function refreshQueue() {
    const body = byId("queue-rows");
    if (!body) return;
    const html = await fetchPage(body.dataset.src);
    if (html === null) return;
    const before = new Set(rows().map((r) => r.dataset.flowId));
    const focusedRow = document.activeElement && document.activeElement.closest && document.activeElement.closest("tr.hold");
    const focusedId = focusedRow ? focusedRow.dataset.flowId : null;
    // Server-rendered (escaped) rows: one template for the first paint and for updates.
    body.innerHTML = html;
    // Rows that arrived since the last paint are highlighted for a moment.
    if (initialised) rows().forEach((row) => { if (!before.has(row.dataset.flowId)) row.classList.add("new"); });
    select(selected, false);
    if (focusedId) {
      const again = body.querySelector(`tr[data-flow-id="${CSS.escape(focusedId)}"] a.open`);
      if (again) again.focus({ preventScroll: true });
    }
    tick();
  }
  let initialised = false;

  function select(flowId, focus) {
    const all = rows();
    all.forEach((r) => r.classList.remove("selected"));
    const row = all.find((r) => r.dataset.flowId === flowId);
    if (!row) { selected = null; return; }
    selected = flowId;
    row.classList.add("selected");
    if (focus) { const link = row.querySelector("a.open"); if (link) link.focus(); }
  }

  function move(step) {
    const all = rows();
    if (!all.length) return;
    const at = all.findIndex((r) => r.dataset.flowId === selected);
    const next = at < 0 ? (step > 0 ? 0 : all.length - 1) : Math.min(all.length - 1, Math.max(0, at + step));
    select(all[next].dataset.flowId, true);
  }

  // --- the review page ---------------------------------------------------------------------
  // Once the reviewer submits a form, a live update must not replace the page under it.
  let submitting = false;
  document.addEventListener("submit", () => { submitting = true; });

  // Replaces the live parts of the review page with the server's current version, in place:
  // the reviewer's typed comment is never thrown away, and a decision made by someone
  // else is shown where the buttons were (who, what, when).
  async function refreshReview() {
    const html = await fetchPage(window.location.pathname);
    if (html === null || submitting) return;
    const fresh = new DOMParser().parseFromString(html, "text/html");
    const focusedId = document.activeElement ? document.activeElement.id : "";
    document.querySelectorAll("[data-live][id]").forEach((el) => {
      const twin = fresh.getElementById(el.id);
      if (twin) el.replaceWith(document.importNode(twin, true));
    });
    if (focusedId && document.activeElement === document.body && byId(focusedId)) byId(focusedId).focus({ preventScroll: true });
    const review = byId("review");
    const freshReview = fresh.getElementById("review");
    if (review && freshReview) review.dataset.status = freshReview.dataset.status;
    const decide = byId("decide");
    const freshDecide = fresh.getElementById("decide");
    if (!decide || !freshDecide) return;
    const form = byId("decide-form");
    const freshForm = fresh.getElementById("decide-form");
    if (form && freshForm) return; // still ours to decide: keep the form (and its comment) as it is
    const comment = byId("comment");
    const typed = comment ? comment.value : "";
    const focusWasInside = decide.contains(document.activeElement);
    const replacement = document.importNode(freshDecide, true);
    if (form && !freshForm) {
      replacement.classList.add("decided-elsewhere");
      if (typed) {
        const kept = document.createElement("div");
        kept.className = "kept-comment";
        const label = document.createElement("label");
        label.textContent = "Your comment (not sent; copy it if you need it)";
        const area = document.createElement("textarea");
        area.id = "comment";
        area.readOnly = true;
        area.rows = 3;
        area.value = typed;
        label.append(area);
        kept.append(label);
        replacement.append(kept);
      }
    }
    decide.replaceWith(replacement);
    wireDecide();
    if (focusWasInside) { const heading = byId("decide-h"); if (heading) { heading.tabIndex = -1; heading.focus(); } }
    tick();
  }

  // The confirm step: a shortcut (or the Reject button without a comment) never decides alone.
  let pending = null;
  function commentMissing() {
    const form = byId("decide-form");
    const comment = byId("comment");
    return Boolean(form && form.dataset.commentRequired !== "false" && comment && !comment.value.trim());
  }

  function ask(action) {
    const confirm = byId("confirm");
    const button = byId(action);
    if (!confirm || !button) return;
    const comment = byId("comment");
    pending = action;
    confirm.hidden = false;
    const text = byId("confirm-text");
    if (action === "reject" && commentMissing()) {
      text.textContent = "Reject: write a comment for the agent first (it reads it), then confirm.";
      comment.focus();
      return;
    }
    text.textContent = action === "reject" ? "Reject this request and send your comment to the agent?"
      : "Approve this request? The gateway acts on it at once.";
    byId("confirm-yes").focus();
  }

  function cancel() {
    const confirm = byId("confirm");
    if (confirm) confirm.hidden = true;
    pending = null;
  }

  function confirmed() {
    if (!pending) return;
    if (pending === "reject" && commentMissing()) { ask("reject"); return; }
    const button = byId(pending);
    pending = null;
    const form = byId("decide-form");
    if (form && button) form.requestSubmit(button);
  }

  function wireDecide() {
    const reject = byId("reject");
    if (reject) reject.addEventListener("click", (event) => {
      if (commentMissing()) { event.preventDefault(); ask("reject"); }
    });
    const yes = byId("confirm-yes");
    if (yes) yes.addEventListener("click", confirmed);
    const no = byId("confirm-no");
    if (no) no.addEventListener("click", cancel);
  }

  function unfold() {
    const button = byId("body-unfold");
    if (!button) return;
    button.addEventListener("click", () => {
      const fold = byId("body-fold");
      const folded = fold.classList.toggle("folded");
      button.setAttribute("aria-expanded", String(!folded));
      button.textContent = folded ? button.textContent.replace(/^Fold/, "Show all") : button.textContent.replace(/^Show all/, "Fold");
      if (!folded) byId("body").focus();
    });
  }

  // --- the live feed -------------------------------------------------------------------------
  function onChange(event) {
    if (submitting) return;
    refreshCount().then(notifyNew);
    if (page === "queue") refreshQueue();
    if (page === "review") {
      const review = byId("review");
      let data = {};
      try { data = JSON.parse(event.data); } catch (e) { /* keepalive or empty */ }
      if (review && data.flow_id === review.dataset.flowId) refreshReview();
      else if (review) refreshNext();
    }
    if (page === "decisions" && event.type !== "held") refreshLive();
    if (page === "grants" && event.type === "grants") refreshLive(); // made, used or revoked
  }

  // Replaces the page's [data-live] parts with the server's, keeping keyboard focus where
  // it was (the same row's control) instead of sending it back to the page start.
  async function refreshLive() {
    const html = await fetchPage(window.location.pathname + window.location.search);
    if (html === null || submitting) return;
    const fresh = new DOMParser().parseFromString(html, "text/html");
    const active = document.activeElement;
    const row = active && active.closest ? active.closest("[data-grant-id]") : null;
    const rowId = row ? row.dataset.grantId : null;
    document.querySelectorAll("[data-live][id]").forEach((el) => {
      const twin = fresh.getElementById(el.id);
      if (twin) el.replaceWith(document.importNode(twin, true));
    });
    if (rowId && document.activeElement !== active) {
      // The same control of the same grant (a use's link, Revoke), else the grant's button.
      const freshRow = document.querySelector(`[data-grant-id="${CSS.escape(rowId)}"]`);
      const same = (el) => el.tagName === active.tagName && el.getAttribute("href") === active.getAttribute("href") &&
        el.textContent === active.textContent;
      const again = freshRow && (Array.from(freshRow.querySelectorAll("a[href], button")).find(same) ||
        freshRow.querySelector("button"));
      if (again) again.focus({ preventScroll: true });
    }
    tick();
  }

  async function refreshNext() {
    const html = await fetchPage(window.location.pathname);
    if (html === null) return;
    const fresh = new DOMParser().parseFromString(html, "text/html");
    const mine = document.querySelector(".next, #no-next-hold");
    const theirs = fresh.querySelector(".next, #no-next-hold");
    if (mine && theirs && !mine.contains(document.activeElement)) mine.replaceWith(document.importNode(theirs, true));
  }

  function connect() {
    if (!byId("live-status")) return; // not signed in
    // EventSource reconnects by itself and sends Last-Event-ID, so nothing is missed.
    const since = encodeURIComponent(document.body.dataset.eventsSince || "");
    const source = new EventSource("/api/events?last_event_id=" + since);
    source.addEventListener("open", () => { if (state !== "signed-out") setState("live"); });
    source.addEventListener("error", async () => {
      if (state === "signed-out") return;
      setState("connecting");
      // Why did it drop? A 401 (session over) or a server that is gone look the same here.
      const answer = await probe();
      if (answer === false) signedOut();
      else if (answer === null) setState("down", "The gateway's review UI is not reachable (restarting?). Retrying…; " +
        "what you see may be out of date.");
      else if (source.readyState === EventSource.CLOSED) { source.close(); window.setTimeout(connect, 1000); }
    });
    source.addEventListener("signed_out", signedOut);
    source.addEventListener("hello", () => {
      refreshCount().then(notifyNew);
      if (page === "queue") refreshQueue().then(() => { initialised = true; });
    });
    ["held", "updated", "decided", "grants"].forEach((kind) => source.addEventListener(kind, onChange));
    window.portcullisLive = source;
  }

  // --- keyboard --------------------------------------------------------------------------------
  function typing(target) {
    const tag = (target.tagName || "").toLowerCase();
    return tag === "input" || tag === "textarea" || tag === "select" || target.isContentEditable;
  }

  function shortcuts() {
    document.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey) {
        if (event.key === "Enter" && pending && byId("comment") === event.target) { event.preventDefault(); confirmed(); }
        return;
      }
      if (event.key === "Escape" && pending) { event.preventDefault(); cancel(); return; }
      if (typing(event.target)) return;
      const help = byId("help");
      if (event.key === "?") { event.preventDefault(); if (help && !help.open) help.showModal(); return; }
      if (help && help.open) return;
      if (page === "queue" && (event.key === "j" || event.key === "k")) { event.preventDefault(); move(event.key === "j" ? 1 : -1); return; }
      if (page === "queue" && event.key === "Enter" && selected && !event.target.closest("a, button")) {
        const link = document.querySelector(`tr[data-flow-id="${CSS.escape(selected)}"] a.open`);
        if (link) { event.preventDefault(); link.click(); }
        return;
      }
      if (page === "review" && (event.key === "a" || event.key === "r") && byId(event.key === "a" ? "approve" : "reject")) {
        event.preventDefault();
        ask(event.key === "a" ? "approve" : "reject");
      }
    });
    const close = byId("help-close");
    if (close) close.addEventListener("click", (event) => { event.preventDefault(); byId("help").close(); });
    const reload = byId("live-banner-reload");
    if (reload) reload.addEventListener("click", () => window.location.reload());
  }

  function notificationsButton() {
    const button = byId("enable-notifications");
    if (!button || !window.Notification || Notification.permission !== "default") return;
    button.hidden = false;
    button.addEventListener("click", () => Notification.requestPermission().then(() => { button.hidden = true; }));
  }

  document.addEventListener("DOMContentLoaded", () => {
    tick();
    setInterval(tick, 1000);
    connect();
    shortcuts();
    if (page === "review") { wireDecide(); unfold(); }
    if (page === "queue") notificationsButton();
  });
})();
