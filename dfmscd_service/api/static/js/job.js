// One job: status, live curves from its event stream, students with downloads, samples, cancel.
import {ApiError, download, getJSON, imageURL, request, streamEvents} from "./api.js";
import {lineChart} from "./charts.js";
import {errorBox, fill, formatBytes, formatCount, formatNumber, formatSeconds, formatTime, h, progressBar,
        statusBadge} from "./dom.js";

const ACTIVE = new Set(["queued", "running", "cancelling"]);
const FORMATS = [["safetensors", "safetensors"], ["onnx", "onnx"], ["torchscript", "pt"]];
const POLL_MS = 5000;
const MAX_LOG = 200;

const fact = (label, value) => h("div", {}, h("dt", {}, label), h("dd", {}, value));

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

function studentsTable(job, onDownload) {
  const report = (job.report && job.report.students) || {};
  const rows = job.students.map((s) => {
    const r = report[s.name] || {};
    const ready = !!s.weights_url;
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
      h("td", {"data-label": "Download", class: "downloads"}, FORMATS.map(([format]) =>
        h("button", {type: "button", class: "btn small download", disabled: !ready, dataset: {format, student: s.name},
                     title: ready ? `sha256 ${s.sha256}` : "no weights yet", onclick: (e) => onDownload(s, format, e.currentTarget)},
          format))));
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
  const head = h("div", {class: "page-head"}, h("h1", {}, "Job ", h("code", {class: "job-id"}, jobId)));
  const summaryBox = h("section", {class: "card", id: "job-summary"}, h("p", {class: "muted"}, "Loading…"));
  const chartBoxes = {
    loss: h("div", {class: "chart", id: "chart-loss"}),
    balance: h("div", {class: "chart", id: "chart-balance"}),
    speed: h("div", {class: "chart", id: "chart-speed"}),
  };
  const studentsBox = h("section", {class: "card", id: "job-students"});
  const downloadMessage = h("div", {id: "download-message"});
  const samplesBox = h("div", {id: "samples"}, h("p", {class: "muted"}, "The grid of synthesized images appears when the job ends."));
  const logList = h("ol", {class: "log", id: "job-log"});
  const streamState = h("span", {class: "small muted", id: "stream-state"}, "connecting…");

  async function onDownload(student, format, button) {
    const suffix = FORMATS.find(([f]) => f === format)[1];
    button.disabled = true;
    fill(downloadMessage, h("span", {class: "muted"}, format === "safetensors" ? "downloading…" : `exporting to ${format}…`));
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
    fill(studentsBox, h("h2", {}, "Students"), studentsTable(job, onDownload), downloadMessage);
    if (job.samples_url && !samplesShown) {
      samplesShown = true;
      imageURL(job.samples_url).then((url) => {
        fill(samplesBox, h("img", {src: url, id: "samples-img", alt: "synthesized images, a few per class"}));
      }).catch((exc) => fill(samplesBox, errorBox(exc.message)));
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
