"""accel's compact sparse forms, stored beside the dense-with-zeros weights (DESIGN.md section 5).

Mainstream engines no longer read 2:4 metadata, so the dense weights (exact zeros where pruned) stay in
model.safetensors, loadable everywhere, and each pruned layer's compact form goes to SPARSE_FILE, in a subdirectory
so that engines loading every top-level *.safetensors never see it. One layout per pattern, named in the manifest:

    nm       N:M, in % M == 0 (the layout the sparse kernels read)
             <m>.weight_nm_values   the stored weight at the kept positions, N per group of M in input order,
                                    [out, in*N/M]: the artifact dtype for float layers, the int8 codes for quantized
                                    ones (fp8: their raw bytes, uint8), packed like weight_packed
                                    (int32 [out, ceil(in*N/M*b/32)]) for pack-quantized layers
             <m>.weight_nm_indices  uint8 [out, ceil(in*N/M*k/8)]: each kept value's position in its group,
                                    k = ceil(log2 M) bits (2 for 2:4, 3 for 4:8), ascending inside a group; value v
                                    of a row occupies bits [v*k, (v+1)*k) of the row's bit stream, least significant
                                    bit first (numpy.packbits(..., bitorder="little"))
    blocks   block
             <m>.weight_blocks      int32 [kept blocks, 2]: (block row, block column) of each kept block of
                                    block_shape, in row-major order; every other block is all zero
    bitmask  unstructured, and any pattern without a layout of its own (N:M with in % M != 0)
             <m>.weight_bitmask     uint8 [out, ceil(in/8)] = numpy.packbits(mask, axis=1, bitorder="little"):
                                    weight [i, j] is kept when bit j % 8 (least significant first) of byte j // 8 of
                                    row i is set; padding bits are 0

Writing and loading both check every layer: the mask follows its declared pattern (through the registered sparse
format), the dense weight is zero wherever the mask drops, and the compact values equal the dense ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from accel.errors import ArtifactError
from accel.quantization.qlinear import QuantLinear
from accel.runtime.packing import pack_int32, unpack_int32
from accel.schema import SparsityConfig
from accel.schema.quantization import parse_nm

SPARSE_FILE = "accel-sparsity/compact.safetensors"
MASK_TENSOR = {"nm": "weight_nm_indices", "blocks": "weight_blocks", "bitmask": "weight_bitmask"}  # per layout

__all__ = [
    "SPARSE_FILE", "StoredLayer", "block_grid", "decode_mask", "encode_layer", "read_sparse_layers", "sparse_artifact",
]


@dataclass
class StoredLayer:
    """One pruned linear as the artifact stores it: the dense tensor written (float weight or int8 codes), its
    dequantized values (what the model computes with), and the code width when the codes are packed."""

    stored: torch.Tensor
    dense: torch.Tensor
    packed_bits: int | None = None

    @classmethod
    def of(cls, module: nn.Module, dtype: torch.dtype) -> StoredLayer:
        if isinstance(module, QuantLinear):
            args = module.weight_args
            dense = module.dequantized_weight(torch.float32)
            if args.is_fp8:
                return cls(module.weight_q.view(torch.uint8), dense)  # the raw e4m3 bytes
            packed = None if module.act_args is not None else args.num_bits  # pack-quantized
            return cls(module.weight_q, dense, packed)
        weight = module.weight.detach().to(dtype)
        return cls(weight, weight.float())


def index_bits(m: int) -> int:
    """Bits per N:M index: ceil(log2 M), at least 1."""
    return max(1, math.ceil(math.log2(m)))


def layout_for(pattern: str, in_features: int) -> str:
    nm = parse_nm(pattern)
    if nm is not None:
        return "nm" if in_features % nm[1] == 0 else "bitmask"
    return "blocks" if pattern == "block" else "bitmask"


# ------------------------------------------------------------------------------------------------- bit packing


def _pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned values [rows, k] of `bits` bits each -> uint8 [rows, ceil(k*bits/8)], least significant bit first."""
    rows, k = values.shape
    stream = (values[..., None] >> np.arange(bits)) & 1  # [rows, k, bits], bit b of each value
    return np.packbits(stream.reshape(rows, k * bits).astype(np.uint8), axis=1, bitorder="little")


