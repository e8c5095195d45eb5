// GET /api/stats in four tiles. Change events do not carry statistics, so the panel reloads
// after changes, at most once a second however many arrive.

import { api } from "../api.js";
import { h } from "../dom.js";

const INTERVAL_MS = 1000;

export function statsPanel() {
  const tiles = {
    total: h("strong", {}, "–"),
    active: h("strong", {}, "–"),
    completed: h("strong", {}, "–"),
    avg_priority: h("strong", {}, "–"),
  };
  const tile = (key, label) =>
    h("div", { class: `tile tile-${key}` }, tiles[key], h("span", {}, label));
  const el = h(
    "section",
    { class: "stats", "aria-label": "Statistics" },
    tile("total", "Items"),
    tile("active", "Active"),
    tile("completed", "Completed"),
    tile("avg_priority", "Avg priority"),
  );
  let timer = null;
  let again = false;
  let stopped = false;

  async function load() {
    try {
      const stats = await api.stats();
      if (stopped) return;
      tiles.total.textContent = stats.total.toLocaleString();
      tiles.active.textContent = stats.active.toLocaleString();
      tiles.completed.textContent = stats.completed.toLocaleString();
      tiles.avg_priority.textContent = stats.avg_priority.toFixed(1);
    } catch {
      // Statistics are a courtesy: the next change or reconnection tries again.
    }
  }

  function refreshSoon() {
    if (timer) {
      again = true;
      return;
    }
    load();
    timer = setTimeout(function tick() {
      timer = null;
      if (again && !stopped) {
        again = false;
        refreshSoon();
      }
    }, INTERVAL_MS);
  }

  return {
    el,
    refreshSoon,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
