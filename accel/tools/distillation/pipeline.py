"""The distill job behind `sage infer distill`: cut a student from the target, measure it against the target on
held-out text, train it on the target's logits, measure again, and write it as an accel artifact.

The artifact is a dense Hugging Face model directory (config.json with the student's layer count,
model.safetensors, the target's tokenizer) with accel's manifest, whose "distillation" entry is this job's
report. `SpeculativeConfig(strategy="draft_model", draft_model=<artifact>)` drafts with it, and
`load_artifact` verifies and loads it. Training checkpoints live beside it in <artifact>.checkpoints, not in
it: an artifact holds exactly the files its manifest lists.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from accel.data.corpus import corpus_fingerprint, evaluation_windows
from accel.errors import CorpusError
from accel.runtime.artifact import FORMAT, ArtifactInfo, dense_tensors, write_artifact
from accel.runtime.loaders import load_model
from accel.tools.distillation.config import DistillationConfig
from accel.tools.distillation.data import TokenWindows
from accel.tools.distillation.metrics import AgreementResult, compare_to_target
from accel.tools.distillation.selfgen import GENERATED_SOURCE, generated_stream
from accel.tools.distillation.student import make_student, select_layers
from accel.tools.distillation.train import train_student


@dataclass
class DistillReport:
    """What the job did and measured; `to_dict` is also the artifact manifest's "distillation" entry."""

    target: str
    target_layers: int
    layers: list[int]
    config: DistillationConfig
    before: AgreementResult
    after: AgreementResult
    steps: int
    final_loss: float | None
    losses: list[float]
    resumed_from: int | None
    train_seconds: float
    checkpoint_dir: str
    artifact: str | None = None
    artifact_bytes: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "target_layers": self.target_layers, "layers": self.layers,
            "config": self.config.to_dict(), "heldout_before": asdict(self.before),
            "heldout_after": asdict(self.after), "steps": self.steps, "final_loss": self.final_loss,
            "losses": self.losses, "resumed_from": self.resumed_from, "train_seconds": self.train_seconds,
            "checkpoint_dir": self.checkpoint_dir, "artifact": self.artifact, "artifact_bytes": self.artifact_bytes,
            "seconds": self.seconds, "corpus_sha256": corpus_fingerprint(),
        }


def default_checkpoint_dir(out: Path) -> Path:
    """<out>.checkpoints, beside the artifact directory."""
    return out.with_name(f"{out.name}.checkpoints")


def save_draft_artifact(
    student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path, report: DistillReport,
    dtype: torch.dtype = torch.float32,
) -> ArtifactInfo:
    """Write the student atomically as a dense accel artifact (no quantized layers) with the report."""
    manifest = {
        "format": FORMAT,  # a compressed-tensors model without quantization_config is a plain dense model
        "source": report.target,
        "layers": {},
        "kv_cache": None,
        "layer_choices": {},
        "kernel_meta": {},
        "distillation": report.to_dict(),
    }
    tensors = {key: tensor.cpu() for key, tensor in dense_tensors(student, set(), dtype).items()}
    return write_artifact(student, tokenizer, out, tensors=tensors,
                          quantization_config=None, manifest=manifest, dtype=dtype, overwrite=True)


def _generation_key(config: DistillationConfig) -> str:
    """A short digest of the settings that decide the generated text, naming its cache file."""
    fields = ("generate_prompts", "generate_tokens", "generate_temperature", "seed")
    text = json.dumps({name: getattr(config, name) for name in fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def training_text(
    target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: DistillationConfig, checkpoint_dir: Path
) -> tuple[torch.Tensor, TokenWindows]:
    """(held-out windows [n, seq_len], training windows): the bundled corpus's evaluation / calibration splits or
    a text file's, or with text_source "generated" the target's replies to held-out / training prompts (cached
    in the checkpoint directory, so --resume trains on the same text)."""
    if config.text_source != GENERATED_SOURCE:
        heldout = evaluation_windows(tokenizer, config.seq_len, max_tokens=config.eval_tokens)  # [n, seq_len]
        return heldout, TokenWindows.from_text(tokenizer, config.text_source, config.seq_len, config.batch_size,
                                               config.seed)
    streams = {}
    counts = {"evaluation": max(1, config.generate_prompts // 8), "calibration": config.generate_prompts}
    for split, count in counts.items():
        streams[split] = generated_stream(
            target, tokenizer, split=split, num_prompts=count, max_new_tokens=config.generate_tokens,
            temperature=config.generate_temperature, batch_size=config.generate_batch, seed=config.seed,
            cache=checkpoint_dir / f"generated-{split}-{_generation_key(config)}.safetensors",
        )
    heldout = streams["evaluation"][: config.eval_tokens]
    count = heldout.numel() // config.seq_len
    if count == 0:
        raise CorpusError(f"the target's held-out replies hold {heldout.numel()} tokens, fewer than one window of "
                          f"seq_len {config.seq_len}; raise generate_prompts or generate_tokens, or lower seq_len")
    heldout = heldout[: count * config.seq_len].view(count, config.seq_len)
    return heldout, TokenWindows(streams["calibration"], config.seq_len, config.batch_size, config.seed)


def distill_loaded(
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: DistillationConfig,
    *,
    source: str,
    out: Path,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> DistillReport:
    """The job on an already loaded target (see the module docstring)."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    target.eval().requires_grad_(False)
    checkpoint_dir = checkpoint_dir or default_checkpoint_dir(out)
    layers = select_layers(len(target.get_decoder().layers), config.num_layers, config.layer_selection)
    student = make_student(target, layers)
    heldout, windows = training_text(target, tokenizer, config, checkpoint_dir)
    before = compare_to_target(student, target, heldout, progress=progress)
    trained = train_student(student, target, windows, config, checkpoint_dir, resume=resume, progress=progress)
    after = compare_to_target(student, target, heldout, progress=progress)
    report = DistillReport(
        target=source, target_layers=len(target.get_decoder().layers), layers=layers, config=config,
        before=before, after=after, steps=trained.steps, final_loss=trained.final_loss, losses=trained.losses,
        resumed_from=trained.resumed_from, train_seconds=trained.seconds, checkpoint_dir=str(checkpoint_dir),
    )
    report.seconds = time.perf_counter() - start
    info = save_draft_artifact(student, tokenizer, out, report)
    report.artifact, report.artifact_bytes = str(info.path), info.total_bytes
    return report


def run_distill(
    config: DistillationConfig,
    *,
    model_name: str | None = None,
    out: Path,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> DistillReport:
    """Load the target (default: the bundled model) in float32 on `device` and run the job."""
    target, tokenizer = load_model(model_name, dtype=torch.float32, device=device)
    return distill_loaded(target, tokenizer, config, source=model_name or "bundled", out=out,
                          checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)
