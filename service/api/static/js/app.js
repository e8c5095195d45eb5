// The Duckcast browser app: signs in with the session cookie, then shows the live item list
// (#/) or the protobuf event stream (#/stream).

import { api } from "./api.js";
import { authView } from "./views/auth.js";
import { itemsView } from "./views/items.js";
import { streamView } from "./views/stream.js";
import { h } from "./dom.js";

const main = document.getElementById("view");
const tabs = document.querySelector(".tabs");
const account = document.querySelector(".account");
const conn = document.querySelector(".conn");
const STATES = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

let current = null;

const app = {
  user: null,

  // The connection state of the view's stream, in the header's role="status" element.
  setConnection(state) {
    conn.hidden = !state;
    conn.dataset.state = state || "";
    conn.querySelector(".conn-text").textContent = STATES[state] || "";
  },

  signedIn(user) {
    app.user = user;
    show();
  },

  sessionEnded(message = "Your session has ended. Sign in again.") {
    app.user = null;
    show(message);
  },
};

function show(notice = null) {
  current?.unmount();
  current = null;
  app.setConnection(null);
  main.replaceChildren();
  const signedIn = app.user !== null;
  tabs.hidden = account.hidden = !signedIn;
  if (!signedIn) {
    current = authView(main, app, notice);
    return;
  }
  account.querySelector(".who").textContent = app.user.username;
  const name = location.hash === "#/stream" ? "stream" : "items";
  for (const link of tabs.querySelectorAll("a[data-view]")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  current = (name === "stream" ? streamView : itemsView)(main, app);
}

account.querySelector("[data-action=sign-out]").addEventListener("click", async () => {
  // The cookie is cleared by the answer; if the server is unreachable we still leave.
  await api.logout().catch(() => null);
  app.sessionEnded("You are signed out.");
});

window.addEventListener("hashchange", () => show());

async function start(attempt = 0) {
  try {
    app.user = await api.me();
  } catch (error) {
    if (error.status !== 401) {
      const retry = Math.min(1000 * 2 ** attempt, 10000);
      main.replaceChildren(
        h("p", { class: "loading" }, "Cannot reach Duckcast yet; trying again…"),
      );
      setTimeout(() => start(attempt + 1), retry);
      return;
    }
    app.user = null;
  }
  show();
}

start();
