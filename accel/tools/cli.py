"""The `sage` console script. `sage infer ...` is accel's command group; plugins add commands to it.

Human output goes to stderr through rich; `--json` writes one JSON document to stdout for machines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from accel.compat import check_config
from accel.config import dumps, load_config, resolve_config
from accel.errors import AccelError, PluginError
from accel.plugins.loader import PluginPolicy, run_platform_probes
from accel.plugins.registry import PluginRegistry, describe, get_registry
from accel.tools.presets import get_preset, preset_names

console = Console(stderr=True)
app = typer.Typer(help="sage: the sageLLM command line.", no_args_is_help=True, add_completion=False)
infer = typer.Typer(help="accel: quantization, sparsity, speculative decoding and kernels.", no_args_is_help=True)
profile_app = typer.Typer(help="Validate and show profiles (AccelConfig files and presets).", no_args_is_help=True)
app.add_typer(infer, name="infer")
infer.add_typer(profile_app, name="profile")

JSON_OPTION = typer.Option(False, "--json", help="Write JSON to stdout instead of a table to stderr.")


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@infer.command("plugins")
def plugins_command(as_json: bool = JSON_OPTION) -> None:
    """List every plugin: distribution, version, hooks, what it provides, and load errors."""
    registry = get_registry()
    if as_json:
        emit_json(describe(registry))
        return
    table = Table(title="accel plugins")
    for column in ("name", "distribution", "version", "status", "provides", "error"):
        table.add_column(column)
    for info in registry.plugins:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in info.provides.items()) or ", ".join(info.hooks)
        status = {"loaded": "[green]loaded[/]", "failed": "[red]failed[/]"}.get(info.status, info.status)
        table.add_row(info.name, info.distribution, info.version, status, provides, info.error or "")
    console.print(table)


@infer.command("check")
def check_command(
    profile: str | None = typer.Option(None, "--profile", help="AccelConfig file (.yaml/.json) or a preset name."),
    preset: str | None = typer.Option(None, "--preset", help=f"Preset name: {', '.join(preset_names())}."),
    backend: str | None = typer.Option(None, "--backend", help="Kernel backend to check (default: auto)."),
    chip: str | None = typer.Option(
        None, "--chip", help="Plan for a chip family from its published figures; it need not be present."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Which backends are present, what the device supports, and layer by layer which kernel would run a profile
    there, what falls back and what is refused. A backend whose device is absent is planned for each of its chip
    families (or the one --chip names)."""
    from accel.compat import CompatReport, plugin_reasons
    from accel.planning.planner import plan_profile, plan_targets
    from accel.schema import profile_support

    registry = get_registry()
    if profile is not None and preset is None and not Path(profile).exists() and profile in preset_names():
        profile, preset = None, profile  # --profile w4a16 names a preset
    config = resolve_config(profile, preset)
    probes = run_platform_probes(registry.policy)
    backends = [
        {"name": name, "device_type": spec.device_type, "priority": spec.priority, "available": spec.is_available()}
        for name, spec in sorted(registry.kernel_backends().items(), key=lambda kv: -kv[1].priority)
    ]
    targets = plan_targets(registry, backend or config.quantization.kernel_backend, chip)
    target_backend, capability, family = targets[0]
    if family is None:  # the device in hand: the compatibility report as before
        report = check_config(config, registry, backend)
    else:
        reasons = plugin_reasons(config, registry) + profile_support(config.quantization, capability)
        report = CompatReport(backend=target_backend, capability=capability, reasons=reasons)
    plans = [plan_profile(config.quantization, cap, registry, backend=name, chip=family)
             for name, cap, family in targets]
    result = {
        "platforms": [p.__dict__ for p in probes],
        "backends": backends,
        "capability": report.capability.to_dict(),
        "profile": config.quantization.scheme_name(),
        "compatibility": report.to_dict(),
        "plans": [plan.to_dict() for plan in plans],
    }
    runs = not plugin_reasons(config, registry) and all(plan.ok for plan in plans)
    if as_json:
        emit_json(result)
    else:
        _print_check(result, report.ok)
        for plan in plans:
            where = f"chip family {plan.chip} (published figures)" if plan.chip else plan.device
            table = Table(title=f"plan: {plan.profile} on {plan.backend}, {where}")
            for column in ("layer", "requested", "runs", "op", "kernel backend", "status", "note"):
                table.add_column(column)
            for layer in plan.layers:
                colour = {"ok": "green", "fallback": "yellow", "refused": "red"}[layer.status]
                table.add_row(layer.kind, layer.requested, layer.planned, layer.op, layer.backend,
                              f"[{colour}]{layer.status}[/]", layer.note)
            console.print(table)
            for line in [*(f"[yellow]warning:[/] {w}" for w in plan.warnings),
                         *(f"[red]refused:[/] {r}" for r in plan.refused)]:
                console.print(f"  {line}", highlight=False)
    if not runs:
        raise typer.Exit(1)


