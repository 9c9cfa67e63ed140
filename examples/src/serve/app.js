// orch serve: keeps a run's page up with its journal through the page's
// event stream. Without it the page is the run as it was when loaded.
"use strict";
(function () {
  const body = document.body;
  const events = body.dataset.events;
  if (!events || !window.EventSource) return;
  const live = document.getElementById("live");
  const say = (text) => { if (live) live.textContent = text; };
  let decisions = body.dataset.decisions === undefined ? null : Number(body.dataset.decisions);

  function notice(html) {
    let n = document.getElementById("notice");
    if (!n) {
      n = document.createElement("p");
      n.id = "notice";
      n.className = "notice";
      n.setAttribute("role", "status");
      document.querySelector("main").prepend(n);
    }
    n.innerHTML = html;
  }

  // The decision queue, fetched again when its count changes, unless the
  // person is writing an answer there.
  async function refreshDecisions() {
    const section = document.getElementById("decisions");
    if (!section) return;
    const busy = section.contains(document.activeElement) ||
      Array.from(section.querySelectorAll("textarea")).some((t) => t.value !== "");
    if (busy) {
      notice('The decisions changed. <a href="">Reload</a> when your answer is sent.');
      return;
    }
    const r = await fetch(body.dataset.decisionsUrl, { credentials: "same-origin" });
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    const fresh = doc.getElementById("decisions");
    if (fresh) section.replaceWith(fresh);
  }

  // A duration as the server writes it.
  function took(ms) {
    const s = Math.floor(ms / 1000);
    const pad = (n) => String(n).padStart(2, "0");
    if (s < 1) return ms + " ms";
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + "m " + pad(s % 60) + "s";
    return Math.floor(s / 3600) + "h " + pad(Math.floor(s / 60) % 60) + "m";
  }
  let clock = null;
  function tick() {
    const el = document.getElementById("elapsed");
    if (el && clock && clock.started) el.textContent = took((clock.finished || Date.now()) - clock.started);
  }
  setInterval(tick, 1000);

  function apply(msg) {
    for (const t of msg.tickets) {
      for (const el of [document.getElementById("t-" + t.id), document.getElementById("row-" + t.id)]) {
        if (el) el.dataset.status = t.status;
      }
      const cell = document.getElementById("st-" + t.id);
      if (cell) cell.textContent = t.label;
      const node = document.getElementById("t-" + t.id);
      const title = node && node.querySelector("title");
      if (title) title.textContent = node.dataset.name + " (" + t.label + ")";
    }
    const s = msg.summary;
    for (const [name, n] of s.counts) {
      const dd = document.querySelector('[data-count="' + name + '"]');
      if (dd) dd.textContent = n;
    }
    const set = (id, text) => { const el = document.getElementById(id); if (el) el.textContent = text; };
    set("run-status", s.status);
    set("events", s.events);
    const call = document.getElementById("call");
    if (call && s.call) { call.textContent = s.call; call.dataset.call = s.call; }
    clock = { started: s.started, finished: s.finished };
    tick();
    set("cost", s.cost);
    set("tokens", s.tokens);
    if (decisions !== null && s.decisions !== decisions) {
      decisions = s.decisions;
      refreshDecisions();
    }
    say("Live: " + s.events + " events.");
  }

  const source = new EventSource(events);
  for (const kind of ["snapshot", "update"]) {
    source.addEventListener(kind, (e) => apply(JSON.parse(e.data)));
  }
  source.addEventListener("problem", (e) => say(e.data));
  source.onerror = () => say("Reconnecting to the journal…");
  source.onopen = () => say("Live.");
})();
