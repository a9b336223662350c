// decider console: live parts in plain JavaScript (no build step, no framework).
// - the approvals queue and the decision feed follow server-sent events;
// - expiry countdowns tick every second;
// - the overview re-reads itself every few seconds and swaps its numbers and charts in place.
"use strict";

function fromHTML(html) {
  const t = document.createElement("template");
  t.innerHTML = html.trim();
  return t.content.firstElementChild;
}

function setLive(text, ok) {
  const el = document.getElementById("live-status");
  if (el) { el.textContent = text; el.classList.toggle("down", !ok); }
}

// A stream the console refused (429: this session has too many open) is closed for good, not
// reconnecting: say so, rather than "reconnecting…" forever.
function lost(src) {
  if (src.readyState === EventSource.CLOSED) setLive("not live: too many console tabs open; close one and reload", false);
  else setLive("reconnecting…", false);
}

function followApprovals(queue) {
  const src = new EventSource(queue.dataset.events);
  const empty = document.getElementById("queue-empty");
  const count = document.getElementById("pending-count");
  const refresh = () => {
    const n = queue.querySelectorAll("article.approval").length;
    if (count) count.textContent = String(n);
    if (empty) empty.hidden = n > 0;
  };
  src.addEventListener("open", () => setLive("live", true));
  src.addEventListener("error", () => lost(src));
  src.addEventListener("add", (ev) => {
    const card = fromHTML(ev.data);
    if (document.getElementById(card.id)) return;
    // Oldest first: ids sort by time, so insert before the first card with a larger id.
    const later = Array.from(queue.children).find((c) => c.dataset.decisionId > card.dataset.decisionId);
    queue.insertBefore(card, later || null);
    tick();
    refresh();
  });
  src.addEventListener("queue", (ev) => {
    const ids = new Set(JSON.parse(ev.data));
    for (const card of Array.from(queue.querySelectorAll("article.approval"))) {
      if (!ids.has(card.dataset.decisionId)) card.remove();   // resolved or expired elsewhere
    }
    refresh();
  });
}

function followFeed(feed) {
  const src = new EventSource(feed.dataset.events);
  src.addEventListener("open", () => setLive("live", true));
  src.addEventListener("error", () => lost(src));
  src.addEventListener("decision", (ev) => {
    const row = fromHTML("<table><tbody>" + ev.data + "</tbody></table>").querySelector("tr");
    if (feed.querySelector(`tr[data-decision-id="${row.dataset.decisionId}"]`)) return;
    feed.insertBefore(row, feed.firstElementChild);
    while (feed.children.length > 500) feed.lastElementChild.remove();
  });
}

function followOverview(box) {
  const every = Number(box.dataset.refresh) || 5000;
  const refresh = async () => {
    try {
      const r = await fetch(window.location.href, {credentials: "same-origin", headers: {"Accept": "text/html"}});
      if (!r.ok) throw new Error(String(r.status));
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.getElementById("overview");
      if (fresh) { box.replaceChildren(...fresh.childNodes); box.dataset.refreshed = String(Date.now()); }
      setLive("live", true);
    } catch (e) {
      setLive("reconnecting…", false);
    }
  };
  setInterval(refresh, every);
}

function tick() {
  const now = Date.now();
  for (const el of document.querySelectorAll("[data-expires-at]")) {
    const at = Date.parse(el.dataset.expiresAt);
    if (Number.isNaN(at)) continue;
    let s = Math.round((at - now) / 1000);
    if (s <= 0) { el.textContent = "expired"; el.classList.add("expired"); continue; }
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    el.textContent = "expires in " + (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
    el.classList.toggle("soon", at - now < 5 * 60 * 1000);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const queue = document.getElementById("queue");
  if (queue) followApprovals(queue);
  const feed = document.getElementById("feed");
  if (feed) followFeed(feed);
  const overview = document.getElementById("overview");
  if (overview) followOverview(overview);
  tick();
  setInterval(tick, 1000);
});
