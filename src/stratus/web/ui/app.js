// The dashboard's shell: sign-in, the page list, and switching pages on #/name without reload.
// Each page module exports render(root, page) and refreshes itself through page.every(); the
// API enforces what a credential may see, the navigation only hides pages its role never reaches.

import * as api from "./api.js";
import { h, refusal, replace } from "./dom.js";

// roles: the global roles whose navigation shows the page (team admins see "teamAdmin" pages);
// open: shown on a gateway without access control (--no-auth: no keys, usage or audit there).
const PAGES = [
  { id: "overview", title: "Overview", roles: ["admin", "auditor", "viewer"], open: true },
  { id: "models", title: "Models", roles: ["admin", "auditor", "viewer"], open: true },
  { id: "keys", title: "Keys", roles: ["*"] },
  { id: "users", title: "Users & teams", roles: ["admin", "auditor", "teamAdmin"] },
  { id: "usage", title: "Usage", roles: ["*"] },
  { id: "audit", title: "Audit log", roles: ["admin", "auditor"] },
  { id: "alerts", title: "Alerts", roles: ["admin", "auditor"] },
  { id: "playground", title: "Playground", roles: ["admin", "member"], open: true },
];

let me = null;
let current = null; // { stop() } of the page shown

function shownTo(page, who) {
  if (who.via === "none") return Boolean(page.open);
  const roles = new Set(who.roles);
  if (who.admin_of.length) roles.add("teamAdmin");
  return page.roles.includes("*") || page.roles.some((r) => roles.has(r));
}

function firstPage() {
  const page = PAGES.find((p) => shownTo(p, me));
  return page ? page.id : "keys";
}

class Page {
  constructor() {
    this.timers = [];
    this.ticks = [];
    this.controllers = [];
    this.stopped = false;
  }

  // Run fn now and every `ms` while the page is shown (live updates without reload). Each call
  // is an API request, and every API request with a credential leaves an audit record: nothing
  // is polled while the tab is hidden, and everything is refreshed when it shows again.
  every(ms, fn) {
    if (this.stopped) return; // the page was left while it was still loading
    const tick = async () => {
      if (this.stopped || document.hidden) return;
      try {
        await fn();
      } catch (error) {
        console.warn("refresh failed", error);
      }
    };
    tick();
    this.ticks.push(tick);
    this.timers.push(setInterval(tick, ms));
  }

  resume() {
    this.ticks.forEach((tick) => tick());
  }

  abortable() {
    const controller = new AbortController();
    this.controllers.push(controller);
    return controller;
  }

  stop() {
    this.stopped = true;
    this.timers.forEach(clearInterval);
    this.controllers.forEach((c) => c.abort());
  }
}

async function show() {
  if (!me) return;
  const id = location.hash.replace(/^#\/?/, "") || firstPage();
  const page = PAGES.find((p) => p.id === id) || PAGES.find((p) => p.id === firstPage());
  document.querySelectorAll("#nav a").forEach((a) => {
    a.setAttribute("aria-current", a.dataset.page === page.id ? "page" : "false");
  });
  if (current) current.stop();
  current = new Page();
  const main = document.getElementById("main");
  const root = h("section", { id: `page-${page.id}`, class: "page" }, h("h1", { text: page.title }));
  replace(main, root);
  const body = h("div", { class: "page-body" });
  root.append(body);
  try {
    const module = await import(`./pages/${page.id}.js`);
    await module.render(body, current, me);
  } catch (error) {
    body.append(refusal(error));
  }
}

function renderNav() {
  const nav = document.getElementById("nav");
  replace(
    nav,
    PAGES.filter((p) => shownTo(p, me)).map((p) =>
      h("a", { href: `#/${p.id}`, "data-page": p.id, text: p.title }),
    ),
  );
  const roles = me.roles.join(", ") + (me.admin_of.length ? `; team admin of ${me.admin_of.join(", ")}` : "");
  const who = me.via === "none" ? "access control is off (--no-auth)" : `${me.user} (${roles})`;
  replace(document.getElementById("who"), h("span", { text: who }));
}

function signedOut(message) {
  me = null;
  if (current) current.stop();
  api.signOut();
  replace(document.getElementById("main"));
  replace(document.getElementById("nav"));
  replace(document.getElementById("who"));
  document.getElementById("signout").hidden = true;
  document.getElementById("signin").hidden = false;
  document.getElementById("signin-error").textContent = message || "";
  document.getElementById("token").focus();
}

async function start() {
  try {
    me = await api.get("/admin/whoami");
  } catch (error) {
    signedOut(error.status === 401 ? "That credential was not accepted." : error.message);
    return;
  }
  document.getElementById("signin").hidden = true;
  document.getElementById("signout").hidden = me.via === "none";
  renderNav();
  await show();
}

document.getElementById("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  api.signIn(input.value.trim());
  input.value = "";
  start();
});
document.getElementById("signout").addEventListener("click", () => signedOut("Signed out."));
window.addEventListener("hashchange", show);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && current) current.resume();
});
api.onUnauthorized(() => signedOut("Your credential is no longer accepted (expired, revoked or rotated)."));

// Without a stored credential: a gateway without access control answers whoami as "anonymous"
// (via "none"), and then there is nothing to sign in with; any other answer asks for one.
async function boot() {
  if (api.credential()) return start();
  try {
    const response = await fetch("/admin/whoami", { cache: "no-store", credentials: "omit" });
    const who = response.ok ? await response.json() : null;
    if (who && who.via === "none") return start();
  } catch {
    // unreachable: ask for a credential; the sign-in says what went wrong
  }
  signedOut();
}

boot();