def _print_check(result: dict[str, Any], ok: bool) -> None:
    probes = Table(title="platform probes")
    for column in ("probe", "distribution", "found", "error"):
        probes.add_column(column)
    for p in result["platforms"]:
        probes.add_row(p["name"], p["distribution"], p["platform"] or "absent", p["error"] or "")
    console.print(probes)
    backends = Table(title="kernel backends")
    for column in ("backend", "device type", "priority", "available"):
        backends.add_column(column)
    for b in result["backends"]:
        backends.add_row(b["name"], b["device_type"], str(b["priority"]), "yes" if b["available"] else "no")
    console.print(backends)
    cap = result["capability"]
    console.print(
        f"device: [bold]{cap['device_name']}[/] ({cap['device_type']}); quant formats: "
        f"{', '.join(cap['supported_quant_formats']) or 'none'}; sparse formats: "
        f"{', '.join(cap['supported_sparse_formats']) or 'none'}"
    )
    compat = result["compatibility"]
    if ok:
        console.print(f"profile [bold]{result['profile']}[/] can run here on backend {compat['backend']}")
    else:
        console.print(f"profile [bold]{result['profile']}[/] [red]cannot run here[/]:")
        for reason in compat["reasons"]:
            console.print(f"  - {reason}", highlight=False)


@profile_app.command("validate")
def profile_validate(path: Path, as_json: bool = JSON_OPTION) -> None:
    """Validate an AccelConfig file; errors name the field, the value and what is allowed."""
    config = load_config(path)
    if as_json:
        emit_json({"file": str(path), "valid": True, "config": config.to_dict()})
    else:
        console.print(f"{path}: valid ({config.quantization.scheme_name()})")


@profile_app.command("show")
def profile_show(
    preset: str,
    fmt: str = typer.Option("yaml", "--format", help="yaml or json"),
) -> None:
    """Print a preset as a profile file you can edit and pass back with --profile."""
    if fmt not in ("yaml", "json"):
        raise fail(f"--format: got {fmt!r}; allowed: yaml, json")
    sys.stdout.write(dumps(get_preset(preset), fmt))


@profile_app.command("list")
def profile_list(as_json: bool = JSON_OPTION) -> None:
    """List the presets with their scheme names."""
    rows = [{"preset": name, "scheme": get_preset(name).quantization.scheme_name()} for name in preset_names()]
    if as_json:
        emit_json(rows)
        return
    table = Table(title="presets")
    table.add_column("preset")
    table.add_column("scheme")
    for row in rows:
        table.add_row(row["preset"], row["scheme"])
    console.print(table)


