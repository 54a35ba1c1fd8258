"""Medusa draft heads (Cai et al., 2024): extra next-next-token heads on the target's own last hidden state.

With h_t the target's final-normed hidden state at position t (what its lm_head reads to predict token t + 1),
head i (i = 0 .. K-1) predicts token t + 2 + i:

    logits_i(h_t) = lm_head(h_t + SiLU(W_i h_t + b_i))          (a residual block per head, the target's lm_head)

W_i starts at zero, so an untrained head repeats the target's own next-token guess. The heads run inside the
target's verification step (Generator(draft_heads=...)): a round is one target step of width k + 1 and
nothing else, since the next round's k drafts are the heads' argmax at the row of the last accepted token.
Drafts are deterministic, so verification uses the one-hot rule (lossless at any temperature).

Stored as a directory: `medusa_heads.safetensors` (weight [K, H, H], bias [K, H]) and `medusa_config.json`
(num_heads, hidden_size, the training report), written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from accel.errors import ArtifactError
from accel.runtime.generate import Generator
from accel.speculative.draft import Draft, DraftStrategy

__all__ = ["HEADS_CONFIG", "HEADS_FILE", "MedusaDraft", "MedusaHeads", "load_heads", "save_heads"]

HEADS_FILE = "medusa_heads.safetensors"
HEADS_CONFIG = "medusa_config.json"


class MedusaHeads(nn.Module):
    """K residual heads over hidden states h [..., H]; `forward` gives each head's logits [..., K, V] through
    the given lm_head, `draft` their argmax [..., K]."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if num_heads < 1 or hidden_size < 1:
            raise ValueError(f"need num_heads >= 1 and hidden_size >= 1, got {num_heads} and {hidden_size}")
        self.weight = nn.Parameter(torch.zeros(num_heads, hidden_size, hidden_size))  # [K, H_out, H_in]
        self.bias = nn.Parameter(torch.zeros(num_heads, hidden_size))

    @property
    def num_heads(self) -> int:
        return self.weight.shape[0]

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """h + SiLU(W_i h + b_i) for every head i: [..., H] -> [..., K, H]."""
        projected = torch.einsum("...h,koh->...ko", hidden, self.weight.to(hidden.dtype)) + self.bias.to(hidden.dtype)
        return hidden.unsqueeze(-2) + nn.functional.silu(projected)

    def forward(self, hidden: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        return lm_head(self.features(hidden))  # [..., K, V]

    def draft(self, hidden: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        return self.forward(hidden, lm_head).argmax(dim=-1)  # [..., K]


def save_heads(heads: MedusaHeads, out: Path, report: dict[str, Any]) -> Path:
    """Write the heads and their config (with `report`) to directory `out`, replacing it atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tensors = {"weight": heads.weight.detach().float().cpu().contiguous(),
                   "bias": heads.bias.detach().float().cpu().contiguous()}
        safetensors.torch.save_file(tensors, staging / HEADS_FILE)
        config = {"num_heads": heads.num_heads, "hidden_size": heads.weight.shape[1], "report": report}
        (staging / HEADS_CONFIG).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def load_heads(path: str | Path, *, hidden_size: int | None = None) -> tuple[MedusaHeads, dict[str, Any]]:
    """The heads stored in directory `path` and their config; `hidden_size` checks them against a target."""
    path = Path(path)
    try:
        config = json.loads((path / HEADS_CONFIG).read_text(encoding="utf-8"))
        tensors = safetensors.torch.load_file(path / HEADS_FILE)
        heads = MedusaHeads(int(config["hidden_size"]), int(config["num_heads"]))
        heads.load_state_dict(tensors)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ArtifactError(
            f"{path}: not readable Medusa heads ({exc}); it needs {HEADS_FILE} and {HEADS_CONFIG} as "
            "`sage infer distill --medusa-heads K` writes them"
        ) from exc
    if hidden_size is not None and hidden_size != heads.weight.shape[1]:
        raise ArtifactError(
            f"{path}: the heads read hidden states of size {heads.weight.shape[1]}, the target's are {hidden_size}; "
            "train heads for this target"
        )
    return heads.eval(), config


class MedusaDraft(DraftStrategy):
    """Drafts from the target Generator's own Medusa heads (built with draft_heads=...): the k tokens the heads
    predicted at the row of the target's last step that produced the request's last token. Costs no model step.

    The request's tokens must be what the Generator saw: its cache holds all but the last one, and that last
    token came out of the last step (or prefill) at row len(tokens) - 2 - (the step's start length)."""

    def __init__(self, generator: Generator) -> None:
        if generator.draft_heads is None:
            raise ValueError("MedusaDraft needs a Generator built with draft_heads (the target's Medusa heads)")
        self.generator = generator

    @torch.no_grad()
    def propose(self, tokens: torch.Tensor, k: int) -> Draft:
        generator = self.generator
        heads = generator.draft_heads
        assert heads is not None
        k = min(k, heads.num_heads)
        if k == 0:
            return Draft(tokens.new_empty(0))
        start, drafted = generator.last_head_tokens  # start length of the last step, head tokens [1, T, K]
        row = len(tokens) - 2 - start
        if generator.lengths != [len(tokens) - 1] or not 0 <= row < drafted.shape[1]:
            raise ValueError(
                f"MedusaDraft is out of step with its Generator: {len(tokens)} tokens, the cache holds "
                f"{generator.lengths}, the last step started at {start} with width {drafted.shape[1]}"
            )
        return Draft(tokens=drafted[0, row, :k].clone())  # a copy: the next step overwrites the graph's output
