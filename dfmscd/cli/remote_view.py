"""How the remote commands (``dfmscd teachers|jobs|students|evalsets``) show the service's objects:
one table row per teacher, job, evaluation set or evaluation, a job's summary, a student's report,
and one line per progress/metrics/log event.

Plain functions of the JSON (``obj.raw``), so the wording lives in one place and needs no
client or network to change.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping


def fmt_seconds(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds != seconds or seconds < 0:
        return "?"
    total = int(seconds)
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_budget(budget: Mapping[str, Any] | None) -> str:
    if not budget:
        return "preset"
    if budget.get("epochs") is not None:
        return f"{budget['epochs']}e"
    if budget.get("seconds") is not None:
        return f"{budget['seconds']:g}s"
    return json.dumps(budget)


def fmt_loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    """Left-aligned columns two spaces apart (no trailing blanks)."""
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def teacher_row(t: Mapping[str, Any]) -> list[str]:
    card = t.get("card") or {}
    shape = "x".join(str(n) for n in card.get("input_shape") or [])
    return [str(t.get("id")), str(card.get("architecture", "?")), str(card.get("num_classes", "?")), shape,
            str(t.get("size_bytes", "?")), str(t.get("filename") or ""), str(t.get("created_at", ""))[:19]]


TEACHER_HEADER = ["id", "architecture", "classes", "input", "bytes", "file", "created"]


def teacher_summary(t: Mapping[str, Any]) -> str:
    card = t.get("card") or {}
    lines = [f"id            {t.get('id')}",
             f"file          {t.get('filename')} ({t.get('file_format')}, {t.get('size_bytes')} bytes)",
             f"sha256        {t.get('sha256')}",
             f"architecture  {card.get('architecture')} ({card.get('num_classes')} classes, input {card.get('input_shape')})",
             f"mean / std    {card.get('mean')} / {card.get('std')}",
             f"created       {t.get('created_at')}"]
    return "\n".join(lines)


def job_row(j: Mapping[str, Any]) -> list[str]:
    names = ",".join(s.get("name", "?") for s in j.get("students") or [])
    return [str(j.get("id")), str(j.get("status")), f"{100 * float(j.get('progress') or 0):.0f}%",
            str(j.get("preset")), fmt_budget(j.get("budget")), names, str(j.get("created_at", ""))[:19]]


JOB_HEADER = ["id", "status", "progress", "preset", "budget", "students", "created"]


def advice_line(j: Mapping[str, Any]) -> str | None:
    """What the job's seconds budget buys, and where that figure comes from; None without advice."""
    advice = j.get("advice")
    if not isinstance(advice, Mapping) or not advice.get("message"):
        return None
    source = advice.get("source")
    return f"advice{f' ({source})' if source else ''}: {advice['message']}"


def flag_lines(j: Mapping[str, Any]) -> list[str]:
    """One line per flagged student (its held-out agreement with the teacher is too low)."""
    return [f"flagged: {s.get('flag')}" for s in j.get("students") or [] if s.get("flag")]


def warning_lines(j: Mapping[str, Any], shown: Iterable[str] = ()) -> list[str]:
    """The job's warnings not yet shown, student flags left to ``flag_lines``."""
    skip = set(shown) | {s.get("flag") for s in j.get("students") or [] if s.get("flag")}
    return [f"warning: {w}" for w in j.get("warnings") or [] if w not in skip]


def job_summary(j: Mapping[str, Any]) -> str:
    eta = j.get("eta_seconds")
    lines = [f"id        {j.get('id')}",
             f"status    {j.get('status')}" + (f" ({j['error'].get('code')}: {j['error'].get('message')})"
                                              if isinstance(j.get("error"), dict) else ""),
             f"progress  {100 * float(j.get('progress') or 0):.0f}%, epoch {j.get('epoch')}"
             + (f", ETA {fmt_seconds(eta)}" if eta is not None and j.get("status") == "running" else ""),
             f"teacher   {j.get('teacher_id')}",
             f"preset    {j.get('preset')}, budget {fmt_budget(j.get('budget'))}, seed {j.get('seed')}",
             "students"]
    for s in j.get("students") or []:
        metrics = s.get("metrics") or {}
        lines.append(f"  {s.get('name'):<16} {s.get('architecture'):<20} {str(s.get('status')):<10} "
                     f"loss {fmt_loss(metrics.get('loss'))}  params {s.get('parameters')}"
                     + ("  FLAGGED" if s.get("flag") else ""))
    advice = advice_line(j)
    return "\n".join(lines + ([advice] if advice else []) + warning_lines(j) + flag_lines(j))


def fmt_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def fmt_percent(x: Any) -> str:
    return f"{100 * x:.2f}%" if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def _ms(entry: Mapping[str, Any] | None, batch: str) -> str:
    figure = ((entry or {}).get("latency_ms") or {}).get(batch) or {}
    return f"{figure['median_ms']:.3g} ms" if isinstance(figure.get("median_ms"), (int, float)) else "-"


REPORT_HEADER = ["format", "size", "verification", "teacher agreement", "latency b1", "latency b64"]


