"""The roofline cost model (accel.planning.roofline) against what the CUDA benchmark measured on a card.

For each configuration of a `sage infer bench` result (bench/results/decode.json by default: Llama-3-8B shapes on an
H200), the model predicts decode tokens/s at each batch, TTFT and peak memory from the card's datasheet figures
(accel.planning.chips) and, second, with the copy bandwidth measured on the same card in place of the datasheet's;
the table gives each prediction beside the measurement and the error, predicted / measured - 1. Nothing is fitted
to the measurements: the roofline is a lower bound on time, so a negative time error (positive tokens/s error) is
how far the kernels are from the bound.

    python bench/roofline_check.py                               # -> bench/results/roofline_check.json / .md
    python bench/roofline_check.py --results bench/results/decode_compile.json --out bench/results/roofline_compile
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import RESULTS, write_results

from accel.planning.chips import chip_families, match_chip
from accel.planning.roofline import ModelShape, Workload, predict

# `sage infer bench` configurations as (weight format, KV cache format) of the roofline model.
FORMATS = {
    "bf16": ("16-bit", "none"), "w4a16": ("w4a16", "none"), "w8a8-int8": ("w8a8-int8", "none"),
    "fp8": ("w8a8-fp8", "none"), "w4a16+kv8": ("w4a16", "int8"), "kv4": ("16-bit", "int4"),
    "fp8+kv8": ("w8a8-fp8", "int8"),
}
# Bandwidths measured on the H200 of these runs, separately from the decode benchmark (DESIGN.md section 7): the
# device-to-device copy (kernels_w4a16.json measured 4.223 TB/s), and what a bf16 linear 4096 -> 14336 achieves at
# M = 1 (41 us, 2.84 TB/s effective): the achievable bandwidth of the GEMV a decode step mostly is.
MEASURED_COPY_GBPS = 4250.0
MEASURED_LINEAR_GBPS = 2840.0


def error(predicted: float | None, measured: float | None) -> float | None:
    return None if predicted is None or not measured else predicted / measured - 1


def check(results: dict, copy_gbps: float, linear_gbps: float) -> tuple[list[dict], dict]:
    meta = results["meta"]
    chip = match_chip(list(chip_families().values()), meta["device"])
    if chip is None:
        raise SystemExit(f"no chip family matches the device {meta['device']!r} of these results")
    shape = ModelShape.llama3_8b(meta["layers"])
    batches = meta["batches"]
    rows: list[dict] = []
    for measured in results["rows"]:
        name = measured["config"]
        if name not in FORMATS or measured.get("error"):
            continue
        weight_format, kv_format = FORMATS[name]
        row: dict = {"config": name}
        for label, bandwidth in (("sheet", None), ("copy", copy_gbps), ("linear", linear_gbps)):
            for batch in batches:
                workload = Workload(batch=batch, context=meta["decode_prompt_len"] + meta["new_tokens"] // 2,
                                    prompt_len=meta["prompt_len"], max_seq=meta["prompt_len"] + meta["new_tokens"])
                p = predict(shape, chip.capability, weight_format, kv_format, workload, bandwidth_gbps=bandwidth)
                row[f"tps_b{batch}_{label}"] = p.decode_tokens_per_s
                row[f"tps_b{batch}_err_{label}"] = error(p.decode_tokens_per_s, measured.get(f"tps_b{batch}"))
            row[f"ttft_ms_{label}"] = p.ttft_ms
            row[f"ttft_err_{label}"] = error(p.ttft_ms, measured.get("ttft_ms"))
        for batch in batches:
            row[f"tps_b{batch}"] = measured.get(f"tps_b{batch}")
        row["ttft_ms"] = measured.get("ttft_ms")
        row["weights_gb_pred"], row["weights_gb"] = p.weights_gb, measured.get("weights_gb")
        for phase in ("prefill", "decode"):
            row[f"{phase}_peak_gb_pred"] = getattr(p, f"{phase}_peak_gb")
            row[f"{phase}_peak_gb"] = measured.get(f"{phase}_peak_gb")
            row[f"{phase}_peak_err"] = error(row[f"{phase}_peak_gb_pred"], row[f"{phase}_peak_gb"])
        row["weights_err"] = error(p.weights_gb, row["weights_gb"])
        row["bound_b1"] = predict(shape, chip.capability, weight_format, kv_format, Workload(batch=1)).decode_bound
        rows.append(row)
    summary = {}
    for key in [k for k in rows[0] if "_err" in k]:
        errors = [abs(row[key]) for row in rows if row.get(key) is not None]
        summary[key] = statistics.median(errors) if errors else None
    return rows, {"chip": chip.name, "chip_sources": dict(chip.sources), **summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS / "decode.json")
    parser.add_argument("--out", default="roofline_check", help="name under bench/results (JSON + Markdown)")
    parser.add_argument("--copy-gbps", type=float, default=MEASURED_COPY_GBPS)
    parser.add_argument("--linear-gbps", type=float, default=MEASURED_LINEAR_GBPS)
    args = parser.parse_args()
    results = json.loads(args.results.read_text(encoding="utf-8"))
    rows, summary = check(results, args.copy_gbps, args.linear_gbps)
    batches = results["meta"]["batches"]
    columns = ["config", "bound_b1"]
    for batch in batches:
        columns += [f"tps_b{batch}", f"tps_b{batch}_sheet", f"tps_b{batch}_err_sheet", f"tps_b{batch}_err_copy",
                    f"tps_b{batch}_err_linear"]
    columns += ["ttft_ms", "ttft_ms_sheet", "ttft_err_sheet", "weights_err", "prefill_peak_gb",
                "prefill_peak_gb_pred", "prefill_peak_err", "decode_peak_gb", "decode_peak_gb_pred", "decode_peak_err"]
    chip, sources = summary.pop("chip"), summary.pop("chip_sources")
    meta = {
        "measured": str(args.results), "device": results["meta"]["device"], "measured_on": results["meta"]["date"],
        "model": results["meta"]["model_description"], "chip_family": chip, "chip_sources": sources,
        "sheet_bandwidth_gbps": chip_families()[chip].capability.memory_bandwidth_gbps,
        "copy_bandwidth_gbps": args.copy_gbps, "linear_bandwidth_gbps": args.linear_gbps,
        "median_abs_error": summary,
    }
    notes = (
        "Predictions from accel.planning.roofline (nothing fitted to these measurements). *_sheet: datasheet "
        "bandwidth and dense peak throughput; *_err_copy / *_err_linear: the same with the copy bandwidth, or the "
        "bandwidth a bf16 GEMV achieves (both measured on the card by the kernel benchmarks, not by this run). "
        "err = predicted / measured - 1: tokens/s errors > 0 and TTFT errors < 0 mean the run is slower than the "
        "roofline bound. Decode context = decode_prompt_len + new_tokens / 2 (the mean over the generation); TTFT "
        "and peaks at prompt_len, batch 1, a cache of prompt_len + new_tokens positions. bound_b1: which roof "
        "bounds the batch-1 decode step. Median absolute errors per column are in the JSON meta."
    )
    write_results(args.out, f"Roofline model vs measured decode on {meta['device']}", columns, rows, meta, notes)


if __name__ == "__main__":
    main()