@infer.command("eval")
def eval_command(
    model: str | None = typer.Option(None, "--model", help="HF model id or directory (default: bundled)."),
    seq_len: int = typer.Option(512, "--seq-len", min=8, help="Tokens per evaluation window."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=8, help="Evaluate at most this many tokens."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Perplexity of a model on the held-out evaluation split of the bundled corpus."""
    from accel.data.corpus import corpus_fingerprint
    from accel.evaluation.perplexity import evaluate_perplexity
    from accel.runtime.loaders import load_model, model_info

    with console.status("loading model"):
        lm, tokenizer = load_model(model)
    result = evaluate_perplexity(lm, tokenizer, seq_len=seq_len, max_tokens=max_tokens, progress=not as_json)
    info = model_info(lm)
    data = {"model": model or "bundled", "model_info": info, **result.__dict__,
            "corpus_sha256": corpus_fingerprint()}
    if as_json:
        emit_json(data)
        return
    table = Table(title=f"perplexity on the evaluation split ({data['model']})")
    for column in ("perplexity", "tokens", "windows", "seq len", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(f"{result.perplexity:.3f}", str(result.num_tokens), str(result.num_windows),
                  str(result.seq_len), f"{result.seconds:.1f}")
    console.print(table)


@infer.command("quantize")
def quantize_command(
    model: str | None = typer.Option(None, "--model", help="HF model id or directory (default: bundled)."),
    profile: Path | None = typer.Option(None, "--profile", help="AccelConfig file (.yaml/.json)."),
    preset: str | None = typer.Option(None, "--preset", help="Preset name (default: w4a16)."),
    method: str | None = typer.Option(None, "--method", help="Override the method: gptq, awq, smooth_quant, rtn..."),
    calib: str | None = typer.Option(
        None, "--calib", help="Calibration text: 'bundled', a .txt/.jsonl file, or a datasets name."
    ),
    calib_samples: int | None = typer.Option(None, "--calib-samples", min=1, help="Calibration samples."),
    calib_seq_len: int | None = typer.Option(None, "--calib-seq-len", min=8, help="Tokens per calibration sample."),
    out: Path | None = typer.Option(None, "--out", help="Artifact directory (default: ./accel-out/<model>-<scheme>)."),
    artifact_format: str = typer.Option(
        "compressed-tensors", "--format", help="compressed-tensors (vLLM, SGLang) or autoawq (LMDeploy TurboMind)."
    ),
    eval_tokens: int | None = typer.Option(
        None, "--eval-tokens", min=512, help="Evaluate on at most this many tokens."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Quantize a model (default: the bundled one, preset w4a16) and write a deployable artifact."""
    from accel.tools.quantize import run_quantize

    if artifact_format not in ("compressed-tensors", "autoawq"):
        raise fail(f"--format: got {artifact_format!r}; allowed: compressed-tensors, autoawq")
    config = resolve_config(profile, preset or (None if profile else "w4a16"))
    changes = {"method": method, "calibration_dataset": calib, "calibration_samples": calib_samples,
               "calibration_sequence_length": calib_seq_len}
    quant = config.quantization.model_validate(
        {**config.quantization.model_dump(), **{k: v for k, v in changes.items() if v is not None}}
    )
    config = config.model_copy(update={"quantization": quant})
    target = out or default_out(model, quant.scheme_name())
    if config.sparsity is not None and config.sparsity.pattern != "none":
        # A sparse profile (e.g. w4a16-2:4) prunes first, then quantizes keeping the mask: what `prune
        # --then-quantize` does, with the profile's own pruning recipe.
        _quantize_sparse(config, model, target, artifact_format, eval_tokens, as_json, preset or str(profile))
        return
    report = run_quantize(config, get_registry(), model_name=model, out=target, artifact_format=artifact_format,
                          eval_tokens=eval_tokens, progress=not as_json)
    if as_json:
        emit_json(report.to_dict())
        return
    table = Table(title=f"quantized {report.model}: {report.scheme} ({report.method})")
    for column in ("", "full precision", "quantized"):
        table.add_column(column, justify="right")
    table.add_row("size (MB, FP16 vs packed)", f"{report.fp16_bytes / 1e6:.1f}", f"{report.quantized_bytes / 1e6:.1f}")
    if report.perplexity_before and report.perplexity_after:
        before, after = report.perplexity_before.perplexity, report.perplexity_after.perplexity
        table.add_row("perplexity (eval split)", f"{before:.3f}", f"{after:.3f} ({100 * (after / before - 1):+.2f}%)")
    table.add_row("quantization time (s)", "", f"{report.quantization.seconds:.1f}")
    table.add_row("peak memory (GB)", "", f"{report.quantization.peak_rss_bytes / 1e9:.2f}")
    console.print(table)
    console.print(f"artifact: {report.artifact} ({(report.artifact_bytes or 0) / 1e6:.1f} MB on disk)")


def _quantize_sparse(
    config: Any, model: str | None, target: Path, artifact_format: str, eval_tokens: int | None, as_json: bool,
    name: str,
) -> None:
    from accel.tools.prune import run_prune

    if artifact_format != "compressed-tensors":
        raise fail(f"--format {artifact_format}: a sparse profile writes compressed-tensors with accel's sparse form")
    registry = get_registry()
    if config.sparsity.method not in registry.pruning_methods():
        raise fail(f"the profile's sparsity.method {config.sparsity.method!r} is not installed (have: "
                   f"{', '.join(sorted(registry.pruning_methods()))}); pip install accel-sparsegpt or set the method")
    report = run_prune(config, registry, model_name=model, then_quantize=name, out=target, eval_tokens=eval_tokens,
                       progress=not as_json)
    _print_prune_report(report, as_json)


def default_out(model: str | None, suffix: str) -> Path:
    """accel-out/<model>-<suffix>: where a command writes when --out is not given (model ids' slashes as --)."""
    return Path("accel-out") / f"{(model or 'bundled').strip('/').replace('/', '--')}-{suffix}"


@infer.command("run-speculative")
def run_speculative_command(
    model: str | None = typer.Option(None, "--model", help="Target model id or directory (default: bundled)."),
    draft: str = typer.Option(
        "ngram", "--draft", help="Draft strategy: ngram, draft_model, layer_skip, self_quant (medusa with --runtime)."
    ),
    prompt: str = typer.Option("Write a short note about why the sky is blue.", "--prompt", help="User prompt."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    k: int = typer.Option(4, "--k", min=1, max=64, help="Draft tokens per step (grows and shrinks when dynamic)."),
    draft_model: str | None = typer.Option(
        None, "--draft-model", help="Draft model for --draft draft_model, or the heads' directory for medusa."
    ),
    runtime: bool = typer.Option(
        False, "--runtime", help="Decode on the accel runtime (CUDA graphs on a GPU) instead of transformers."
    ),
    device: str = typer.Option("cpu", "--device", help="With --runtime: cpu or cuda."),
    draft_quantization: str = typer.Option("w8a16", "--draft-quantization", help="Preset for --draft self_quant."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    seed: int = typer.Option(0, "--seed"),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", min=0, max=65535, help="Serve Prometheus metrics on 127.0.0.1:PORT (0: a free port)."
    ),
    metrics_hold: float = typer.Option(
        60.0, "--metrics-hold", min=0.0, help="Seconds to keep serving metrics after decoding (with --metrics-port)."
    ),
    price: float | None = typer.Option(
        None, "--price-per-gpu-hour", help="US dollars per GPU-hour, for the cost-per-million-tokens metric."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Decode one prompt with speculative decoding; print the text and vLLM-style metrics (and serve them in
    Prometheus format with --metrics-port)."""
    from accel.runtime.loaders import load_model
    from accel.schema import SpeculativeConfig
    from accel.speculative.verifier import SamplingParams
    from accel.tools.speculative import MetricsExport, chat_input_ids, run_speculative, run_speculative_runtime

    if draft == "medusa" and not runtime:
        raise fail("--draft medusa drafts from the accel runtime's own steps: add --runtime (and --draft-model HEADS)")
    config = SpeculativeConfig(strategy=draft, num_speculative_tokens=k, max_speculative_tokens=max(k, 8),
                               draft_model=draft_model, draft_quantization=draft_quantization)
    export = None if metrics_port is None else MetricsExport(metrics_port, f"speculative-{draft}", price)
    if export is not None:
        console.print(f"metrics at {export.url}", highlight=False)
    hold = 0.0  # until the request is done: a failed run stops the exporter at once
    try:
        target, tokenizer = load_model(model)
        ids = chat_input_ids(tokenizer, prompt)
        params = SamplingParams(temperature=temperature, seed=seed)
        if runtime:
            tokens, metrics = run_speculative_runtime(config, target, tokenizer, ids, max_new_tokens, params, device)
        else:
            tokens, metrics = run_speculative(get_registry(), config, target, tokenizer, ids, max_new_tokens, params)
        if export is not None:
            export.observe(metrics)
        text = tokenizer.decode(tokens[0], skip_special_tokens=True)
        data = {"model": model or "bundled", "draft": draft, "runtime": runtime, "text": text,
                "metrics": metrics.to_dict(),
                **({"metrics_url": export.url} if export is not None else {})}
        if as_json:
            emit_json(data)
        else:
            sys.stdout.write(text + "\n")
            table = Table(title=f"speculative decoding ({draft})")
            table.add_column("metric")
            table.add_column("value", justify="right")
            for key, value in metrics.to_dict().items():
                shown = ", ".join(f"{v:.2f}" for v in value) if isinstance(value, list) else (
                    f"{value:.3f}" if isinstance(value, float) else str(value))
                table.add_row(key, shown)
            console.print(table)
        sys.stdout.flush()
        if export is not None and metrics_hold > 0:
            console.print(f"serving metrics at {export.url} for {metrics_hold:g} s (Ctrl-C to stop)", highlight=False)
            hold = metrics_hold
    finally:
        if export is not None:
            export.close(hold)


bench_app = typer.Typer(help="End-to-end decode benchmark of the runtime, and the performance gate.")
infer.add_typer(bench_app, name="bench")


def _int_list(option: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise fail(f"{option}: expected comma-separated integers like 1,16,64, got {text!r}") from None


@bench_app.callback(invoke_without_command=True)
def bench_command(
    ctx: typer.Context,
    model: str | None = typer.Option(
        None, "--model", help="llama3-8b (random weights) or bundled (default: llama3-8b on CUDA, bundled on CPU)."
    ),
    device: str | None = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present)."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="Compute dtype: bfloat16, float16, float32."),
    configs: str | None = typer.Option(None, "--configs", help="Comma-separated configurations (default: all)."),
    batch: str = typer.Option("1,16,64", "--batch", help="Comma-separated batch sizes for tokens/s."),
    prompt_len: int = typer.Option(2048, "--prompt-len", help="Prompt tokens for TTFT and peak memory."),
    decode_prompt_len: int = typer.Option(128, "--decode-prompt-len", help="Prompt tokens for the tokens/s runs."),
    new_tokens: int = typer.Option(128, "--new-tokens", help="Tokens generated per run."),
    repeats: int = typer.Option(5, "--repeats", help="Timed runs per measurement (after a warm-up)."),
    compile_step: bool = typer.Option(
        False, "--compile", help="torch.compile the runtime's step before capturing it (all configs alike)."
    ),
    prefill_graph: bool = typer.Option(
        True, "--prefill-graph/--no-prefill-graph",
        help="Time TTFT on a CUDA-graph prefill of the long prompt (CUDA; the eager time is reported beside it).",
    ),
    layers: int | None = typer.Option(None, "--layers", help="Decoder layers of llama3-8b (fewer for smoke runs)."),
    seed: int = typer.Option(0, "--seed"),
    out: Path | None = typer.Option(None, "--out", help="Write the results JSON here (and .md beside it)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """TTFT, TPOT, tokens/s and peak memory per weight / KV configuration, beside HF eager generate."""
    if ctx.invoked_subcommand is not None:
        return
    import torch

    from accel.tools.bench import CONFIGS, BenchSettings, markdown, run_bench, write_results

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = BenchSettings(
        model=model or ("llama3-8b" if device.startswith("cuda") else "bundled"), device=device, dtype=dtype,
        configs=tuple(c.strip() for c in (configs or ",".join(CONFIGS)).split(",") if c.strip()),
        batches=_int_list("--batch", batch), prompt_len=prompt_len, decode_prompt_len=decode_prompt_len,
        new_tokens=new_tokens, repeats=repeats, layers=layers, seed=seed, compile=compile_step,
        prefill_graph=prefill_graph,
    )
    try:
        settings.check()
    except ValueError as exc:
        raise fail(str(exc)) from None
    data = run_bench(settings, log=lambda message: console.print(message, markup=False, highlight=False))
    if out is not None:
        json_path, md_path = write_results(data, out)
        console.print(f"wrote {json_path} and {md_path}", highlight=False)
    if as_json:
        emit_json(data)
    else:
        sys.stderr.write(f"\n{data['title']}\n\n{markdown(data)}\n\n")
    if all(row.get("error") for row in data["rows"]):
        raise typer.Exit(1)


@infer.command("gate")
def gate_command(
    results: Path = typer.Argument(..., help="Results JSON: `sage infer bench --out` or any bench/results/*.json."),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="Baseline JSON {metric: {min|max, why, tolerance?}}, e.g. bench/baselines/*.json."
    ),
    tolerance: float = typer.Option(0.05, "--tolerance", help="Relative slack on every bound without its own."),
    kernels: list[Path] = typer.Option(
        [], "--kernels", help="Kernel results JSON (repeatable; default: kernels_*.json beside RESULTS)."
    ),
    write_baseline: Path | None = typer.Option(
        None, "--write-baseline", help="Write the measured ratios as a baseline for this card, instead of gating."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Compare a results file's ratios with a baseline: a diff of measured against allowed; exit 1 on any
    regression beyond its tolerance or missing metric."""
    from accel.schema.io import atomic_write_text
    from accel.tools.perf_gate import (
        baseline_from_results,
        kernel_files,
        load_results,
        report,
        results_metrics,
        run_gate,
    )

    if (baseline is None) == (write_baseline is None):
        raise fail("give --baseline FILE to gate, or --write-baseline FILE to record one (not both)")
    if write_baseline is not None:
        data = load_results(results)
        metrics = results_metrics(data, kernel_files(data, results, kernels))
        atomic_write_text(write_baseline, json.dumps(baseline_from_results(data, metrics), indent=2) + "\n")
        console.print(f"wrote {write_baseline}", highlight=False)
        return
    outcome = run_gate(results, baseline, tolerance, kernels)
    if as_json:
        emit_json(outcome.to_dict())
    else:
        sys.stderr.write(f"perf gate: {results} against {baseline} (default tolerance {tolerance:.0%})\n\n"
                         f"{report(outcome.checks, outcome.mismatches)}\n")
    if not outcome.passed:
        raise typer.Exit(1)


# `sage infer bench gate` is the same command, kept for existing scripts.
bench_app.command("gate")(gate_command)


@infer.command("panel")
def panel_command(
    results: list[Path] = typer.Argument(..., help="Results JSON files, e.g. bench/results/*.json."),
    out: Path | None = typer.Option(None, "--out", help="Write the HTML page here (default: accel-panel.html)."),
    serve: bool = typer.Option(False, "--serve", help="Serve the page on localhost until interrupted."),
    port: int = typer.Option(8765, "--port", help="Port for --serve (0 picks a free one)."),
    price: float | None = typer.Option(
        None, "--price-per-gpu-hour", help="US dollars per GPU-hour, for cost per million tokens "
        "(default: ACCEL_PRICE_PER_GPU_HOUR)."
    ),
) -> None:
    """One self-contained HTML page comparing baseline and compressed configurations: speed, memory, cost and
    quality, with charts."""
    from accel.tools.panel import build_panel, make_server, write_panel

    page = build_panel(results, price)
    if out is not None or not serve:
        path = write_panel(page, out or Path("accel-panel.html"))
        console.print(f"wrote {path} ({len(page) / 1e3:.0f} kB, {len(results)} results file(s))", highlight=False)
    if serve:
        server = make_server(page, port)
        host, bound = server.server_address[:2]
        console.print(f"serving the panel at http://{host}:{bound}/ (Ctrl-C to stop)", highlight=False)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


@infer.command("distill")
def distill_command(
    model: str | None = typer.Option(None, "--model", help="Target model id or directory (default: bundled)."),
    layers: int = typer.Option(6, "--layers", min=1, help="Decoder layers the draft keeps."),
    selection: str = typer.Option("first", "--layer-selection", help="first (layers 0..N-1) or strided (spread)."),
    steps: int = typer.Option(200, "--steps", min=1, help="Optimizer steps."),
    seq_len: int = typer.Option(128, "--seq-len", min=2, help="Tokens per training window."),
    batch: int = typer.Option(4, "--batch", min=1, help="Windows per step."),
    lr: float = typer.Option(5e-4, "--lr", min=0.0, help="Peak learning rate (warmup, then cosine)."),
    warmup: int = typer.Option(10, "--warmup-steps", min=0),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="Softmax temperature of the KL loss."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", min=1),
    eval_tokens: int = typer.Option(4096, "--eval-tokens", min=2, help="Held-out tokens for the before/after KL."),
    text_source: str = typer.Option(
        "bundled", "--text-source",
        help="Training text: bundled (corpus), a .txt/.jsonl file, or generated (the target's own replies).",
    ),
    generate_prompts: int = typer.Option(512, "--generate-prompts", min=1, help="Prompts for --text-source generated."),
    generate_tokens: int = typer.Option(256, "--generate-tokens", min=1, help="Most tokens of each generated reply."),
    device: str = typer.Option("cpu", "--device", help="Where the target and the student run (cpu, cuda)."),
    medusa_heads: int = typer.Option(
        0, "--medusa-heads", min=0, help="Train this many Medusa heads (speculative.medusa) instead of a student."
    ),
    out: Path | None = typer.Option(None, "--out", help="Artifact directory (checkpoints go to OUT.checkpoints)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Distill a layer-truncated draft model from the target for speculative decoding (--draft draft_model)."""
    from pydantic import ValidationError

    from accel.schema.io import format_validation_error
    from accel.tools.distillation import DistillationConfig, run_distill

    try:
        config = DistillationConfig(
            num_layers=layers, layer_selection=selection, steps=steps, seq_len=seq_len, batch_size=batch, lr=lr,
            warmup_steps=warmup, temperature=temperature, checkpoint_every=checkpoint_every, eval_tokens=eval_tokens,
            text_source=text_source, generate_prompts=generate_prompts, generate_tokens=generate_tokens,
        )
    except ValidationError as exc:
        raise fail(format_validation_error(exc, "distill options")) from None
    target = out or default_out(model, f"draft-{layers}l")
    if device.startswith("cuda"):
        import torch

        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for the float32 target and student
    if medusa_heads:
        _distill_heads(config, model, medusa_heads, out, resume, device, as_json)
        return
    report = run_distill(config, model_name=model, out=target, resume=resume, progress=not as_json, device=device)
    if as_json:
        emit_json(report.to_dict())
        return
    table = Table(title=f"distilled {len(report.layers)} of {report.target_layers} layers of {report.target}")
    for column in ("held-out", "before", "after"):
        table.add_column(column, justify="right")
    for name in ("kl", "top1_agreement", "expected_acceptance"):
        table.add_row(name, f"{getattr(report.before, name):.4f}", f"{getattr(report.after, name):.4f}")
    console.print(table)
    console.print(f"steps: {report.steps}, final loss {report.final_loss:.4f}; artifact: {report.artifact} "
                  f"(--draft draft_model --draft-model {report.artifact})", highlight=False)


def _distill_heads(
    config: Any, model: str | None, num_heads: int, out: Path | None, resume: bool, device: str, as_json: bool
) -> None:
    """`sage infer distill --medusa-heads K`: train K Medusa heads for the target and write them to OUT."""
    from accel.runtime.loaders import load_model
    from accel.tools.distillation.heads import distill_heads

    target_model, tokenizer = load_model(model, device=device)
    target = out or default_out(model, f"medusa-{num_heads}")
    report = distill_heads(target_model, tokenizer, config, num_heads, source=model or "bundled", out=target,
                           resume=resume, progress=not as_json)
    if as_json:
        emit_json(report.to_dict())
        return
    table = Table(title=f"{num_heads} Medusa heads for {report.target}: held-out top-1 agreement")
    for column in ("head", "before", "after"):
        table.add_column(column, justify="right")
    for i, (before, after) in enumerate(zip(report.before, report.after, strict=True)):
        table.add_row(f"+{i + 2}", f"{before:.4f}", f"{after:.4f}")
    console.print(table)
    console.print(f"steps: {report.steps}, final loss {report.final_loss:.4f}; heads: {report.out} (on the runtime: "
                  f"bench/speculative_gpu.py --medusa {report.out}, or speculative.medusa.MedusaDraft)",
                  highlight=False)


def build_app(registry: PluginRegistry) -> typer.Typer:
    """The app with every plugin's commands added to `sage infer`."""
    for error in registry.register_commands(infer):
        console.print(f"[yellow]warning:[/] {error}", highlight=False)
    return app


def main() -> None:
    """Console-script entry point: load plugins (reporting failures), then run the command."""
    try:
        registry = get_registry()
    except PluginError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        if PluginPolicy.from_env().strict:
            console.print("strict mode is on (ACCEL_STRICT_PLUGINS); unset it to skip broken plugins")
        sys.exit(1)
    try:
        build_app(registry)()  # standalone: click reports usage errors and sets exit codes
    except AccelError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


@infer.command("prune")
def prune_command(
    model: str | None = typer.Option(None, "--model", help="HF model id or directory (default: bundled)."),
    pattern: str = typer.Option("2:4", "--pattern", help="2:4, 4:8 (any N:M), block or unstructured."),
    ratio: float | None = typer.Option(None, "--ratio", min=0.0, max=0.99, help="Fraction dropped (default 0.5; "
                                       "N:M fixes it)."),
    method: str | None = typer.Option(None, "--method", help="magnitude, wanda or sparsegpt (default: sparsegpt "
                                      "when accel-sparsegpt is installed, else magnitude)."),
    then_quantize: str | None = typer.Option(None, "--then-quantize", help="Then quantize with this preset "
                                             "(w4a16, w4a16-rtn, ...), keeping the mask."),
    out: Path | None = typer.Option(None, "--out", help="Artifact directory (default: ./accel-out/<model>-<pattern>-"
                                    "<method>)."),
    eval_tokens: int | None = typer.Option(None, "--eval-tokens", min=512, help="Evaluate on at most this many "
                                           "tokens."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Prune a model (default: the bundled one, 2:4) and write an artifact with its compact sparse form."""
    from pydantic import ValidationError

    from accel.schema import AccelConfig, QuantizationProfile, SparsityConfig
    from accel.schema.io import format_validation_error
    from accel.tools.prune import run_prune

    registry = get_registry()
    method = method or ("sparsegpt" if "sparsegpt" in registry.pruning_methods() else "magnitude")
    try:
        sparsity = SparsityConfig.model_validate(
            {"pattern": pattern, "method": method, **({} if ratio is None else {"ratio": ratio})})
        quant = get_preset(then_quantize).quantization if then_quantize else QuantizationProfile()
        quant = quant.model_validate({**quant.model_dump(), "sparsity_pattern": pattern,
                                      "sparsity_ratio": sparsity.ratio})
    except ValidationError as exc:
        raise fail(format_validation_error(exc, "prune options")) from None
    name = f"{(model or 'bundled').strip('/').replace('/', '--')}-{pattern.replace(':', 'of')}-{method}"
    target = out or Path("accel-out") / (name + (f"-{then_quantize}" if then_quantize else ""))
    report = run_prune(AccelConfig(quantization=quant, sparsity=sparsity), registry, model_name=model,
                       then_quantize=then_quantize, out=target, eval_tokens=eval_tokens, progress=not as_json)
    _print_prune_report(report, as_json)


def _print_prune_report(report: Any, as_json: bool) -> None:
    """The closing tables of a prune run (accel.tools.prune.PruneReport), or its JSON."""
    pattern, method, then_quantize = report.pattern, report.method, report.then_quantize
    if as_json:
        emit_json(report.to_dict())
        return
    kinds = Table(title=f"sparsity reached ({pattern}, {method})")
    for column in ("layer kind", "dropped"):
        kinds.add_column(column, justify="right")
    for kind, dropped in report.sparsity_by_kind.items():
        kinds.add_row(kind, f"{100 * dropped:.1f}%")
    console.print(kinds)
    table = Table(title=f"pruned {report.model}" + (f", then {then_quantize}" if then_quantize else ""))
    stages = [("dense", report.perplexity_before), ("pruned", report.perplexity_pruned)]
    stages += [("pruned + quantized", report.perplexity_after)] if then_quantize else []
    for column, _ in [("", None), *stages]:
        table.add_column(column, justify="right")
    if all(result for _, result in stages):
        table.add_row("perplexity (eval split)", *(f"{result.perplexity:.3f}" for _, result in stages))
    sizes = [report.fp16_bytes, *([report.fp16_bytes] if then_quantize else []), report.model_bytes]
    table.add_row("size (MB, as stored)", *(f"{size / 1e6:.1f}" for size in sizes))
    table.add_row("size (MB, compact sparse form)", *[""] * (len(stages) - 1), f"{report.compact_bytes / 1e6:.1f}")
    console.print(table)
    console.print(f"pruning: {report.pruning.seconds:.1f} s on {report.pruning.calibration_tokens} calibration "
                  f"tokens; artifact: {report.artifact} ({(report.artifact_bytes or 0) / 1e6:.1f} MB on disk)",
                  highlight=False)
