// Teachers: the list and an upload card (drop zone or file picker + a model card form that
// checks what the API checks, so most mistakes are named before anything is sent).
import {ApiError, getJSON, request} from "./api.js";
import {errorBox, fill, formatBytes, formatTime, h} from "./dom.js";

const MIN_SIDE = 8, MAX_SIDE = 224, MAX_CLASSES = 10000;

/** Architecture names for a <select>, cached for the tab's life. */
let architectures = null;
export async function loadArchitectures() {
  if (!architectures) {
    const body = await getJSON("/v1/architectures");
    architectures = body.data;
  }
  return architectures;
}

export function architectureOptions(list, selected) {
  const groups = new Map();
  for (const a of list) {
    if (!groups.has(a.source)) groups.set(a.source, []);
    groups.get(a.source).push(a);
  }
  return [...groups].map(([source, items]) => h("optgroup", {label: source},
    items.map((a) => h("option", {value: a.name, selected: a.name === selected}, a.name))));
}

function parseList(text) {
  const parts = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  return parts.map(Number);
}

/** The card from the form, or an error message worded like the API's (dfmscd/io/card.py). */
export function cardFromForm(form, names) {
  const f = Object.fromEntries(["architecture", "num_classes", "channels", "height", "width", "mean", "std"]
    .map((n) => [n, form.elements.namedItem(n)]));
  const architecture = f.architecture.value;
  if (!names.has(architecture)) return {error: `architecture: unknown architecture ${JSON.stringify(architecture)}`};
  const numClasses = Number(f.num_classes.value);
  if (!Number.isInteger(numClasses) || numClasses < 2 || numClasses > MAX_CLASSES)
    return {error: `num_classes: must be a whole number between 2 and ${MAX_CLASSES}`};
  const c = Number(f.channels.value), height = Number(f.height.value), width = Number(f.width.value);
  if (![1, 3].includes(c)) return {error: `input_shape: channels must be 1 or 3, got ${f.channels.value}`};
  if (!Number.isInteger(height) || !Number.isInteger(width)) return {error: "input_shape: height and width must be whole numbers"};
  if (height !== width) return {error: `input_shape: input must be square, got ${height}x${width}`};
  if (height < MIN_SIDE || height > MAX_SIDE)
    return {error: `input_shape: input side must be between ${MIN_SIDE} and ${MAX_SIDE}, got ${height}`};
  const mean = parseList(f.mean.value), std = parseList(f.std.value);
  if (mean.some((x) => !isFinite(x)) || std.some((x) => !isFinite(x))) return {error: "mean/std: must be finite numbers"};
  if (mean.length !== c || std.length !== c)
    return {error: `mean and std need one value per channel (${c}), got ${mean.length} and ${std.length}`};
  if (std.some((s) => s <= 0)) return {error: "std values must be > 0"};
  return {card: {architecture, num_classes: numClasses, input_shape: [c, height, width], mean, std}};
}

function teacherRow(t) {
  const card = t.card || {};
  return h("tr", {dataset: {teacherId: t.id}},
    h("td", {"data-label": "Teacher"}, h("span", {class: "cell-stack"}, h("code", {}, t.id),
      h("span", {class: "muted small"}, t.filename || ""))),
    h("td", {"data-label": "Architecture"}, card.architecture),
    h("td", {"data-label": "Classes"}, card.num_classes),
    h("td", {"data-label": "Input"}, (card.input_shape || []).join("×")),
    h("td", {"data-label": "Size"}, formatBytes(t.size_bytes)),
    h("td", {"data-label": "Uploaded"}, formatTime(t.created_at)),
    h("td", {"data-label": ""}, h("a", {href: `#/jobs/new?teacher=${encodeURIComponent(t.id)}`, class: "btn small"}, "New job")));
}

