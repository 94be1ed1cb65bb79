// The job list (status, progress, ETA; refreshed while a job is active) and the job form.
import {ApiError, getJSON, postJSON} from "./api.js";
import {errorBox, fill, formatSeconds, formatTime, h, progressBar, statusBadge} from "./dom.js";
import {architectureOptions, loadArchitectures} from "./teachers.js";

const ACTIVE = new Set(["queued", "running", "cancelling"]);
const PRESETS = [
  ["fast", "fast", "previews and tests: seconds to minutes"],
  ["balanced", "balanced", "small inputs on CPU in minutes"],
  ["quality", "quality", "Fast-DFKD's published CIFAR settings: hours on a GPU"],
];
const REFRESH_MS = 2000;

function jobRow(job) {
  const names = job.students.map((s) => s.name).join(", ");
  return h("tr", {dataset: {jobId: job.id, status: job.status}},
    h("td", {"data-label": "Job"}, h("a", {href: `#/jobs/${job.id}`, class: "job-link"}, h("code", {}, job.id))),
    h("td", {"data-label": "Status"}, statusBadge(job.status)),
    h("td", {"data-label": "Progress", class: "progress-cell"}, progressBar(job.progress),
      h("span", {class: "small muted"}, `${Math.round(job.progress * 100)}%`)),
    h("td", {"data-label": "ETA"}, ACTIVE.has(job.status) ? formatSeconds(job.eta_seconds) : "–"),
    h("td", {"data-label": "Students"}, names),
    h("td", {"data-label": "Preset"}, job.preset),
    h("td", {"data-label": "Created"}, formatTime(job.created_at)));
}

export function jobListPage(view) {
  const body = h("div", {id: "job-list"}, h("p", {class: "muted"}, "Loading…"));
  const more = h("div", {class: "more"});
  let timer = null, stopped = false, cursor = null, extra = [];

  async function load() {
    timer = null;
    try {
      const page = await getJSON("/v1/jobs?limit=50");
      if (stopped) return;
      cursor = page.next;
      const jobs = [...page.data, ...extra];
      fill(body, jobs.length
        ? h("div", {class: "table-wrap"}, h("table", {class: "stack", id: "jobs-table"},
            h("thead", {}, h("tr", {}, ["Job", "Status", "Progress", "ETA", "Students", "Preset", "Created"].map((t) => h("th", {}, t)))),
            h("tbody", {}, jobs.map(jobRow))))
        : h("p", {class: "muted", id: "no-jobs"}, "No job yet. ", h("a", {href: "#/jobs/new"}, "Create one"), "."));
      fill(more, cursor ? h("button", {type: "button", class: "btn", onclick: loadMore}, "Older jobs") : null);
      if (page.data.some((j) => ACTIVE.has(j.status))) timer = setTimeout(load, REFRESH_MS);
    } catch (exc) {
      if (!stopped) fill(body, errorBox(exc.message));
    }
  }
  async function loadMore() {
    const page = await getJSON(`/v1/jobs?limit=50&after=${encodeURIComponent(cursor)}`);
    extra = [...extra, ...page.data];
    cursor = page.next;
    if (!timer) load();
  }
  load();
  fill(view, h("div", {class: "page-head"}, h("h1", {}, "Jobs"), h("a", {href: "#/jobs/new", class: "btn primary"}, "New job")),
       h("section", {class: "card"}, body, more));
  return () => { stopped = true; if (timer) clearTimeout(timer); };
}

