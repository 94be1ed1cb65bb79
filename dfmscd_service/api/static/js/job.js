// One job: status, live curves from its event stream, students with downloads, their reports
// (sizes, FLOPs, latency per format on the worker's CPU, verification, accuracy), samples, cancel.
import {ApiError, download, getJSON, imageURL, request, streamEvents} from "./api.js";
import {lineChart} from "./charts.js";
import {errorBox, fill, formatBytes, formatCount, formatNumber, formatSeconds, formatTime, h, progressBar,
        statusBadge} from "./dom.js";

const ACTIVE = new Set(["queued", "running", "cancelling"]);
const FORMATS = [["safetensors", "safetensors"], ["onnx", "onnx"], ["torchscript", "torchscript.pt"], ["onnx-int8", "int8.onnx"]];
// A job that ended before the worker exported every format: its weights, and ONNX/TorchScript made on download.
const LAZY_FORMATS = new Set(["safetensors", "onnx", "torchscript"]);
const POLL_MS = 5000;
const MAX_LOG = 200;

const fact = (label, value) => h("div", {}, h("dt", {}, label), h("dd", {}, value));
const percent = (x, digits = 1) => (typeof x === "number" && isFinite(x) ? `${(x * 100).toFixed(digits)}%` : "–");
const ms = (entry, batch) => {
  const m = ((entry || {}).latency_ms || {})[batch];
  return m && typeof m.median_ms === "number" ? `${m.median_ms.toPrecision(3)} ms` : "–";
};

// What a student can be downloaded as, from its report's files (null: not known yet).
function availability(report) {
  if (!report) return null;
  if (!report.files.length) return new Map([...LAZY_FORMATS].map((f) => [f, {status: "on download"}]));
  return new Map(report.files.filter((f) => f.status !== "refused").map((f) => [f.format, f]));
}

function verificationCell(file) {
  if (file.status === "refused") {
    return [h("span", {class: "badge status-failed", dataset: {refused: "true"}}, "refused"),
            h("div", {class: "small flag-text"}, file.error || "")];
  }
  const v = file.verification || {};
  return [h("span", {class: `badge ${file.status === "flagged" ? "flag" : "status-succeeded"}`,
                     dataset: {flagged: file.status === "flagged" ? "true" : "false"},
                     title: `top-1 agreement with the PyTorch student on ${v.images} ${v.images_source} images`}, file.status),
          " ", percent(v.top1_agreement, 2),
          file.status === "flagged" ? h("div", {class: "small flag-text"}, `below the ${percent(v.min_agreement)} threshold for INT8: served, check its accuracy`) : null];
}

