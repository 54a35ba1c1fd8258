"""The student: a standalone copy of the target that keeps some of its decoder layers.

Unlike `layer_skip_model` (a weight-sharing view of the target), the student owns copies of the kept layers,
renumbered 0 .. n-1 so its KV cache has n entries, plus copies of the embeddings, final norm and lm_head. It
is the target's class with num_hidden_layers = n, so it saves, loads and drafts like any causal LM of that
family, with the target's tokenizer.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from accel.tools.distillation.config import LayerSelection


def select_layers(num_layers: int, keep: int, selection: LayerSelection) -> list[int]:
    """Indices of the `keep` target layers the student starts from (see DistillationConfig)."""
    if not 1 <= keep <= num_layers:
        raise ValueError(f"cannot keep {keep} of the target's {num_layers} layers; pick 1..{num_layers}")
    if selection == "first":
        return list(range(keep))
    if selection == "strided":
        if keep == 1:
            return [0]
        # Spacing (L-1)/(keep-1) >= 1, so the rounded positions are distinct and include 0 and L-1.
        return [round(i * (num_layers - 1) / (keep - 1)) for i in range(keep)]
    raise ValueError(f"unknown layer selection {selection!r}; use 'first' or 'strided'")


def _layers_prefix(model: PreTrainedModel) -> str:
    """The state-dict prefix of the decoder's layer list ("model.layers" for Llama)."""
    layers = model.get_decoder().layers
    return next(name for name, module in model.named_modules() if module is layers)


def make_student(target: PreTrainedModel, layers: Sequence[int]) -> PreTrainedModel:
    """A new model of the target's class holding copies of target layers `layers` (in that order) as its layers
    0 .. n-1, and copies of every other weight. The target is not changed and shares nothing with the student."""
    num_layers = len(target.get_decoder().layers)
    if not layers or sorted(set(layers)) != list(layers) or not set(layers) <= set(range(num_layers)):
        raise ValueError(f"layers must be increasing indices in 0..{num_layers - 1}, got {list(layers)}")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = len(layers)
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (sliding / full)
        config.layer_types = [config.layer_types[i] for i in layers]
    parameter = next(target.parameters())
    with torch.device(parameter.device):
        student = type(target)(config).to(parameter.dtype)
    prefix = _layers_prefix(target) + "."
    position = {index: new for new, index in enumerate(layers)}
    state = {}
    for key, tensor in target.state_dict().items():
        if not key.startswith(prefix):
            state[key] = tensor
            continue
        index, rest = key.removeprefix(prefix).split(".", 1)
        if int(index) in position:
            state[f"{prefix}{position[int(index)]}.{rest}"] = tensor
    student.load_state_dict(state, strict=True)  # copies into the student's own parameters
    return student.eval()
