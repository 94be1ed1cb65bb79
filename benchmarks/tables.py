"""Turn a benchmark result dict into the target checks and a markdown table."""

from __future__ import annotations

from typing import Any

RATIO_TARGET = 0.97
BALANCE_TARGET = 0.8


def target_checks(r: dict[str, Any]) -> dict[str, Any]:
    """The single run's targets, each with the figures it was decided on."""
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


def _machine(r: dict[str, Any]) -> str:
    """"cpu (CPU model)" where the result names its CPU (results written before it did not)."""
    m = r["machine"]
    return f"{m['device']} ({m['cpu']})" if m.get("cpu") and m["device"] == "cpu" else m["device"]


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
        f"{_machine(r)}, {r['machine']['torch_threads']} torch threads.",
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


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return mean, std


def matrix_summary(r: dict[str, Any]) -> dict[str, Any]:
    """Per arm and student: mean and sample std over seeds of the figures, plus the matrix's checks
    (every DF-MSCD student ≥ 0.97 of the teacher, pool balance ≥ 0.8, DF-MSCD ahead of both
    single-student arms on every student), all on the mean over seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in r["runs"]:
        groups.setdefault((run["arm"], run["student"]), []).append(run)
    rows = {}
    for (arm, student), runs in groups.items():
        row: dict[str, Any] = {"arm": arm, "student": student, "seeds": [x["seed"] for x in runs]}
        for key in ("test_accuracy", "val_accuracy", "ratio_to_teacher", "pool_balance", "label_balance", "wall_s", "cpu_s",
                    "teacher_confidence", "diversity_ratio_to_real", "epochs", "kd_steps"):
            vals = [float(x[key]) for x in runs if x.get(key) is not None]
            row[key] = _mean_std(vals) if vals else None
        rows[f"{arm}/{student}"] = row
    checks: dict[str, Any] = {}
    dm = {k.split("/", 1)[1]: v for k, v in rows.items() if v["arm"] == "dfmscd"}
    if dm:
        checks["every_student_ratio_ge_0.97"] = all(v["ratio_to_teacher"][0] >= RATIO_TARGET for v in dm.values())
        checks["pool_balance_ge_0.8"] = all(v["pool_balance"][0] >= BALANCE_TARGET for v in dm.values())
        for arm in ("ablation", "preset_single"):
            other = {k.split("/", 1)[1]: v for k, v in rows.items() if v["arm"] == arm}
            if other:
                checks[f"dfmscd_ahead_of_{arm}_every_student"] = all(
                    dm[s]["test_accuracy"][0] > other[s]["test_accuracy"][0] for s in dm if s in other)
    return {"rows": rows, "checks": checks}


def _ms(v: tuple[float, float] | None, pct: bool = False, fmt: str = "{:.3f}") -> str:
    if v is None:
        return "-"
    if pct:
        return f"{v[0] * 100:.2f} ± {v[1] * 100:.2f}%"
    return f"{fmt.format(v[0])} ± {fmt.format(v[1])}"


ARM_NAMES = {
    "dfmscd": "DF-MSCD (N students, T s)",
    "ablation": "Fast-DFKD ablation (1 student, T/N s each)",
    "preset_single": "our preset, 1 student (T/N s each)",
    "no_label_bridging": "DF-MSCD − label bridging",
    "no_inter_student": "DF-MSCD − inter-student term",
    "no_peer": "DF-MSCD − peer term",
    "no_mixture": "DF-MSCD − mixture",
    "dfmscd_recognised": "DF-MSCD, recognised-only pool admission",
}


def matrix_markdown(r: dict[str, Any]) -> str:
    t = r["teacher"]
    summary = r.get("summary") or matrix_summary(r)
    lines = [
        f"### {r['dataset']}: equal total {'CPU' if r.get('budget_clock') == 'cpu' else 'wall'} time, "
        f"budget T = {r['budget_s']:.0f} s, seeds {r['seeds']}",
        "",
        f"Teacher {t['architecture']} test {t['test_accuracy'] * 100:.2f}% (val {t['val_accuracy'] * 100:.2f}%); "
        f"preset `{r['preset']}` {' '.join(r['set'])}; {_machine(r)}, {r['machine']['torch_threads']} torch "
        f"threads; mean ± sample std over seeds. Diversity: mean pairwise distance of same-class pool images in the "
        f"teacher's penultimate features, / the same on real training images "
        f"({r['real_within_class_distance']:.3f}).",
        "",
        "| arm | student | test acc | / teacher | val acc | pool balance | label balance | teacher conf. | diversity / real | wall s | CPU s | epochs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary["rows"].values():
        lines.append(
            f"| {ARM_NAMES.get(row['arm'], row['arm'])} | {row['student']} | {_ms(row['test_accuracy'], True)} | "
            f"{_ms(row['ratio_to_teacher'])} | {_ms(row['val_accuracy'], True)} | {_ms(row['pool_balance'], fmt='{:.2f}')} | "
            f"{_ms(row['label_balance'], fmt='{:.2f}')} | {_ms(row['teacher_confidence'], fmt='{:.2f}')} | "
            f"{_ms(row['diversity_ratio_to_real'], fmt='{:.2f}')} | {_ms(row['wall_s'], fmt='{:.1f}')} | "
            f"{_ms(row.get('cpu_s'), fmt='{:.1f}')} | "
            f"{_ms(row['epochs'], fmt='{:.0f}')} |")
    lines += ["", "Targets (on the means):"]
    for key, value in summary["checks"].items():
        lines.append(f"- {key}: {'met' if value else 'MISSED'}")
    return "\n".join(lines) + "\n"