def _unpack_bits(name: str, packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Inverse of _pack_bits; padding bits must be zero."""
    rows = packed.shape[0]
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != math.ceil(k * bits / 8):
        raise ArtifactError(
            f"{name}: expected uint8 [{rows}, {math.ceil(k * bits / 8)}], got {packed.dtype} {list(packed.shape)}; "
            "re-export the artifact"
        )
    stream = np.unpackbits(packed, axis=1, bitorder="little")
    if stream[:, k * bits :].any():
        raise ArtifactError(f"{name}: padding bits after the last value are set; re-export the artifact")
    return (stream[:, : k * bits].reshape(rows, k, bits).astype(np.int64) << np.arange(bits)).sum(axis=-1)


# ------------------------------------------------------------------------------------------------- encoding


def _nm_slots(mask: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """[out, groups, n] positions per group of m: the kept ones, padded (if a group keeps fewer) with dropped ones;
    ascending."""
    out_features, in_features = mask.shape
    grouped = mask.reshape(out_features, in_features // m, m)
    key = (~grouped).to(torch.int64) * m + torch.arange(m, device=mask.device)  # kept first, then by position
    return key.topk(n, dim=2, largest=False).indices.sort(dim=2).values


def encode_layer(
    name: str, pattern: str, block_shape: tuple[int, int], mask: torch.Tensor, layer: StoredLayer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The compact tensors of one layer and its manifest record (layouts in the module docstring)."""
    out_features, in_features = mask.shape
    layout = layout_for(pattern, in_features)
    record: dict[str, Any] = {"pattern": pattern, "layout": layout, "shape": [out_features, in_features]}
    mask = mask.cpu()
    if layout == "nm":
        n, m = parse_nm(pattern)  # type: ignore[misc]
        slots = _nm_slots(mask, n, m)  # [out, groups, n]
        stored = layer.stored.cpu().reshape(out_features, in_features // m, m)
        values = stored.gather(2, slots).reshape(out_features, -1)  # [out, groups * n]
        if layer.packed_bits is not None:
            values = pack_int32(values, layer.packed_bits)
        k = index_bits(m)
        tensors = {
            f"{name}.weight_nm_values": values,
            f"{name}.weight_nm_indices": torch.from_numpy(_pack_bits(slots.reshape(out_features, -1).numpy(), k)),
        }
        record.update(index_bits=k, values=_values_kind(layer), num_bits=layer.packed_bits)
        mask = torch.zeros_like(mask).reshape(out_features, -1, m).scatter_(2, slots, True).reshape(mask.shape)
    elif layout == "blocks":
        br, bc = block_shape
        grid = block_grid(mask, block_shape)
        tensors = {f"{name}.weight_blocks": grid.nonzero().to(torch.int32)}
        record["block_shape"] = [br, bc]
        mask = _mask_from_grid(grid, block_shape, mask.shape)
    else:
        bits = np.packbits(mask.numpy().astype(np.uint8), axis=1, bitorder="little")
        tensors = {f"{name}.weight_bitmask": torch.from_numpy(bits)}
    record["kept"] = int(mask.sum())
    return tensors, record


def _values_kind(layer: StoredLayer) -> str:
    if layer.packed_bits is not None:
        return "packed codes"
    return "dense" if layer.stored.is_floating_point() else "codes"


def block_grid(mask: torch.Tensor, block_shape: tuple[int, int]) -> torch.Tensor:
    """[grid rows, grid cols] bool: which blocks keep anything (edge blocks may be partial)."""
    rows, cols = mask.shape
    br, bc = block_shape
    grid_r, grid_c = math.ceil(rows / br), math.ceil(cols / bc)
    padded = torch.zeros((grid_r * br, grid_c * bc), dtype=torch.bool)
    padded[:rows, :cols] = mask
    return padded.view(grid_r, br, grid_c, bc).any(dim=3).any(dim=1)


def _mask_from_grid(grid: torch.Tensor, block_shape: tuple[int, int], shape: torch.Size) -> torch.Tensor:
    br, bc = block_shape
    grid_r, grid_c = grid.shape
    full = grid.view(grid_r, 1, grid_c, 1).expand(grid_r, br, grid_c, bc).reshape(grid_r * br, grid_c * bc)
    return full[: shape[0], : shape[1]].clone()


# ------------------------------------------------------------------------------------------------- decoding


def decode_mask(name: str, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The bool mask [out, in] (True = kept) of one layer's compact form; malformed forms are refused."""
    out_features, in_features = record["shape"]
    layout = record["layout"]
    if layout == "nm":
        n, m = parse_nm(record["pattern"]) or (0, 0)
        if not 0 < n < m or in_features % m:
            raise ArtifactError(f"{name}: layout 'nm' needs an N:M pattern dividing the input, got {record['pattern']}")
        key = f"{name}.weight_nm_indices"
        slots = _unpack_bits(key, _get(tensors, key).numpy(), record["index_bits"], in_features // m * n)
        slots = torch.from_numpy(slots).reshape(out_features, in_features // m, n)
        if bool((slots >= m).any()) or bool((slots.diff(dim=2) <= 0).any()):
            raise ArtifactError(
                f"{key}: the mask is not {record['pattern']}: indices must be < {m} and strictly ascending in every "
                f"group of {m} (each group keeps exactly {n} distinct positions); re-export the artifact"
            )
        mask = torch.zeros(out_features, in_features // m, m, dtype=torch.bool).scatter_(2, slots, True)
        return mask.reshape(out_features, in_features)
    if layout == "blocks":
        key = f"{name}.weight_blocks"
        blocks = _get(tensors, key).to(torch.int64)
        br, bc = record["block_shape"]
        grid_r, grid_c = math.ceil(out_features / br), math.ceil(in_features / bc)
        if blocks.ndim != 2 or blocks.shape[1] != 2 or bool((blocks < 0).any()) or bool(
            (blocks[:, 0] >= grid_r).any() | (blocks[:, 1] >= grid_c).any()
        ):
            raise ArtifactError(f"{key}: block coordinates outside the {grid_r}x{grid_c} grid; re-export the artifact")
        linear = blocks[:, 0] * grid_c + blocks[:, 1]
        if bool((linear.diff() <= 0).any()):
            raise ArtifactError(f"{key}: blocks must be listed once each, in row-major order; re-export the artifact")
        grid = torch.zeros(grid_r * grid_c, dtype=torch.bool)
        grid[linear] = True
        return _mask_from_grid(grid.view(grid_r, grid_c), (br, bc), torch.Size((out_features, in_features)))
    if layout == "bitmask":
        key = f"{name}.weight_bitmask"
        bits = _unpack_bits(key, _get(tensors, key).numpy(), 1, in_features)
        return torch.from_numpy(bits.astype(bool))
    raise ArtifactError(f"{name}: unknown sparse layout {layout!r}; upgrade accel or re-export the artifact")


def _get(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in tensors:
        raise ArtifactError(f"{SPARSE_FILE} has no tensor {key}; re-export the artifact")
    return tensors[key]


def layer_problems(
    where: str, pattern: str, block_shape: tuple[int, int], mask: torch.Tensor, layer: StoredLayer
) -> str | None:
    """Why `mask` cannot stand for a layer (off its pattern, or dropping non-zero weights), or None. `where` names
    the layer (or its mask tensor) in the message."""
    from accel.plugins.registry import get_registry

    problems = get_registry().sparse_format_for(pattern).violations(mask, pattern, block_shape)
    if problems:
        return f"{where}: the mask is not {pattern} as declared: {'; '.join(problems)}"
    dropped_nonzero = int((layer.dense.cpu()[~mask] != 0).sum())
    if dropped_nonzero:
        return f"{where}: {dropped_nonzero} weights the {pattern} mask drops are not zero in the dense weight"
    return None


def check_layer(
    name: str, record: dict[str, Any], mask: torch.Tensor, layer: StoredLayer, tensors: dict[str, torch.Tensor]
) -> None:
    """Refuse a layer whose mask breaks its declared pattern or disagrees with the dense weight."""
    pattern = record["pattern"]
    where = f"{name}.{MASK_TENSOR.get(record['layout'], 'mask')}"
    if list(mask.shape) != list(layer.dense.shape):
        raise ArtifactError(f"{where}: mask {list(mask.shape)} does not fit the weight {list(layer.dense.shape)}")
    problem = layer_problems(where, pattern, tuple(record.get("block_shape", (16, 16))), mask, layer)
    if problem:
        raise ArtifactError(f"{problem}; re-export the artifact")
    if int(mask.sum()) != record.get("kept"):
        raise ArtifactError(f"{where}: keeps {int(mask.sum())} weights, the manifest says {record.get('kept')}")
    if record["layout"] == "nm":
        n, m = parse_nm(pattern)  # type: ignore[misc]
        out_features, in_features = mask.shape
        count = in_features // m * n
        values = _get(tensors, f"{name}.weight_nm_values")
        if record.get("num_bits"):
            values = unpack_int32(values, record["num_bits"], (out_features, count))
        expected = layer.stored.cpu()[mask].reshape(out_features, count)
        if values.shape != expected.shape or not torch.equal(values.to(expected.dtype), expected):
            raise ArtifactError(
                f"{name}.weight_nm_values: the {pattern} values differ from the dense weight's kept values; "
                "re-export the artifact"
            )


# ------------------------------------------------------------------------------------------------- artifacts


def sparse_artifact(
    model: nn.Module, config: SparsityConfig | None, masks: dict[str, torch.Tensor], dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """SPARSE_FILE's tensors and the manifest's `sparsity` entry for `masks` (module name -> bool mask), checked
    as the loader checks them; `config` is the SparsityConfig that pruned the model (pattern, block shape)."""
    if config is None:
        raise ArtifactError("sparse masks were given without a SparsityConfig (AccelConfig.sparsity); set it")
    modules = dict(model.named_modules())
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    for name, mask in sorted(masks.items()):
        module = modules.get(name)
        if not isinstance(module, nn.Linear | QuantLinear):
            raise ArtifactError(f"sparse mask for {name!r}, which is not a linear layer of this model")
        layer = StoredLayer.of(module, dtype)
        if mask.dtype != torch.bool or list(mask.shape) != list(layer.dense.shape):
            raise ArtifactError(f"{name}: the mask must be bool {list(layer.dense.shape)}, got {mask.dtype} "
                                f"{list(mask.shape)}")
        mask = mask.cpu()
        problem = layer_problems(name, config.pattern, config.block_shape, mask, layer)
        if problem:
            raise ArtifactError(f"{problem}; prune the model again before saving")
        layer_tensors, record = encode_layer(name, config.pattern, config.block_shape, mask, layer)
        tensors.update(layer_tensors)
        layers[name] = record
    entry = {"file": SPARSE_FILE, "pattern": config.pattern, "config": config.model_dump(mode="json"),
             "layers": layers}
    return tensors, entry


def read_sparse_layers(root: str | Path, manifest: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Every pruned layer's mask from an artifact's compact form, checked against its declared pattern and the
    loaded model's dense weights. An artifact without sparsity gives {}."""
    entry = manifest.get("sparsity")
    if not entry:
        return {}
    tensors = safetensors.torch.load_file(Path(root) / entry["file"])
    dtype = getattr(torch, manifest["dtype"])
    modules = dict(model.named_modules())
    masks: dict[str, torch.Tensor] = {}
    for name, record in entry["layers"].items():
        if name not in modules:
            raise ArtifactError(f"{SPARSE_FILE} describes {name!r}, which is not a module of the model")
        layer = StoredLayer.of(modules[name], dtype)
        mask = decode_mask(name, record, tensors)
        check_layer(name, record, mask, layer, tensors)
        masks[name] = mask
    return masks