/** 128 random bits as hex (crypto.randomUUID needs a secure context; getRandomValues does not). */
function newIdempotencyKey() {
  return "dash-" + [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function studentRow(archs, remove) {
  const row = h("div", {class: "student-row"},
    h("select", {class: "student-arch", "aria-label": "student architecture"}, architectureOptions(archs, "resnet8")),
    h("input", {class: "student-name", placeholder: "name (optional)", "aria-label": "student name"}),
    h("button", {type: "button", class: "btn small", onclick: () => remove(row)}, "Remove"));
  return row;
}

export function newJobPage(view, {query}) {
  const message = h("div", {id: "job-message"});
  const teacherSelect = h("select", {name: "teacher", id: "job-teacher", required: true});
  const students = h("div", {id: "students"});
  const presets = h("fieldset", {class: "presets"}, h("legend", {}, "Preset"),
    PRESETS.map(([value, label, hint]) => h("label", {class: "preset"},
      h("input", {type: "radio", name: "preset", value, checked: value === "balanced"}),
      h("span", {}, h("strong", {}, label), h("small", {class: "muted"}, hint)))));
  const budgetValue = h("input", {type: "number", id: "budget-value", min: 1, step: "any", value: 300});
  const budgetUnit = h("select", {id: "budget-unit"}, h("option", {value: "seconds"}, "seconds"), h("option", {value: "epochs"}, "epochs"));
  const seed = h("input", {type: "number", id: "job-seed", placeholder: "random", step: 1});
  const hyper = h("textarea", {id: "job-hyperparameters", rows: 3, placeholder: '{"kd_batch_size": 64}', spellcheck: "false"});
  const submit = h("button", {type: "submit", class: "primary", id: "job-submit"}, "Create job");
  // One key per form: a double click or a retry after a lost answer makes no second job.
  let idempotencyKey = newIdempotencyKey();

  let archs = [];
  const remove = (row) => { if (students.children.length > 1) row.remove(); };
  const add = () => students.append(studentRow(archs, remove));

  Promise.all([loadArchitectures(), getJSON("/v1/teachers?limit=100")]).then(([a, teachers]) => {
    archs = a;
    add();
    if (!teachers.data.length) {
      fill(message, errorBox("Upload a teacher first."), h("a", {href: "#/teachers"}, "Teachers"));
      submit.disabled = true;
    }
    const wanted = query.get("teacher");
    fill(teacherSelect, teachers.data.map((t) => h("option", {value: t.id, selected: t.id === wanted},
      `${t.filename || t.id} · ${t.card.architecture} · ${t.card.input_shape.join("×")} · ${t.id.slice(-6)}`)));
  }).catch((exc) => fill(message, errorBox(exc.message)));

  const form = h("form", {class: "card", id: "job-form", novalidate: true},
    h("div", {class: "field"}, h("label", {for: "job-teacher"}, "Teacher"), teacherSelect),
    h("div", {class: "field"}, h("label", {}, "Students"), students,
      h("button", {type: "button", class: "btn small", id: "add-student", onclick: add}, "Add a student")),
    presets,
    h("div", {class: "grid"},
      h("div", {class: "field"}, h("label", {for: "budget-value"}, "Budget"), h("div", {class: "inline"}, budgetValue, budgetUnit)),
      h("div", {class: "field"}, h("label", {for: "job-seed"}, "Seed"), seed)),
    h("details", {}, h("summary", {}, "Hyperparameters (JSON, optional)"), hyper),
    message, submit);

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    fill(message);
    const body = {
      teacher_id: teacherSelect.value,
      students: [...students.children].map((row) => {
        const s = {architecture: row.querySelector(".student-arch").value};
        const name = row.querySelector(".student-name").value.trim();
        if (name) s.name = name;
        return s;
      }),
      preset: form.elements.namedItem("preset").value,
    };
    const amount = Number(budgetValue.value);
    if (!(amount > 0)) { fill(message, errorBox("budget: give a number above 0")); return; }
    if (budgetUnit.value === "epochs" && !Number.isInteger(amount)) { fill(message, errorBox("budget: epochs must be a whole number")); return; }
    body.budget = {[budgetUnit.value]: amount};
    if (seed.value !== "") body.seed = Number(seed.value);
    if (hyper.value.trim()) {
      try { body.hyperparameters = JSON.parse(hyper.value); } catch (exc) {
        fill(message, errorBox(`hyperparameters: not valid JSON (${exc.message})`)); return;
      }
    }
    submit.disabled = true;
    try {
      const job = await postJSON("/v1/jobs", body, {"Idempotency-Key": idempotencyKey});
      location.hash = `#/jobs/${job.id}`;
    } catch (exc) {
      // A refused request may be fixed and sent again: that is a new request, with a new key.
      if (exc instanceof ApiError && exc.status >= 400 && exc.status < 500) idempotencyKey = newIdempotencyKey();
      fill(message, errorBox(exc instanceof ApiError ? `${exc.message} (${exc.code})` : String(exc)));
      submit.disabled = false;
    }
  });
  fill(view, h("h1", {}, "New job"), form);
}
