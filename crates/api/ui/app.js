// The dashboard's shell: the routes (`#/services`, `#/services/ORG/APP/NAME`, `#/regions`,
// `#/deployments`, `#/logs`, `#/logs/ORG/APP/NAME`), signing in and out, loading a page and refreshing it while live
// updates are on, and keeping keyboard focus where it was when a page is redrawn.

import { ApiError, forget, get, token } from "./api.js";
import { h } from "./dom.js";
import { clock } from "./format.js";
import { deployments } from "./deployments.js";
import { logs } from "./logs.js";
import { regions } from "./regions.js";
import { service } from "./service.js";
import { services } from "./services.js";
import { signIn } from "./signin.js";

const HOME = "#/services";
const LABEL = "[a-z0-9-]+";
const ROUTES = [
  { pattern: /^#\/services$/, page: services },
  { pattern: new RegExp(`^#/services/(${LABEL})/(${LABEL})/(${LABEL})$`), page: service },
  { pattern: /^#\/regions$/, page: regions },
  { pattern: /^#\/deployments$/, page: deployments },
  { pattern: /^#\/logs$/, page: logs },
  { pattern: new RegExp(`^#/logs/(${LABEL})/(${LABEL})/(${LABEL})$`), page: logs },
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const session = document.getElementById("session");
const whoText = document.getElementById("who");
const liveButton = document.getElementById("live");
const updated = document.getElementById("updated");

/** Who the token belongs to (`GET /v1/whoami`), once signed in. */
let who = null;
/** Whether pages refresh themselves. */
let live = true;
/** Bumped by every navigation: the late answer of an earlier page is dropped. */
let generation = 0;
/** The page shown: `{page, params, generation}`. */
let current = null;
let timer = null;
let loads = 0;

function setTitle(title) {
  document.title = `${title} · Meridian`;
}

function context() {
  return {
    who,
    setTitle,
    refresh: () => {
      clearTimeout(timer);
      load(false);
    },
  };
}

function route() {
  if (!location.hash) history.replaceState(null, "", HOME);
  for (const r of ROUTES) {
    const match = location.hash.match(r.pattern);
    if (match) return { page: r.page, params: match.slice(1) };
  }
  return null;
}

/** Lets the page shown go (a page that streams stops reading). */
function leavePage() {
  if (current && current.page.leave) current.page.leave();
}

function showSignIn(reason) {
  leavePage();
  generation += 1;
  clearTimeout(timer);
  who = null;
  nav.hidden = true;
  session.hidden = true;
  updated.textContent = "";
  setTitle("Sign in");
  main.dataset.page = "signin";
  delete main.dataset.loaded;
  main.replaceChildren(signIn((answer) => {
    who = answer;
    navigate();
  }, reason));
  document.getElementById("token").focus();
}

function showSession(pageName) {
  nav.hidden = false;
  session.hidden = false;
  whoText.textContent = who.admin ? "Admin token: every org" : `Org token: ${who.org}`;
  for (const link of nav.querySelectorAll("a")) {
    const here = link.dataset.page === pageName;
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

/** A selector finding `node` again in a redrawn page: by its id, else by its link. */
function selectorOf(node) {
  if (!node || node === main || !main.contains(node)) return null;
  if (node.id) return `#${CSS.escape(node.id)}`;
  const href = node.getAttribute("href");
  return href ? `a[href="${CSS.escape(href)}"]` : null;
}

/** Puts `nodes` in place of the page; a redraw keeps the focus and scroll where they were. */
function show(nodes, first) {
  const focused = document.activeElement;
  const hadFocus = main.contains(focused);
  const selector = first ? null : selectorOf(focused);
  const scroll = window.scrollY;
  main.replaceChildren(...[nodes].flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
  if (first) return;
  window.scrollTo(0, scroll);
  const again = selector && main.querySelector(selector);
  if (again) {
    again.focus();
    // A field being typed in keeps its caret.
    if (typeof focused.selectionStart === "number" && typeof again.setSelectionRange === "function") {
      again.setSelectionRange(focused.selectionStart, focused.selectionEnd);
    }
  } else if (hadFocus && !main.contains(document.activeElement)) main.focus();
}

function failed(error, first) {
  if (error instanceof ApiError && error.status === 401) {
    forget();
    showSignIn(`Your token was refused (${error.message}). Sign in again.`);
    return;
  }
  if (first) {
    main.dataset.error = error.message;
    show(h("div", { class: "failure", role: "alert" },
      h("h1", null, "This page could not be loaded"),
      h("p", null, error.message),
      h("button", { type: "button", onclick: () => navigate() }, "Try again")), true);
    return;
  }
  const old = document.getElementById("refresh-error");
  if (old) old.remove();
  main.prepend(h("p", { id: "refresh-error", class: "error", role: "alert" },
    `Could not refresh: ${error.message}. ${updated.textContent || ""}`));
}

function schedule() {
  clearTimeout(timer);
  const interval = current && current.page.interval;
  if (!live || !interval) return;
  timer = setTimeout(() => {
    // Not while nobody looks, nor under an open choice (a redraw would close it).
    const choosing = document.activeElement && document.activeElement.tagName === "SELECT";
    if (document.hidden || choosing) schedule();
    else load(false);
  }, interval);
}

async function load(first) {
  const { page, params, generation: at } = current;
  try {
    const data = await page.load(params, context());
    if (at !== generation) return;
    show(page.render(data, context(), params), first);
    delete main.dataset.error;
    updated.textContent = `Updated at ${clock(Date.now() / 1000)} UTC.`;
    loads += 1;
    main.dataset.loaded = String(loads);
  } catch (error) {
    if (at !== generation) return;
    failed(error, first);
    if (!current || at !== generation) return;
  }
  schedule();
}

async function navigate() {
  leavePage();
  clearTimeout(timer);
  generation += 1;
  const at = generation;
  if (!token()) {
    showSignIn();
    return;
  }
  if (!who) {
    try {
      who = await get("/v1/whoami");
    } catch (error) {
      if (at === generation) failed(error, true);
      return;
    }
    if (at !== generation) return;
  }
  const found = route();
  showSession(found && found.page.name);
  delete main.dataset.loaded;
  delete main.dataset.error;
  if (!found) {
    current = null;
    main.dataset.page = "missing";
    setTitle("Not found");
    show([h("h1", null, "No such page"), h("p", null, h("a", { href: HOME }, "Go to the services"))], true);
    main.focus();
    return;
  }
  current = { ...found, generation: at };
  main.dataset.page = found.page.name;
  setTitle(found.page.title);
  show(h("p", { class: "loading" }, "Loading…"), true);
  main.focus();
  await load(true);
}

document.getElementById("skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
document.getElementById("signout").addEventListener("click", () => {
  forget();
  showSignIn("Signed out.");
});
liveButton.addEventListener("click", () => {
  live = !live;
  liveButton.setAttribute("aria-pressed", String(live));
  if (live && current) load(false);
  else clearTimeout(timer);
});
window.addEventListener("hashchange", navigate);
navigate();
