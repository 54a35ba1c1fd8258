"""Training checkpoints that resume exactly: weights, optimizer and scheduler state, step and RNG state.

    <dir>/step-00000050/model.safetensors      the student's weights (tied tensors stored once)
    <dir>/step-00000050/optimizer.safetensors  every tensor of the optimizer state (AdamW moments and steps)
                                              and the RNG states (rng.torch, rng.cuda.<i>)
    <dir>/step-00000050/trainer-state.json     step, scheduler state, the optimizer's param groups and
                                              non-tensor state, and the caller's own state (losses, config)

No pickle anywhere: safetensors and JSON only, like accel's artifacts. Each checkpoint is written to a
temporary sibling and renamed into place, so a crash mid-write leaves the previous checkpoint as the latest;
older checkpoints are deleted once a newer one is in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from accel.errors import ArtifactError

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer-state.json"
_NAME = re.compile(r"step-(\d+)")


def _optimizer_tensors(optimizer: Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split optimizer.state_dict() into safetensors-storable tensors and a JSON-able rest."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def save_checkpoint(
    directory: Path, step: int, model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler,
    state: dict[str, Any],
) -> Path:
    """Write the checkpoint taken after `step` optimizer steps as <directory>/step-<step>; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=directory))
    try:
        safetensors.torch.save_model(model, str(staging / MODEL_FILE))
        tensors, optimizer_rest = _optimizer_tensors(optimizer)
        safetensors.torch.save_file({**tensors, **_rng_tensors()}, str(staging / OPTIMIZER_FILE))
        body = {"step": step, "scheduler": scheduler.state_dict(), "optimizer": optimizer_rest, "state": state}
        (staging / STATE_FILE).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for older in _checkpoints(directory):
        if older != final:
            shutil.rmtree(older, ignore_errors=True)
    return final


def _checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.fullmatch(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)))


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint in `directory`, or None."""
    found = _checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path: Path, model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG state from `path`; returns the trainer state (step, state)."""
    try:
        body = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        safetensors.torch.load_model(model, str(path / MODEL_FILE), strict=True)
        tensors = safetensors.torch.load_file(str(path / OPTIMIZER_FILE))
    except (OSError, json.JSONDecodeError, RuntimeError, safetensors.SafetensorError) as exc:
        raise ArtifactError(f"{path}: unreadable checkpoint ({exc}); delete it to resume from an older one or "
                            "start over without --resume") from exc
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        if key.startswith("optimizer."):
            index, name = key.removeprefix("optimizer.").split(".", 1)
            state.setdefault(int(index), {})[name] = tensor
    for index, values in body["optimizer"]["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON turned tuples (AdamW's betas) into lists; "params" is the one list a param group holds.
    groups = [{k: v if k == "params" or not isinstance(v, list) else tuple(v) for k, v in group.items()}
              for group in body["optimizer"]["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(body["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return {"step": body["step"], "state": body["state"]}
