"""Turn a benchmark result dict into the target checks and a markdown table."""

from __future__ import annotations

from typing import Any

RATIO_TARGET = 0.97
BALANCE_TARGET = 0.8


def target_checks(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the figures it was decided on."""
    d = r["dfmscd"]
    checks: dict[str, Any] = {
        "every_student_ratio_ge_0.97": all((s["ratio_to_teacher"] or 0) >= RATIO_TARGET for s in d["students"].values()),
        "pool_balance_ge_0.8": d["pool_balance"] >= BALANCE_TARGET,
    }
    base = r.get("baseline")
    if base:
        checks["dfmscd_ge_baseline_every_student"] = all(
            d["students"][a]["test_accuracy"] >= base[a]["test_accuracy"] for a in base)
        total = sum(b["wall_s"] for b in base.values())
        checks["baseline_total_wall_s"] = total
        checks["dfmscd_wall_lt_baselines_total"] = d["wall_s"] < total
    return checks


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _num(x: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown_report(r: dict[str, Any]) -> str:
    t = r["teacher"]
    lines = [
        f"### {r['dataset']}: {r['run_kind']}",
        "",
        f"Teacher {t['architecture']} test accuracy {_pct(t['test_accuracy'])} (val {_pct(t['val_accuracy'])}); "
        f"split train/val/test {r['split']['train']}/{r['split']['val']}/{r['split']['test']} (seed {r['split']['seed']}); "
        f"preset `{r['preset']}`, DF-MSCD budget {r['budget_s']:.0f} s, baselines matched on {r['baseline_match']}; "
        f"{r['machine']['device']}, {r['machine']['torch_threads']} torch threads.",
        "",
        "| method | student | test acc | / teacher | wall s | images/s | pool balance (min/max) | epochs |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    d = r["dfmscd"]
    for i, (name, s) in enumerate(d["students"].items()):
        wall = f"{d['wall_s']:.1f}" + (" (one run, all students)" if i == 0 else " (same run)")
        lines.append(f"| DF-MSCD | {name} | {_pct(s['test_accuracy'])} | {_num(s['ratio_to_teacher'], '{:.3f}')} | {wall} | "
                     f"{_num(d['images_per_s'])} | {d['pool_balance']:.2f} | {d['epochs']} |")
    for name, b in (r.get("baseline") or {}).items():
        lines.append(f"| baseline (Fast-DFKD) | {name} | {_pct(b['test_accuracy'])} | {_num(b['ratio_to_teacher'], '{:.3f}')} | "
                     f"{b['wall_s']:.1f} | {_num(b['images_per_s'])} | {b['pool_balance']:.2f} | {b['epochs']} |")
    for name, k in (r.get("kd_real") or {}).items():
        lines.append(f"| KD on real images | {name} | {_pct(k['test_accuracy'])} | {_num(k['ratio_to_teacher'], '{:.3f}')} | "
                     f"{k['wall_s']:.1f} | {_num(k['images_per_s'])} | - | {k['epochs']} |")
    checks = r.get("targets", {})
    lines += ["", "Targets:"]
    for key, value in checks.items():
        if isinstance(value, bool):
            lines.append(f"- {key}: {'met' if value else 'MISSED'}")
    if "baseline_total_wall_s" in checks:
        lines.append(f"- DF-MSCD wall {d['wall_s']:.1f} s vs three baselines {checks['baseline_total_wall_s']:.1f} s")
    return "\n".join(lines) + "\n"