// One student's report: parameters, FLOPs, the worker's CPU, and per format the size, verification,
// agreement with the teacher, CPU latency at batch 1 and 64, and accuracy on each evaluation set.
function studentReport(name, answer) {
  const r = answer.report;
  const evaluations = answer.evaluations || [];
  if (!r) {
    return h("article", {class: "student-report", dataset: {student: name}}, h("h3", {}, name),
      h("p", {class: "muted"}, "No report: this job ended before reports were made at a job's end. Its weights, ONNX and TorchScript files download as before; it has no INT8 file."));
  }
  const cpu = r.cpu || {};
  const isa = Object.entries(cpu.isa || {}).filter(([, on]) => on).map(([k]) => k.toUpperCase());
  const accuracyHeads = evaluations.map((e) => `Accuracy (${(e.data || {}).file}, n=${(e.data || {}).n})`);
  const accuracyCells = (key) => evaluations.map((e) => h("td", {"data-label": "Accuracy", class: "accuracy"}, percent((e.accuracy || {})[key])));
  const rows = [h("tr", {dataset: {format: "pytorch"}},
    h("td", {"data-label": "Format"}, "PyTorch (in memory)"), h("td", {"data-label": "Size"}, "–"),
    h("td", {"data-label": "Verification"}, "reference"),
    h("td", {"data-label": "Teacher agreement"}, percent((r.teacher_agreement || {}).pytorch)),
    h("td", {"data-label": "Latency, batch 1"}, "–"), h("td", {"data-label": "Latency, batch 64"}, "–"),
    ...accuracyCells("pytorch"))];
  for (const file of answer.files) {
    const entry = (r.formats || {})[file.format] || {};
    rows.push(h("tr", {dataset: {format: file.format, status: file.status}, class: file.status === "flagged" ? "flagged" : null},
      h("td", {"data-label": "Format"}, h("strong", {}, file.format)),
      h("td", {"data-label": "Size"}, formatBytes(file.size_bytes)),
      h("td", {"data-label": "Verification", class: "verification"}, verificationCell(file)),
      h("td", {"data-label": "Teacher agreement"}, percent(entry.teacher_agreement)),
      h("td", {"data-label": "Latency, batch 1", class: "latency"}, ms(entry, "1")),
      h("td", {"data-label": "Latency, batch 64", class: "latency"}, ms(entry, "64")),
      ...accuracyCells(file.format)));
  }
  const teacherLines = evaluations.filter((e) => typeof e.teacher_accuracy === "number").map((e) =>
    h("li", {}, `Teacher accuracy on ${(e.data || {}).file}: ${percent(e.teacher_accuracy)}`));
  return h("article", {class: "student-report", dataset: {student: name}},
    h("h3", {}, name, " ", h("span", {class: "muted small"}, r.architecture)),
    h("dl", {class: "facts"},
      fact("Parameters", h("span", {class: "parameters"}, formatCount(r.parameters))),
      fact("FLOPs (batch 1)", h("span", {class: "flops", title: r.flops_counted || ""}, formatCount(r.flops))),
      fact("CPU", h("span", {class: "cpu-model"}, cpu.model || "–")),
      fact("Instruction sets", h("span", {class: "cpu-isa"}, isa.length ? isa.join(", ") : "no AVX2/AVX-512/VNNI/AMX")),
      fact("Threads", (r.latency || {}).threads ?? "–")),
    h("div", {class: "table-wrap"}, h("table", {class: "stack report-table"},
      h("thead", {}, h("tr", {}, ["Format", "Size", "Verification", "Teacher agreement", "Latency, batch 1", "Latency, batch 64",
                                  ...accuracyHeads].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows))),
    teacherLines.length ? h("ul", {class: "small muted"}, teacherLines) : null,
    h("p", {class: "small muted"}, "Latency is the median of the worker's timed runs on its CPU; agreement and verification are on held-out synthetic images; accuracy is on your evaluation sets (reporting only)."));
}

// What the seconds budget buys (from earlier runs' costs at creation, the run's own once it starts),
// and every warning of the job: a short budget, low-agreement students, classes never learnt.
function adviceAndWarnings(job) {
  const advice = job.advice;
  const adviceBox = advice && advice.message
    ? h("div", {class: `advice-box${advice.below_floor ? " below-floor" : ""}`, id: "job-advice",
                dataset: {basis: advice.basis, belowFloor: advice.below_floor ? "true" : "false"}},
        h("strong", {}, "Budget: "), advice.message,
        advice.source ? h("div", {class: "small muted"}, advice.source) : null)
    : null;
  const warnings = (job.warnings || []).filter((w) => !(advice && advice.below_floor && w === advice.message));
  const warningList = warnings.length
    ? h("ul", {class: "warning-box", id: "job-warnings", role: "status"}, warnings.map((w) => h("li", {}, w)))
    : null;
  return [adviceBox, warningList];
}

function summary(job, live) {
  const budget = Object.entries(job.budget || {}).map(([k, v]) => `${v} ${k}`).join(", ") || "preset default";
  const fraction = live.progress ?? job.progress;
  const eta = live.eta ?? job.eta_seconds;
  return h("div", {class: "summary"},
    h("div", {class: "summary-status"}, h("span", {id: "job-status", dataset: {status: job.status}}, statusBadge(job.status)),
      progressBar(fraction), h("span", {id: "job-progress"}, `${Math.round(fraction * 100)}%`)),
    h("dl", {class: "facts"},
      fact("ETA", h("span", {id: "job-eta"}, ACTIVE.has(job.status) ? formatSeconds(eta) : "–")),
      fact("Epoch", h("span", {id: "job-epoch"}, live.epoch ?? job.epoch)),
      fact("Preset", job.preset),
      fact("Budget", budget),
      fact("Teacher", h("code", {}, job.teacher_id || "deleted")),
      fact("Created", formatTime(job.created_at)),
      fact("Finished", formatTime(job.finished_at))),
    ...adviceAndWarnings(job),
    job.error ? errorBox(`${job.error.message} (${job.error.code})`) : null);
}

function studentsTable(job, onDownload, reports) {
  const report = (job.report && job.report.students) || {};
  const rows = job.students.map((s) => {
    const r = report[s.name] || {};
    const ready = !!s.weights_url;
    const available = availability((reports || {})[s.name]);
    const flag = s.flag || r.flag;
    return h("tr", {dataset: {student: s.name}, class: flag ? "flagged" : null},
      h("td", {"data-label": "Student"}, h("strong", {}, s.name), s.partial ? h("span", {class: "badge"}, "partial") : null,
        flag ? h("span", {class: "badge flag", title: flag, dataset: {flag: "true"}}, "flagged") : null,
        flag ? h("div", {class: "small flag-text"}, flag) : null),
      h("td", {"data-label": "Architecture"}, s.architecture),
      h("td", {"data-label": "Status"}, statusBadge(s.status)),
      h("td", {"data-label": "Parameters"}, formatCount(s.parameters ?? r.params)),
      h("td", {"data-label": "Loss"}, formatNumber(r.final_loss ?? (s.metrics || {}).loss)),
      h("td", {"data-label": "Teacher agreement"}, typeof r.teacher_agreement === "number" ? `${(r.teacher_agreement * 100).toFixed(1)}%` : "–"),
      h("td", {"data-label": "Size"}, formatBytes(s.size_bytes)),
      h("td", {"data-label": "Download", class: "downloads"}, FORMATS.map(([format]) => {
        const file = available ? available.get(format) : null;
        const usable = ready && (!available || !!file);
        const flagged = file && file.status === "flagged";
        return h("button", {type: "button", class: `btn small download${flagged ? " flagged" : ""}`, disabled: !usable,
                            dataset: {format, student: s.name, flagged: flagged ? "true" : "false"},
                            title: !ready ? "no weights yet" : !usable ? `no ${format} file for this student`
                              : flagged ? "flagged: its agreement with the PyTorch student is below the INT8 threshold"
                              : file && file.sha256 ? `sha256 ${file.sha256}` : `sha256 ${s.sha256}`,
                            onclick: (e) => onDownload(s, format, e.currentTarget)},
          format, flagged ? " ⚠" : "");
      })));
  });
  return h("div", {class: "table-wrap"}, h("table", {class: "stack", id: "students-table"},
    h("thead", {}, h("tr", {}, ["Student", "Architecture", "Status", "Parameters", "Loss", "Teacher agreement", "Size", "Download"]
      .map((t) => h("th", {}, t)))),
    h("tbody", {}, rows)));
}

export function jobPage(view, {params: [jobId]}) {
  const controller = new AbortController();
  const live = {};  // progress/eta/epoch from the stream, newer than the last GET
  let job = null, charts = null, timer = null, samplesShown = false;
  let reports = null, reportsAsked = false;  // the students' reports, read once the job has ended
  const head = h("div", {class: "page-head"}, h("h1", {}, "Job ", h("code", {class: "job-id"}, jobId)));
  const summaryBox = h("section", {class: "card", id: "job-summary"}, h("p", {class: "muted"}, "Loading…"));
  const chartBoxes = {
    loss: h("div", {class: "chart", id: "chart-loss"}),
    balance: h("div", {class: "chart", id: "chart-balance"}),
    speed: h("div", {class: "chart", id: "chart-speed"}),
  };
  const studentsBox = h("section", {class: "card", id: "job-students"});
  const downloadMessage = h("div", {id: "download-message"});
  const reportsBox = h("section", {class: "card", id: "student-reports"},
    h("h2", {}, "Student reports"), h("p", {class: "muted"}, "Each student's report appears when the job ends."));
  const samplesBox = h("div", {id: "samples"}, h("p", {class: "muted"}, "The grid of synthesized images appears when the job ends."));
  const logList = h("ol", {class: "log", id: "job-log"});
  const streamState = h("span", {class: "small muted", id: "stream-state"}, "connecting…");

  async function onDownload(student, format, button) {
    const suffix = FORMATS.find(([f]) => f === format)[1];
    button.disabled = true;
    fill(downloadMessage, h("span", {class: "muted"}, "downloading…"));
    try {
      const got = await download(`/v1/jobs/${encodeURIComponent(jobId)}/students/${encodeURIComponent(student.name)}/weights?format=${format}`,
                                 `${student.name}.${suffix}`);
      fill(downloadMessage, h("span", {class: "ok", id: "download-ok", dataset: {file: got.name}}, `saved ${got.name} (${formatBytes(got.size)})`));
    } catch (exc) {
      fill(downloadMessage, errorBox(exc.message));
    } finally {
      button.disabled = false;
    }
  }

  async function cancel(button) {
    button.disabled = true;
    try {
      render(await (await request(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, {method: "POST"})).json());
    } catch (exc) {
      fill(downloadMessage, errorBox(exc.message));
      button.disabled = false;
    }
  }

  function render(next) {
    job = next;
    if (!ACTIVE.has(job.status)) { delete live.progress; delete live.eta; }
    fill(summaryBox, summary(job, live));
    const actions = ACTIVE.has(job.status)
      ? h("button", {type: "button", class: "btn danger", id: "cancel-job", disabled: job.status === "cancelling",
                     onclick: (e) => cancel(e.currentTarget)}, job.status === "cancelling" ? "Cancelling…" : "Cancel")
      : null;
    fill(head, h("h1", {}, "Job ", h("code", {class: "job-id"}, job.id)), actions);
    fill(studentsBox, h("h2", {}, "Students"), studentsTable(job, onDownload, reports), downloadMessage);
    if (!ACTIVE.has(job.status) && !reportsAsked) loadReports();
    if (job.samples_url && !samplesShown) {
      samplesShown = true;
      imageURL(job.samples_url).then((url) => {
        fill(samplesBox, h("img", {src: url, id: "samples-img", alt: "synthesized images, a few per class"}));
      }).catch((exc) => fill(samplesBox, errorBox(exc.message)));
    }
  }

  async function loadReports() {
    reportsAsked = true;
    const stored = job.students.filter((s) => s.weights_url);
    if (!stored.length) { fill(reportsBox, h("h2", {}, "Student reports"), h("p", {class: "muted"}, "No student was stored.")); return; }
    try {
      const answers = await Promise.all(stored.map((s) => getJSON(
        `/v1/jobs/${encodeURIComponent(jobId)}/students/${encodeURIComponent(s.name)}/report`, {signal: controller.signal})));
      reports = Object.fromEntries(answers.map((a) => [a.student, a]));
      fill(reportsBox, h("h2", {}, "Student reports"), answers.map((a) => studentReport(a.student, a)));
      fill(studentsBox, h("h2", {}, "Students"), studentsTable(job, onDownload, reports), downloadMessage);
    } catch (exc) {
      if (!controller.signal.aborted) fill(reportsBox, h("h2", {}, "Student reports"), errorBox(exc.message));
    }
  }

  async function refresh() {
    timer = null;
    try {
      render(await getJSON(`/v1/jobs/${encodeURIComponent(jobId)}`, {signal: controller.signal}));
    } catch (exc) {
      if (controller.signal.aborted) return;
      if (exc instanceof ApiError && exc.status === 404) { notFound(exc.message); return; }
    }
    if (ACTIVE.has(job?.status) && !controller.signal.aborted) timer = setTimeout(refresh, POLL_MS);
  }

  function notFound(message) {
    controller.abort();
    fill(view, h("section", {class: "card narrow", id: "job-not-found"}, h("h1", {}, "Job not found"),
      h("p", {}, message), h("a", {href: "#/jobs", class: "btn"}, "All jobs")));
  }

  function onEvent({event, data}) {
    const e = JSON.parse(data);
    if (event === "end") {
      fill(streamState, `stream ended: job ${e.status}`);
      if (timer) clearTimeout(timer);
      refresh();
      return;
    }
    if (event === "progress" || event === "metrics") {
      live.progress = e.progress;
      live.epoch = e.epoch;
      if (event === "progress" && "eta_s" in e.data) live.eta = e.data.eta_s;
      if (job && ACTIVE.has(job.status)) fill(summaryBox, summary(job, live));
    }
    if (event === "metrics" && charts) {
      const d = e.data, epoch = d.epoch ?? e.epoch;
      charts.loss.push(epoch, job.students.map((s) => (d.student_loss || {})[s.name]));
      charts.balance.push(epoch, [d.pool_balance, d.label_balance]);
      charts.speed.push(epoch, [d.images_per_s]);
    }
    if (event === "log") {
      logList.append(h("li", {}, h("span", {class: "muted small"}, formatTime(e.created_at)), " ", e.data.message ?? JSON.stringify(e.data)));
      while (logList.children.length > MAX_LOG) logList.firstChild.remove();
      if (timer) clearTimeout(timer);
      refresh();  // a log line marks a status change (attempt started, finished, cancelled)
    }
  }

  fill(view, head, summaryBox,
    h("section", {class: "card"}, h("div", {class: "page-head"}, h("h2", {}, "Live curves"), streamState),
      h("div", {class: "charts"},
        h("figure", {}, h("figcaption", {}, "Students' KD loss"), chartBoxes.loss),
        h("figure", {}, h("figcaption", {}, "Pool balance (min/max class count)"), chartBoxes.balance),
        h("figure", {}, h("figcaption", {}, "Synthesis images/s"), chartBoxes.speed))),
    studentsBox,
    reportsBox,
    h("section", {class: "card"}, h("h2", {}, "Samples"), samplesBox),
    h("section", {class: "card"}, h("h2", {}, "Log"), logList));

  getJSON(`/v1/jobs/${encodeURIComponent(jobId)}`, {signal: controller.signal}).then((first) => {
    render(first);
    charts = {
      loss: lineChart(chartBoxes.loss, first.students.map((s) => s.name), {yLabel: "loss"}),
      balance: lineChart(chartBoxes.balance, ["teacher classes", "requested labels"], {yLabel: "balance", digits: 2}),
      speed: lineChart(chartBoxes.speed, ["images/s"], {yLabel: "images/s", digits: 1}),
    };
    if (ACTIVE.has(first.status)) timer = setTimeout(refresh, POLL_MS);
    fill(streamState, "live");
    return streamEvents(first.id, onEvent, controller.signal);
  }).catch((exc) => {
    if (controller.signal.aborted) return;
    if (exc instanceof ApiError && exc.status === 404) notFound(exc.message);
    else fill(streamState, errorBox(exc.message));
  });

  return () => {
    controller.abort();
    if (timer) clearTimeout(timer);
    if (charts) Object.values(charts).forEach((c) => c.destroy());
  };
}
