// The dashboard's shell: sign-in, navigation and a hash router (#/jobs, #/jobs/new,
// #/jobs/<id>, #/teachers). Each page is a function (view, context) -> cleanup?.
import {ApiError, clearKey, getJSON, getKey, setKey} from "./api.js";
import {errorBox, fill, h} from "./dom.js";
import {jobPage} from "./job.js";
import {jobListPage, newJobPage} from "./jobs.js";
import {teachersPage} from "./teachers.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
let cleanup = null;
let notice = null;  // a message for the sign-in page (e.g. the key was refused)

function signInPage() {
  const input = h("input", {id: "api-key", type: "password", name: "api-key", autocomplete: "off",
                            placeholder: "dfk_…", required: true, spellcheck: "false"});
  const message = h("div", {id: "sign-in-message"}, notice ? errorBox(notice) : null);
  notice = null;
  const form = h("form", {class: "card narrow", id: "sign-in-form"},
    h("h1", {}, "Sign in"),
    h("p", {class: "muted"}, "Use an API key (", h("code", {}, "dfmscd keys create --name you"),
      "). It is kept in this tab's session storage only and sent as ", h("code", {}, "Authorization: Bearer"), "."),
    h("label", {for: "api-key"}, "API key"), input, message,
    h("button", {type: "submit", class: "primary", id: "sign-in"}, "Sign in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    fill(message);
    try {
      await getJSON("/v1/teachers?limit=1", {key});  // proves the key before keeping it
    } catch (exc) {
      fill(message, errorBox(exc instanceof ApiError ? exc.message : String(exc)));
      return;
    }
    setKey(key);
    if (!location.hash || location.hash === "#/sign-in") location.hash = "#/jobs";
    else route();
  });
  fill(view, form);
  input.focus();
}

const ROUTES = [
  [/^#\/jobs\/new$/, "new", () => newJobPage],
  [/^#\/jobs\/([^/]+)$/, "jobs", () => jobPage],
  [/^#\/jobs$/, "jobs", () => jobListPage],
  [/^#\/teachers$/, "teachers", () => teachersPage],
];

function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  if (!getKey()) {
    nav.hidden = true;
    signInPage();
    return;
  }
  nav.hidden = false;
  const [hash, query] = (location.hash || "#/jobs").split("?", 2);
  for (const [pattern, section, page] of ROUTES) {
    const match = pattern.exec(hash);
    if (!match) continue;
    for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.dataset.nav === section);
    fill(view);
    cleanup = page()(view, {params: match.slice(1).map(decodeURIComponent), query: new URLSearchParams(query || "")}) || null;
    return;
  }
  location.hash = "#/jobs";
}

document.getElementById("sign-out").addEventListener("click", () => {
  clearKey();
  location.hash = "#/sign-in";
  route();
});

window.addEventListener("dfmscd:unauthorized", (e) => {
  // A revoked or wrong key: back to the sign-in page with the API's reason.
  if (!getKey()) return;
  clearKey();
  notice = e.detail;
  route();
});

window.addEventListener("hashchange", route);
route();