def report_rows(r: Mapping[str, Any]) -> list[list[str]]:
    """One row per file of a ``GET .../report`` answer: size, verification (FLAGGED / REFUSED in
    capitals), agreement with the teacher and CPU latency at batch 1 and 64."""
    formats = (r.get("report") or {}).get("formats") or {}
    rows = []
    for f in r.get("files") or []:
        fmt, status = f.get("format"), f.get("status")
        v = f.get("verification") or {}
        entry = formats.get(fmt) or {}
        if status == "refused":
            check = "REFUSED (never served)"
        else:
            check = f"{'FLAGGED' if status == 'flagged' else status} {fmt_percent(v.get('top1_agreement'))}" + (
                f" (< {fmt_percent(v.get('min_agreement'))})" if status == "flagged" else "")
        rows.append([str(fmt), fmt_bytes(f.get("size_bytes")), check, fmt_percent(entry.get("teacher_agreement")),
                     _ms(entry, "1"), _ms(entry, "64")])
    return rows


def student_report_summary(r: Mapping[str, Any]) -> str:
    """``dfmscd students report``: the student, its CPU, one row per file, its accuracy per set."""
    report = r.get("report") or {}
    if not report:
        return (f"student {r.get('student')}: no report (the job ended before reports were made at a job's end); "
                "its weights download as before")
    cpu = report.get("cpu") or {}
    isa = cpu.get("isa") or {}
    has = [k for k, v in isa.items() if v]
    lines = [f"student   {r.get('student')} ({report.get('architecture')}), {report.get('parameters')} parameters, "
             f"{report.get('flops')} FLOPs at batch 1",
             f"cpu       {cpu.get('model')} ({', '.join(has) or 'no avx2/avx512/vnni/amx'}), "
             f"{(report.get('latency') or {}).get('threads', '?')} thread(s)",
             table(REPORT_HEADER, report_rows(r))]
    for f in r.get("files") or []:
        if f.get("status") == "refused":
            lines.append(f"refused: {f.get('format')}: {f.get('error')}")
    for e in r.get("evaluations") or []:
        data = e.get("data") or {}
        figures = ", ".join(f"{k} {fmt_percent(v)}" for k, v in (e.get("accuracy") or {}).items())
        lines.append(f"accuracy on {data.get('file')} (n={data.get('n')}): {figures}; teacher "
                     f"{fmt_percent(e.get('teacher_accuracy'))}")
    return "\n".join(lines)


EVALUATION_SET_HEADER = ["id", "file", "format", "images", "bytes", "created"]


def evaluation_set_row(e: Mapping[str, Any]) -> list[str]:
    return [str(e.get("id")), str(e.get("filename") or ""), str(e.get("file_format")),
            str((e.get("summary") or {}).get("images", "?")), str(e.get("size_bytes", "?")), str(e.get("created_at", ""))[:19]]


EVALUATION_HEADER = ["id", "set", "source", "status", "images", "teacher"]


def evaluation_row(e: Mapping[str, Any]) -> list[str]:
    results = e.get("results") or {}
    return [str(e.get("id")), str(e.get("evaluation_set_id")), str(e.get("source")), str(e.get("status")),
            str((results.get("data") or {}).get("n", "-")), fmt_percent((results.get("teacher") or {}).get("accuracy"))]


def evaluation_lines(e: Mapping[str, Any]) -> list[str]:
    """An evaluation's accuracies, one line per student (and the teacher), or why it failed."""
    if e.get("status") == "failed":
        error = e.get("error") or {}
        return [f"evaluation {e.get('id')} failed: {error.get('code')}: {error.get('message')}"]
    results = e.get("results") or {}
    data = results.get("data") or {}
    lines = [f"accuracy on {data.get('file')} (n={data.get('n')})"]
    if results.get("teacher"):
        lines.append(f"  teacher  {fmt_percent(results['teacher'].get('accuracy'))}")
    for name, s in (results.get("students") or {}).items():
        lines.append(f"  {name}  " + ", ".join(f"{k} {fmt_percent(v)}" for k, v in (s.get("accuracy") or {}).items()))
    return lines


def event_line(event: Mapping[str, Any]) -> str | None:
    """One line for a job event, or None for one not worth a line (checkpoints)."""
    kind, data = event.get("kind"), event.get("data") or {}
    epoch = event.get("epoch")
    if kind == "progress":
        fraction = data.get("fraction", event.get("progress", 0.0))
        eta = data.get("eta_s")
        return f"epoch {epoch}  {100 * float(fraction or 0):5.1f}%" + (f"  ETA {fmt_seconds(eta)}" if eta is not None else "")
    if kind == "metrics":
        losses = data.get("student_loss") or {}
        parts = [f"epoch {epoch}  loss " + " ".join(f"{n}={fmt_loss(v)}" for n, v in losses.items())]
        if isinstance(data.get("pool_balance"), (int, float)):
            parts.append(f"pool balance {data['pool_balance']:.2f}")
        if isinstance(data.get("images_per_s"), (int, float)):
            parts.append(f"{data['images_per_s']:.0f} images/s")
        return "  ".join(parts)
    if kind == "log":
        return str(data.get("message", ""))
    if kind == "checkpoint":
        return None
    if kind == "sizing":  # its message is logged just before it; the whole figure set is for --json
        return None
    return f"{kind}: {json.dumps(data, sort_keys=True)}"


__all__ = ["EVALUATION_HEADER", "EVALUATION_SET_HEADER", "JOB_HEADER", "REPORT_HEADER", "TEACHER_HEADER", "advice_line",
           "evaluation_lines", "evaluation_row", "evaluation_set_row", "event_line", "flag_lines", "fmt_budget",
           "fmt_bytes", "fmt_loss", "fmt_percent", "fmt_seconds", "job_row", "job_summary", "report_rows",
           "student_report_summary", "table", "teacher_row", "teacher_summary", "warning_lines"]
