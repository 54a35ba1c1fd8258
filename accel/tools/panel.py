"""The cost panel behind `sage infer panel`: one self-contained HTML page comparing each benchmark's baseline with
its compressed configurations (speed, memory, cost, quality), with charts, built from bench/results files.

Everything is inline (CSS, a little JavaScript for sorting and filtering, SVG charts drawn here), so the page
opens from disk, from an e-mail or from `--serve` on localhost alike, and loads nothing from the network.

Per results file the page shows: where it was measured (card, date, model), a comparison table of every
configuration with the standard metrics of accel.integration.metrics and each one's change against its baseline
row, bar charts of those metrics (the baseline bar in grey), charts of the file's own speed-up columns (x_*,
the kernel benchmarks), and the raw rows. Cost per million tokens needs a GPU-hour price (`--price-per-gpu-hour`
or ACCEL_PRICE_PER_GPU_HOUR): throughput alone does not say what a token costs.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from accel.errors import AccelError
from accel.integration.metrics import metrics_block, price_from_env, row_label, row_labels

__all__ = ["PanelError", "ResultsTable", "build_panel", "load_results_file", "make_server", "write_panel"]


class PanelError(AccelError, ValueError):
    """A results file cannot be read into the panel, or the panel cannot be written or served."""


# What the comparison table and the charts show, in order: (metric, heading, unit, lower is better).
COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    ("throughput_tok_s", "throughput", "tok/s", False),
    ("speedup", "speed-up vs baseline", "x", False),
    ("speedup_b1", "speed-up at batch 1", "x", False),
    ("ttft_ms", "TTFT", "ms", True),
    ("tpot_ms", "TPOT", "ms", True),
    ("peak_memory_gb", "peak memory", "GB", True),
    ("weights_gb", "weights", "GB", True),
    ("cost_per_mtok_usd", "cost / 1M tokens", "$", True),
    ("quality_delta_pct", "quality delta (perplexity)", "%", True),
    ("agreement", "agreement with baseline", "", False),
    ("acceptance_rate", "acceptance rate", "", False),
    ("mean_accepted_length", "mean accepted length", "tok", False),
    ("fallbacks", "fallbacks", "", True),
)
# Compared against the baseline row as a relative change in the table.
RELATIVE = ("throughput_tok_s", "ttft_ms", "tpot_ms", "peak_memory_gb", "weights_gb", "cost_per_mtok_usd")
# Measured at the row's best batch size: compared only with a baseline measured at the same batch size.
BATCHED = ("throughput_tok_s", "cost_per_mtok_usd")
_RATIO = re.compile(r"^x_|_x_|^vs_")


@dataclass(frozen=True)
class ResultsTable:
    """One table of a results file as the panel reads it (`part` names a nested table, "" for the file's own)."""

    path: Path
    part: str
    title: str
    meta: dict[str, Any]
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: str


def _rows(value: Any) -> list[dict[str, Any]] | None:
    rows = value.get("rows") if isinstance(value, dict) else None
    if isinstance(rows, list) and rows and all(isinstance(row, dict) for row in rows):
        return rows
    return None


def _table(path: Path, part: str, data: dict[str, Any], parent: dict[str, Any]) -> ResultsTable:
    rows = _rows(data) or []
    columns = data.get("columns") if isinstance(data.get("columns"), list) else []
    if not columns:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    meta = {**(parent.get("meta") or {}), **(data.get("meta") or {})} if data is not parent else dict(
        data.get("meta") or {})
    title = str(parent.get("title") or path.stem) + (f": {part}" if part else "")
    return ResultsTable(path, part, title, meta, [str(c) for c in columns], rows, str(data.get("notes") or ""))


def load_results_file(path: Path) -> list[ResultsTable]:
    """The tables of a bench results JSON: its own {title, meta, columns, rows, notes}, or, for a file of several
    tables (bench/results/kv_runtime.json), each top-level entry that has rows. Errors name the file and the fix."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PanelError(f"results file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PanelError(f"results file {path} is not readable JSON: {exc}") from None
    if _rows(data) is not None:
        return [_table(path, "", data, data)]
    nested = [_table(path, key, value, data) for key, value in data.items() if _rows(value) is not None] if isinstance(
        data, dict) else []
    if not nested:
        raise PanelError(
            f"results file {path} has no 'rows' of configurations; pass files written by bench/*.py or "
            "`sage infer bench --out` (bench/results/*.json)"
        )
    return nested


# ---------------------------------------------------------------------------------------------- formatting


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)[:200]
    return str(value)


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, n = base, 1
    while slug in used:
        n += 1
        slug = f"{base}-{n}"
    used.add(slug)
    return slug


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------- charts


def bar_chart(title: str, unit: str, bars: Sequence[tuple[str, float, bool]], lower_is_better: bool | None) -> str:
    """A horizontal bar chart as inline SVG: one bar per (label, value, is_baseline), a zero axis, values
    printed at the bar ends. Negative values grow to the left of the axis. lower_is_better None: no hint."""
    longest = max((min(len(label), 40) for label, _, _ in bars), default=4)
    label_w, plot_w, bar_h, gap, top = min(290, 7 * longest + 16), 300, 16, 5, 26
    values = [value for _, value, _ in bars]
    low, high = min(0.0, *values), max(0.0, *values)
    span = (high - low) or 1.0
    height = top + len(bars) * (bar_h + gap) + 8

    def x(value: float) -> float:
        return label_w + (value - low) / span * plot_w

    hint = "" if lower_is_better is None else (", lower is better" if lower_is_better else ", higher is better")
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {label_w + plot_w + 90} {height}" '
        f'width="{label_w + plot_w + 90}" height="{height}" aria-label="{_esc(title)}">',
        f'<text x="0" y="16" class="chart-title">{_esc(title)}{f" ({_esc(unit)})" if unit else ""}{hint}</text>',
        f'<line x1="{x(0):.1f}" y1="{top - 4}" x2="{x(0):.1f}" y2="{height - 6}" class="axis"/>',
    ]
    for i, (label, value, baseline) in enumerate(bars):
        y = top + i * (bar_h + gap)
        left, right = sorted((x(0), x(value)))
        css = "bar baseline" if baseline else ("bar negative" if value < 0 else "bar")
        parts += [
            f'<text x="{label_w - 8}" y="{y + bar_h - 5}" class="bar-label" text-anchor="end">'
            f"{_esc(label[:40])}</text>",
            f'<rect x="{left:.1f}" y="{y}" width="{max(right - left, 1):.1f}" height="{bar_h}" class="{css}">'
            f"<title>{_esc(label)}: {_esc(_fmt(value))} {_esc(unit)}</title></rect>",
            f'<text x="{right + 4:.1f}" y="{y + bar_h - 5}" class="bar-value">{_esc(_fmt(value))}</text>',
        ]
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------- sections


def _change(value: float, base: float) -> str:
    if not base:
        return ""
    change = 100.0 * (value / base - 1.0)
    return f' <span class="delta">({change:+.1f}%)</span>'


def _comparison(results: ResultsTable, block: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The comparison table (every row, errors included) and the metric names that have values."""
    configs: Mapping[str, Mapping[str, float]] = block["configs"]
    present = [col for col in COLUMNS if any(col[0] in values for values in configs.values())]
    head = "".join(f'<th data-sort="num">{_esc(name)}{f" ({_esc(unit)})" if unit else ""}</th>'
                   for _, name, unit, _ in present)
    body = []
    for row, key in zip(results.rows, row_labels(results.rows), strict=True):
        if row.get("error"):
            body.append(f'<tr class="failed"><td>{_esc(key)}</td><td colspan="{len(present)}">failed: '
                        f"{_esc(row['error'])}</td></tr>")
            continue
        values = configs[key]
        base = configs.get(block["baselines"].get(key, ""), {})
        baseline = block["baselines"].get(key) == key
        cells = []
        same_batch = values.get("throughput_batch") == base.get("throughput_batch")
        for metric, _, _, _ in present:
            if metric not in values:
                cells.append('<td class="num"></td>')
                continue
            comparable = metric in RELATIVE and metric in base and (same_batch or metric not in BATCHED)
            delta = _change(values[metric], base[metric]) if comparable and not baseline else ""
            batch = values.get("throughput_batch")
            at = f' <span class="batch">@b{batch:.0f}</span>' if metric in BATCHED and batch is not None else ""
            cells.append(f'<td class="num" data-value="{values[metric]:.6g}">{_esc(_fmt(values[metric]))}{at}{delta}'
                         "</td>")
        badge = ' <span class="badge">baseline</span>' if baseline else ""
        body.append(f'<tr class="{"baseline" if baseline else ""}" data-config="{_esc(key)}">'
                    f'<td class="config">{_esc(key)}{badge}</td>{"".join(cells)}</tr>')
    table = (f'<table class="compare sortable"><thead><tr><th data-sort="text">configuration</th>{head}</tr></thead>'
             f"<tbody>{''.join(body)}</tbody></table>")
    return table, [metric for metric, _, _, _ in present]


def _charts(results: ResultsTable, block: Mapping[str, Any], present: list[str]) -> str:
    configs: Mapping[str, Mapping[str, float]] = block["configs"]
    baselines = set(block["baselines"].values())
    charts = []
    for metric, name, unit, lower in COLUMNS:
        if metric not in present:
            continue
        bars = [(label, values[metric], label in baselines) for label, values in configs.items() if metric in values]
        # one configuration charts only what stands alone: its cost, or its speed-up (a ratio against 1x)
        if len(bars) > 1 or (bars and metric in ("cost_per_mtok_usd", "speedup")):
            charts.append(bar_chart(name, unit, bars, lower))
    ratio_columns = [col for col in results.columns if _RATIO.search(col) and col not in ("speedup",)]
    if "speedup" not in present:  # the kernel benchmarks: their own ratio columns (x_*, vs_*), one chart each
        for column in ratio_columns:
            bars = [(row_label(row), float(row[column]), False) for row in results.rows if _number(row.get(column))]
            if bars:
                charts.append(bar_chart(f"{column} (ratio, as the results file defines it)", "", bars, None))
    return "".join(f'<figure class="chart-box">{chart}</figure>' for chart in charts)


def _raw_table(results: ResultsTable) -> str:
    columns = [col for col in results.columns if col not in ("tokens", "kernels")]
    head = "".join(f"<th>{_esc(col)}</th>" for col in columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_esc(_fmt(row.get(col)))}</td>" for col in columns) + "</tr>" for row in results.rows
    )
    return (f'<details class="raw"><summary>raw rows ({len(results.rows)}) from {_esc(results.path.name)}</summary>'
            f'<div class="scroll"><table class="raw-table"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
            f"</table></div></details>")


