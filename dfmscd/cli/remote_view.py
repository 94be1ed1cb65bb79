"""How the remote commands (``dfmscd teachers|jobs|students``) show the service's objects: one
table row per teacher or job, a job's summary, and one line per progress/metrics/log event.

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


__all__ = ["JOB_HEADER", "TEACHER_HEADER", "advice_line", "event_line", "flag_lines", "fmt_budget", "fmt_loss",
           "fmt_seconds", "job_row", "job_summary", "table", "teacher_row", "teacher_summary", "warning_lines"]