export function teachersPage(view) {
  const list = h("div", {id: "teacher-list"}, h("p", {class: "muted"}, "Loading…"));
  const fileInput = h("input", {type: "file", id: "teacher-file", name: "file", accept: ".safetensors,.pt,.pth"});
  const fileLabel = h("span", {id: "teacher-file-name", class: "muted"}, "no file chosen");
  let chosen = null;
  const choose = (file) => {
    chosen = file || null;
    fill(fileLabel, chosen ? `${chosen.name} (${formatBytes(chosen.size)})` : "no file chosen");
    drop.classList.toggle("has-file", !!chosen);
  };
  const drop = h("div", {class: "drop-zone", id: "drop-zone", tabindex: 0},
    h("strong", {}, "Drop the weights file here"),
    h("span", {class: "muted"}, "safetensors, or a weights-only .pt/.pth state_dict"),
    h("label", {class: "btn small", for: "teacher-file"}, "or choose a file"), fileInput, fileLabel);
  fileInput.addEventListener("change", () => choose(fileInput.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("dragging");
    if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
  });

  const archSelect = h("select", {name: "architecture", id: "card-architecture", required: true});
  const message = h("div", {id: "upload-message"});
  const field = (label, input, hint) => h("div", {class: "field"}, h("label", {for: input.id}, label), input,
    hint ? h("small", {class: "muted"}, hint) : null);
  const form = h("form", {class: "card", id: "upload-form", novalidate: true},
    h("h2", {}, "Upload a teacher"), drop,
    h("div", {class: "grid"},
      field("Architecture", archSelect),
      field("Classes", h("input", {name: "num_classes", id: "card-classes", type: "number", min: 2, max: MAX_CLASSES, value: 10})),
      field("Channels", h("select", {name: "channels", id: "card-channels"},
        h("option", {value: 1}, "1"), h("option", {value: 3, selected: true}, "3"))),
      field("Height", h("input", {name: "height", id: "card-height", type: "number", min: MIN_SIDE, max: MAX_SIDE, value: 32})),
      field("Width", h("input", {name: "width", id: "card-width", type: "number", min: MIN_SIDE, max: MAX_SIDE, value: 32})),
      field("Mean", h("input", {name: "mean", id: "card-mean", value: "0.4914, 0.4822, 0.4465"}), "one per channel, comma-separated"),
      field("Std", h("input", {name: "std", id: "card-std", value: "0.247, 0.243, 0.261"}), "one per channel, > 0")),
    message,
    h("button", {type: "submit", class: "primary", id: "upload-submit"}, "Upload"));

  let names = new Set();
  loadArchitectures().then((archs) => {
    names = new Set(archs.map((a) => a.name));
    fill(archSelect, architectureOptions(archs, "resnet20"));
  }).catch((exc) => fill(message, errorBox(exc.message)));

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    fill(message);
    if (!chosen) { fill(message, errorBox("choose or drop a weights file first")); return; }
    const {card, error} = cardFromForm(form, names);
    if (error) { fill(message, errorBox(error)); return; }
    const data = new FormData();
    data.append("card", JSON.stringify(card));
    data.append("file", chosen, chosen.name);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const t = await (await request("/v1/teachers", {method: "POST", body: data})).json();
      fill(message, h("div", {class: "ok-box", id: "upload-ok"}, "Uploaded ", h("code", {}, t.id), "."));
      choose(null);
      fileInput.value = "";
      refresh();
    } catch (exc) {
      fill(message, errorBox(exc instanceof ApiError ? `${exc.message} (${exc.code})` : String(exc)));
    } finally {
      button.disabled = false;
    }
  });

  async function refresh() {
    try {
      const page = await getJSON("/v1/teachers?limit=100");
      fill(list, page.data.length
        ? h("div", {class: "table-wrap"}, h("table", {class: "stack"},
            h("thead", {}, h("tr", {}, ["Teacher", "Architecture", "Classes", "Input", "Size", "Uploaded", ""].map((t) => h("th", {}, t)))),
            h("tbody", {}, page.data.map(teacherRow))))
        : h("p", {class: "muted", id: "no-teachers"}, "No teacher yet: upload one below."));
    } catch (exc) {
      fill(list, errorBox(exc.message));
    }
  }
  refresh();
  fill(view, h("h1", {}, "Teachers"), h("section", {class: "card"}, list), form);
}
