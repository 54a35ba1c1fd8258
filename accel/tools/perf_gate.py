"""The performance gate behind `sage infer gate` (and `sage infer bench gate`): measured ratios against stored
minimums (or maximums), reported as a diff of measured against allowed.

A results file (any bench/results JSON: {title, meta, columns, rows}) becomes flat metrics named
`<config>.<column>`, e.g. `w4a16.tps_b1_x_bf16` (every numeric cell of every configuration that ran; a row
without a `config` is named by accel.integration.metrics.row_label, e.g. `chat / ngram`), plus `all.cv_max` (the largest
tokens/s coefficient of variation of any runtime configuration). Kernel benchmarks (bench/results/kernels_*.json,
rows with an `M` column, measured on the same card) add `<file stem>.<column>.M<M>` for the speed-up columns of
accel's kernels (`x_bf16`, `x_bf16_asym`), the smallest over the file's shapes at that M.

A baseline is JSON {metric: {"min": value, "why": "..."}} ({"max": ...} for metrics that must stay low), with an
optional per-metric "tolerance" that replaces the command's (a timing ratio on shared CPU cores needs more slack
than a deterministic one such as greedy-token agreement). Keys starting with "_" are not metrics; "_requires"
maps results meta fields (device, model, prompt_len, layers) to the values the baseline was set for, so a
baseline for one card is never checked against another's numbers.

A metric passes when value >= min - tolerance * |min| (or value <= max + tolerance * |max|): the tolerance is
relative, for run-to-run noise. A metric absent from the results fails, naming the configuration's error if
it ran and failed. `report` renders the verdicts as a plain-text diff: bound, allowed, measured, change.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accel.errors import AccelError
from accel.integration.metrics import row_label

__all__ = [
    "GateCheck",
    "GateError",
    "GateOutcome",
    "baseline_from_results",
    "check_requirements",
    "gate",
    "kernel_files",
    "load_baseline",
    "load_results",
    "report",
    "results_metrics",
    "run_gate",
]



class GateError(AccelError, ValueError):
    """A results or baseline file is missing or malformed."""


@dataclass(frozen=True)
class GateCheck:
    """One metric's verdict: status is "pass", "fail" or "missing"; `allowed` is the bound with its tolerance."""

    metric: str
    status: str
    bound: str
    limit: float
    value: float | None
    why: str
    message: str
    tolerance: float = 0.0
    allowed: float = 0.0

    @property
    def change(self) -> float | None:
        """(value - limit) / |limit|: how far the measurement sits from the bound (None when missing)."""
        if self.value is None or self.limit == 0:
            return None
        return (self.value - self.limit) / abs(self.limit)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "change": self.change}


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GateError(f"{what} file {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise GateError(f"{what} file {path} is not readable JSON: {exc}") from None


def load_results(path: Path) -> dict[str, Any]:
    """A bench results file: {title, meta, columns, rows, notes}, each row a JSON object."""
    data = _read_json(path, "results")
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
        raise GateError(
            f"results file {path} has no 'rows' of configurations; write it with `sage infer bench --out` or a "
            "bench/*.py script"
        )
    return data


def load_baseline(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(requirements, {metric: {"min" or "max": value, "why": str}}), each entry checked."""
    data = _read_json(path, "baseline")
    if not isinstance(data, dict):
        raise GateError(f"baseline file {path} must hold a JSON object {{metric: {{'min': value, 'why': ...}}}}")
    requires = data.get("_requires", {})
    bounds: dict[str, dict[str, Any]] = {}
    for metric, entry in data.items():
        if metric.startswith("_"):
            continue
        kinds = [k for k in ("min", "max") if isinstance(entry, dict) and k in entry]
        if len(kinds) != 1 or not _number(entry[kinds[0]]):
            raise GateError(
                f"baseline file {path}: metric {metric!r} needs exactly one numeric 'min' or 'max', got {entry!r}"
            )
        bounds[metric] = {"bound": kinds[0], "limit": float(entry[kinds[0]]), "why": str(entry.get("why", ""))}
        if "tolerance" in entry:
            tolerance = entry["tolerance"]
            if not _number(tolerance) or not 0 <= tolerance < 1:
                raise GateError(
                    f"baseline file {path}: metric {metric!r} has tolerance {tolerance!r}; use a fraction in [0, 1)"
                )
            bounds[metric]["tolerance"] = float(tolerance)
    if not bounds:
        raise GateError(f"baseline file {path} names no metrics")
    return requires, bounds


def _is_ratio(column: str) -> bool:
    """x_bf16, tps_b1_x_bf16, int4mm_x_bf16, ttft_saving: ratios to a baseline, comparable across runs."""
    return column.startswith("x_") or "_x_" in column or column.endswith("_saving")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def results_metrics(data: dict[str, Any], kernel_files: list[Path] = ()) -> dict[str, float]:
    """Flat metrics of a results file and of kernel benchmark files (module docstring)."""
    metrics: dict[str, float] = {}
    cvs = []
    for row in data["rows"]:
        if row.get("error"):
            continue
        label = row_label(row)
        for key, value in row.items():
            if _number(value):
                metrics[f"{label}.{key}"] = float(value)
        if label != "hf-eager" and _number(row.get("cv_max")):
            cvs.append(float(row["cv_max"]))
    if cvs:
        metrics["all.cv_max"] = max(cvs)
    for path in kernel_files:
        kernels = _read_json(path, "kernel results")
        for row in kernels.get("rows", []) if isinstance(kernels, dict) else []:
            if "M" not in row:
                continue
            for key, value in row.items():
                if _number(value) and key.startswith("x_"):  # our kernel's speed-ups, not the comparators
                    name = f"{Path(path).stem}.{key}.M{row['M']}"
                    metrics[name] = min(metrics.get(name, math.inf), float(value))
    return metrics


def kernel_files(data: dict[str, Any], results: Path, given: list[Path]) -> list[Path]:
    """The kernel results to read: `given`, else kernels_*.json beside `results`; only those measured on the
    results' card (a ratio from another card is not comparable)."""
    candidates = list(given) or sorted(Path(results).parent.glob("kernels_*.json"))
    device = data.get("meta", {}).get("device")
    return [path for path in candidates if _read_json(path, "kernel results").get("meta", {}).get("device") == device]


def check_requirements(data: dict[str, Any], requires: dict[str, Any]) -> list[str]:
    """What differs between the results' meta and the baseline's `_requires` (empty when nothing does)."""
    meta = data.get("meta", {})
    return [
        f"the baseline is for {key}={want!r}, the results have {key}={meta.get(key)!r}"
        for key, want in requires.items()
        if meta.get(key) != want
    ]


def gate(
    metrics: dict[str, float],
    bounds: dict[str, dict[str, Any]],
    tolerance: float = 0.05,
    errors: dict[str, str] | None = None,
) -> list[GateCheck]:
    """One GateCheck per baseline metric (a metric's own tolerance, else `tolerance`). `errors` maps
    configurations that failed to their error."""
    if not 0 <= tolerance < 1:
        raise GateError(f"--tolerance must be in [0, 1), got {tolerance}")
    errors = errors or {}
    checks = []
    for metric, spec in bounds.items():
        bound, limit, why = spec["bound"], spec["limit"], spec["why"]
        slack = spec.get("tolerance", tolerance)
        allowed = limit - slack * abs(limit) if bound == "min" else limit + slack * abs(limit)
        value = metrics.get(metric)
        if value is None:
            config = metric.rsplit(".", 1)[0]
            reason = (
                f"configuration {config!r} failed: {errors[config]}" if config in errors
                else "not measured (is the configuration or batch size in the run?)"
            )
            checks.append(GateCheck(metric, "missing", bound, limit, None, why,
                                    f"metric {metric!r} is missing from the results: {reason}", slack, allowed))
            continue
        ok = value >= allowed if bound == "min" else value <= allowed
        sign = ">=" if bound == "min" else "<="
        message = f"{metric} = {value:.4g}, needs {sign} {limit:.4g} (with tolerance {sign} {allowed:.4g})"
        checks.append(GateCheck(metric, "pass" if ok else "fail", bound, limit, value, why, message, slack, allowed))
    return checks


def _percent(change: float | None) -> str:
    if change is None:
        return ""
    return "0.0%" if abs(change) < 0.0005 else f"{100 * change:+.1f}%"


def report(checks: list[GateCheck], mismatches: list[str] = ()) -> str:
    """The verdicts as a plain-text diff: one line per metric (bound, allowed with tolerance, measured, change
    against the bound, status), then a sentence for every failure saying how far it fell and why it is gated."""
    header = ("metric", "bound", "allowed", "measured", "change", "status")
    rows = [header]
    for check in checks:
        sign = ">=" if check.bound == "min" else "<="
        measured = "missing" if check.value is None else f"{check.value:.4g}"
        rows.append((check.metric, f"{sign} {check.limit:.4g}", f"{sign} {check.allowed:.4g}", measured,
                     _percent(check.change), check.status.upper() if check.status != "pass" else "ok"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    failures = [check for check in checks if check.status != "pass"]
    for check in failures:
        if check.status == "missing":
            lines.append(f"- {check.message}")
            continue
        direction = "below its minimum" if check.bound == "min" else "above its maximum"
        lines.append(
            f"- {check.metric}: {check.value:.4g} is {abs(100 * (check.change or 0)):.1f}% {direction} "
            f"{check.limit:.4g} (tolerance {check.tolerance:.0%}, allowed {check.allowed:.4g})"
            + (f"; gated because: {check.why}" if check.why else "")
        )
    lines += [f"- {line}" for line in mismatches]
    verdict = "passed" if not failures and not mismatches else (
        f"failed: {len(failures)} of {len(checks)} metrics regressed or are missing"
        + (f", {len(mismatches)} requirement(s) differ" if mismatches else "")
    )
    return "\n".join([*lines, verdict])


def baseline_from_results(data: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
    """A card baseline from measured results: every ratio metric's value as its minimum (a regression is a drop
    below it beyond the gate's tolerance), `_requires` the card and the shapes it was measured at."""
    meta = data.get("meta", {})
    requires = {key: meta[key] for key in ("device", "model", "prompt_len", "decode_prompt_len") if key in meta}
    baseline: dict[str, Any] = {"_requires": requires}
    for metric, value in sorted(metrics.items()):
        config, column = metric.split(".", 1)
        if config in ("bf16", "hf-eager"):  # the references themselves: their ratios are 1 or not ours
            continue
        if column == "cv_max" and metric.startswith("all."):
            baseline[metric] = {"max": max(round(value, 4), 0.10), "why": "tokens/s stable over repeats"}
        elif _is_ratio(column) and column != "ttft_saving":  # TTFT is gated as the speed-up ttft_x_bf16
            baseline[metric] = {"min": round(value, 4), "why": f"measured {meta.get('date')} on {meta.get('device')}"}
    return baseline


@dataclass(frozen=True)
class GateOutcome:
    """One gate run: the verdict of every baseline metric and the requirements that differ."""

    results: Path
    baseline: Path
    tolerance: float
    checks: list[GateCheck]
    mismatches: list[str]

    @property
    def passed(self) -> bool:
        return not self.mismatches and all(check.status == "pass" for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"results": str(self.results), "baseline": str(self.baseline), "tolerance": self.tolerance,
                "passed": self.passed, "requirements": self.mismatches,
                "checks": [check.to_dict() for check in self.checks]}


def run_gate(results: Path, baseline: Path, tolerance: float = 0.05, kernels: list[Path] = ()) -> GateOutcome:
    """Gate a results file against a baseline file (kernel results of the same card included)."""
    data = load_results(results)
    metrics = results_metrics(data, kernel_files(data, results, list(kernels)))
    requires, bounds = load_baseline(baseline)
    errors = {row_label(row): str(row["error"]) for row in data["rows"] if row.get("error")}
    checks = gate(metrics, bounds, tolerance, errors)
    return GateOutcome(Path(results), Path(baseline), tolerance, checks, check_requirements(data, requires))