def _section(results: ResultsTable, slug: str, price: float | None) -> str:
    block = metrics_block(results.rows, price)
    table, present = _comparison(results, block)
    meta = results.meta
    facts = [f"{key}: {meta[key]}" for key in ("device", "date", "model", "model_description", "dtype", "torch")
             if meta.get(key) not in (None, "")]
    notes = f'<p class="notes">{_esc(results.notes)}</p>' if results.notes else ""
    return (f'<section id="{slug}" class="results" data-file="{_esc(results.path.name)}">'
            f"<h2>{_esc(results.title)}</h2>"
            f'<p class="meta">{_esc(results.path.name)} &middot; {_esc(" · ".join(facts))}</p>'
            f"{table}<div class=\"charts\">{_charts(results, block, present)}</div>{notes}{_raw_table(results)}"
            f"</section>")


STYLE = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #d9dee7; --accent: #2f6fdf; --bad: #c4432b; --base: #8a93a3; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); margin: 0;
       background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 20px; }
header p { margin: 0; color: #c9d0dc; }
nav { padding: 8px 28px; background: #fff; border-bottom: 1px solid var(--line); position: sticky; top: 0;
      display: flex; flex-wrap: wrap; gap: 4px 14px; align-items: center; z-index: 1; }
nav a { color: var(--accent); text-decoration: none; white-space: nowrap; }
nav input { margin-left: auto; padding: 4px 8px; border: 1px solid var(--line); border-radius: 4px; min-width: 220px; }
main { padding: 8px 28px 40px; }
section.results { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 14px 18px;
                  margin: 18px 0; }
h2 { font-size: 17px; margin: 0 0 4px; }
.meta, .notes { color: var(--muted); margin: 0 0 10px; }
.notes { font-size: 12px; margin-top: 10px; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f6; font-weight: 600; cursor: pointer; user-select: none; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.baseline td { background: #f2f4f8; }
tr.failed td { color: var(--bad); }
.badge { background: var(--base); color: #fff; border-radius: 3px; font-size: 11px; padding: 1px 5px; }
.delta { color: var(--muted); font-size: 12px; }
.charts { display: flex; flex-wrap: wrap; gap: 10px 28px; margin-top: 14px; }
.batch { color: var(--muted); font-size: 11px; }
figure.chart-box { margin: 0; }
svg.chart { max-width: 100%; height: auto; }
.chart-title { font-size: 13px; font-weight: 600; fill: var(--ink); }
.bar { fill: var(--accent); } .bar.baseline { fill: var(--base); } .bar.negative { fill: var(--bad); }
.bar-label, .bar-value { font-size: 12px; fill: var(--ink); }
.axis { stroke: var(--muted); stroke-width: 1; }
details.raw { margin-top: 10px; } .scroll { overflow-x: auto; } .raw-table td, .raw-table th { font-size: 12px; }
.hidden { display: none; }
"""

SCRIPT = """
(function () {
  function cellValue(row, index) {
    var cell = row.children[index];
    if (!cell) { return ""; }
    var value = cell.getAttribute("data-value");
    return value === null ? cell.textContent.trim() : parseFloat(value);
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, index) {
      th.addEventListener("click", function () {
        var body = table.tBodies[0];
        var ascending = th.getAttribute("data-order") !== "asc";
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, index), y = cellValue(b, index);
          if (typeof x === "number" && typeof y === "number") { return ascending ? x - y : y - x; }
          return ascending ? String(x).localeCompare(String(y)) : String(y).localeCompare(String(x));
        });
        rows.forEach(function (row) { body.appendChild(row); });
        th.setAttribute("data-order", ascending ? "asc" : "desc");
      });
    });
  });
  var filter = document.getElementById("filter");
  filter.addEventListener("input", function () {
    var needle = filter.value.toLowerCase();
    document.querySelectorAll("table.compare tbody tr").forEach(function (row) {
      row.classList.toggle("hidden", needle !== "" && row.textContent.toLowerCase().indexOf(needle) < 0);
    });
  });
  document.body.setAttribute("data-ready", "1");
})();
"""


def build_panel(paths: Sequence[Path], price_per_gpu_hour: float | None = None) -> str:
    """The whole page for these results files (in the order given)."""
    if not paths:
        raise PanelError("give at least one results file, e.g. bench/results/*.json")
    price = price_from_env(price_per_gpu_hour)
    tables = [table for path in paths for table in load_results_file(Path(path))]
    used: set[str] = set()
    names = [table.path.stem + (f" {table.part}" if table.part else "") for table in tables]
    pairs = [(_slug(name, used), name, table) for name, table in zip(names, tables, strict=True)]
    nav = "".join(f'<a href="#{slug}">{_esc(name)}</a>' for slug, name, _ in pairs)
    sections = "".join(_section(table, slug, price) for slug, _, table in pairs)
    priced = (f"cost at ${price:g} per GPU-hour" if price is not None
              else "no GPU-hour price given: pass --price-per-gpu-hour to see cost per million tokens")
    generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # An empty inline icon: without it the browser asks the server for /favicon.ico.
        '<link rel="icon" href="data:,">'
        "<title>accel cost panel</title><style>" + STYLE + "</style></head><body>"
        "<header><h1>accel cost panel: baseline vs compressed configurations</h1>"
        f"<p>{len(paths)} results file(s), {len(tables)} table(s) &middot; {_esc(priced)} &middot; "
        f"generated {_esc(generated)}</p></header>"
        f'<nav>{nav}<input id="filter" type="search" placeholder="filter configurations" '
        'aria-label="filter configurations"></nav>'
        f"<main>{sections}</main><script>{SCRIPT}</script></body></html>\n"
    )


def write_panel(page: str, out: Path) -> Path:
    """Write the page atomically (a temporary file renamed into place)."""
    from accel.schema.io import atomic_write_text

    out = Path(out)
    if out.is_dir():
        raise PanelError(f"--out {out} is a directory; give a file name such as {out / 'panel.html'}")
    atomic_write_text(out, page)
    out.chmod(0o644)  # a page to share: readable by a web server or a colleague, unlike the temporary file's 0600
    return out


def make_server(page: str, port: int = 0, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) that answers / and /index.html with the page; port 0 picks a free one."""
    if not 0 <= port <= 65535:
        raise PanelError(f"--port must be 0..65535, got {port}")
    body = page.encode("utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server dispatches GET requests to
            if self.path.split("?", 1)[0] not in ("/", "/index.html"):
                self.send_error(404, "the panel is at /")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the CLI prints the URL once
            return

    try:
        return ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise PanelError(f"cannot serve the panel on {host}:{port}: {exc}; pick another --port") from None
