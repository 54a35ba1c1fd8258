"""Deployable artifacts: a Hugging Face model directory in compressed-tensors format plus accel's manifest.

    config.json            the model config with quantization_config (quant_method "compressed-tensors")
    model.safetensors      each quantized Linear in its format (below) + every other tensor in the artifact dtype
    tokenizer files, generation_config.json
    accel-manifest.json    schema version, AccelConfig, producing versions, source, per-layer records and choices,
                           kernel meta, and the sha256 + size of every other file

Per quantized Linear <m> (compressed-tensors' conventions: q = clamp(round(w/s) + zp), w^ = (q - zp) * s):
    pack-quantized   int weights, 16-bit activations: <m>.weight_packed int32 [out, ceil(in*b/32)] (packing.py),
                     <m>.weight_shape int64 [2], asymmetric: <m>.weight_zero_point packed along dim 0 (int32;
                     per-tensor: int8 [1])
    int-quantized    int weights, quantized activations: <m>.weight int8 [out, in], <m>.weight_zero_point int8
    float-quantized  fp8 weights, quantized activations (naive-quantized without): <m>.weight float8_e4m3fn
    all              <m>.weight_scale [1] (tensor) / [out, 1] (channel) / [out, in/g] (group); <m>.weight_g_idx
                     int32 [in] (act-order); <m>.input_scale [1] (static activations); <m>.bias
    KV cache         <attn>.k_scale, <attn>.v_scale [1], described by kv_cache_scheme

A pruned model keeps its dense-with-zeros weights above, loadable everywhere, and adds accel's compact sparse form
(bitmask, N:M values + indices, block list) in accel-sparsity/compact.safetensors, described by the manifest's
`sparsity` entry (accel.sparsity.storage has the layouts); loading refuses a mask that breaks its declared pattern.

compressed-tensors needs whole groups (in % group_size == 0). A group size g that does not divide every input
size (g128 on SmolLM2's 576-wide inputs) is stored with group size g_s = gcd(g, all input sizes of the scheme)
and each scale and zero point repeated g / g_s times: the same dequantized weight, readable by every
compressed-tensors reader. The manifest keeps g and the loader folds the repeats back, so the QuantLinear it
builds is the one that was saved.

Writes are atomic: everything goes to a temporary sibling directory that is renamed into place. Loading
verifies the manifest (sha256 and size of every file) and refuses pickle files.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from accel.errors import ArtifactError
from accel.quantization.activation_quant import ActivationQuantArgs
from accel.quantization.qlinear import QuantLinear
from accel.quantization.weight_quant import QuantizedWeight, WeightQuantArgs
from accel.runtime.packing import pack_int32, unpack_int32
from accel.schema import AccelConfig
from accel.sparsity.storage import SPARSE_FILE, read_sparse_layers, sparse_artifact

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA_VERSION",
    "WEIGHTS_NAME",
    "ArtifactInfo",
    "dense_tensors",
    "layer_format",
    "load_artifact",
    "producing_versions",
    "save_artifact",
    "verify_artifact",
    "write_artifact",
]

MANIFEST_NAME = "accel-manifest.json"
MANIFEST_SCHEMA_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
FORMAT = "compressed-tensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".npz", ".h5", ".msgpack", *PICKLE_SUFFIXES)
KV_SCALE_NAMES = ("k_scale", "v_scale")


@dataclass(frozen=True)
class ArtifactInfo:
    """What was written: the directory, its total size, and each file's size (manifest included)."""

    path: Path
    total_bytes: int
    files: dict[str, int]


# ---------------------------------------------------------------------------------------------- writing


def layer_format(weights: WeightQuantArgs, activations: ActivationQuantArgs | None) -> str:
    """compressed-tensors' format for a layer, in its own priority order (infer_module_format)."""
    if weights.is_fp8:
        return "naive-quantized" if activations is None else "float-quantized"
    return "pack-quantized" if activations is None else "int-quantized"


def _quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, QuantLinear)}


def _act_order_g_idx(name: str, module: QuantLinear) -> torch.Tensor | None:
    """The layer's g_idx when it is a real act-order permutation; None for no g_idx or the identity order."""
    args, g_idx = module.weight_args, module.weight_g_idx
    if g_idx is None or args.strategy != "group":
        return None
    in_features, group = module.in_features, args.group_size
    g_idx = g_idx.long()
    if torch.equal(g_idx, torch.arange(in_features, device=g_idx.device) // group):
        return None
    groups = args.num_groups(in_features)
    expected = torch.full((groups,), group, device=g_idx.device)
    expected[-1] = in_features - (groups - 1) * group
    if not torch.equal(torch.bincount(g_idx, minlength=groups), expected):
        raise ArtifactError(
            f"{name}: weight_g_idx does not give every group {group} columns (the last {int(expected[-1])}); "
            "compressed-tensors' act-order layout needs GPTQ's balanced groups"
        )
    return g_idx


def _storage_group_sizes(layers: dict[str, tuple[QuantLinear, torch.Tensor | None]]) -> dict[str, int | None]:
    """g_s per layer: gcd(g, in) over all layers sharing a scheme, the largest group size that divides each of
    their input sizes and every boundary of g. One g_s per scheme keeps one config group (targets "Linear"),
    which every reader handles; transformers' dequantize=True path reads a single scheme for all dense layers."""
    def key(module: QuantLinear, g_idx: torch.Tensor | None) -> str:
        act = None if module.act_args is None else dataclasses.asdict(module.act_args)
        return json.dumps([dataclasses.asdict(module.weight_args), act, g_idx is not None])

    shared: dict[str, int] = {}
    for module, g_idx in layers.values():
        if module.weight_args.strategy == "group":
            k = key(module, g_idx)
            shared[k] = math.gcd(shared.get(k, module.weight_args.group_size), module.in_features)
    return {name: shared.get(key(module, g_idx)) for name, (module, g_idx) in layers.items()}


def _quantized_tensors(
    name: str, module: QuantLinear, fmt: str, storage_group: int | None, g_idx: torch.Tensor | None,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """The safetensors entries of one quantized Linear (layout in the module docstring)."""
    args = module.weight_args
    scale, zero_point = module.weight_scale.to(dtype), module.weight_zero_point
    if args.symmetric:
        if zero_point is not None and bool(zero_point.any()):
            raise ArtifactError(f"{name}: symmetric weights with a non-zero zero point; re-quantize the layer")
        zero_point = None
    elif zero_point is None:
        raise ArtifactError(f"{name}: asymmetric weights without a zero point; re-quantize the layer")
    if storage_group is not None:
        # Each logical group of g columns becomes g / g_s stored groups with the same scale and zero point.
        repeats, stored = args.group_size // storage_group, module.in_features // storage_group
        scale = scale.repeat_interleave(repeats, dim=1)[:, :stored]
        if zero_point is not None:
            zero_point = zero_point.repeat_interleave(repeats, dim=1)[:, :stored]
    if args.strategy == "tensor":
        scale = scale.reshape(1)
        zero_point = None if zero_point is None else zero_point.reshape(1)
    tensors = {f"{name}.weight_scale": scale}
    if fmt == "pack-quantized":
        tensors[f"{name}.weight_packed"] = pack_int32(module.weight_q, args.num_bits)
        tensors[f"{name}.weight_shape"] = torch.tensor([module.out_features, module.in_features])
        if zero_point is not None and args.strategy != "tensor":
            zero_point = pack_int32(zero_point.to(torch.int8), args.num_bits, packed_dim=0)
    else:
        tensors[f"{name}.weight"] = module.weight_q
    if zero_point is not None:
        tensors[f"{name}.weight_zero_point"] = zero_point
    if g_idx is not None:
        # Stored groups of g_s columns in act order: sort columns by group (stably), cut into runs of g_s.
        order = torch.argsort(g_idx, stable=True)
        stored_idx = torch.empty_like(g_idx)
        stored_idx[order] = torch.arange(module.in_features, device=g_idx.device) // storage_group
        tensors[f"{name}.weight_g_idx"] = stored_idx.to(torch.int32)
    if module.bias is not None:
        tensors[f"{name}.bias"] = module.bias.to(dtype)
    act = module.act_args
    if act is not None and not act.dynamic:
        if module.input_scale is None:
            raise ArtifactError(f"{name}: static activation quantization without an input_scale; calibrate it")
        tensors[f"{name}.input_scale"] = module.input_scale.reshape(1).to(dtype)
    return tensors


def _weights_json(args: WeightQuantArgs, storage_group: int | None, act_order: bool) -> dict[str, Any]:
    """compressed-tensors QuantizationArgs for the stored weights."""
    data: dict[str, Any] = {
        "num_bits": args.num_bits, "type": args.type, "symmetric": args.symmetric, "strategy": args.strategy,
        "group_size": storage_group, "dynamic": False,
    }
    if act_order:
        data["actorder"] = "group"
    return data


def _activations_json(args: ActivationQuantArgs | None) -> dict[str, Any] | None:
    if args is None:
        return None
    return {
        "num_bits": args.num_bits, "type": args.type, "symmetric": True, "strategy": args.strategy,
        "group_size": None, "dynamic": args.dynamic,
    }


def _kv_type(config: AccelConfig) -> str:
    """KV scales are 8-bit per-tensor in compressed-tensors' kv_cache_scheme; the profile must say so."""
    profile = config.quantization
    bits = min(profile.kv_bits_prefill, profile.kv_bits_decode)
    if bits != 8:
        raise ArtifactError(
            f"kv_scales were given but the profile's KV cache is {bits}-bit; kv_cache_scheme carries 8-bit "
            "(int8 or fp8) per-tensor scales: set kv_bits_prefill/kv_bits_decode to 8"
        )
    return profile.kv_type


def _kv_from_buffers(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """k_scale/v_scale buffers that load_artifact attached to attention modules, so a re-save keeps them."""
    return {
        name: (module.k_scale, module.v_scale)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "k_scale", None), torch.Tensor)
        and isinstance(getattr(module, "v_scale", None), torch.Tensor)
    }


def producing_versions() -> dict[str, str]:
    """Versions of what wrote an artifact (compressed-tensors only when installed)."""
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
    }
    for dist in ("accel", "compressed-tensors"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def dense_tensors(model: nn.Module, skip_modules: set[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every state-dict tensor outside `skip_modules`, floats cast to `dtype`. Tied tensors (lm_head sharing the
    embedding) are written once under their first name, as Hugging Face does; loading ties them again."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for key, tensor in model.state_dict().items():
        if key.rpartition(".")[0] in skip_modules:
            continue
        identity = (tensor.data_ptr(), tuple(tensor.shape))
        if identity in seen:
            continue
        seen.add(identity)
        tensors[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return tensors


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> dict[str, Path]:
    return {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*")) if path.is_file()}


def _publish(out_dir: Path, overwrite: bool, fill: Callable[[Path], None]) -> None:
    """Run `fill` on a temporary sibling directory, then rename it to `out_dir`. An existing artifact is moved
    aside first and restored if the swap fails, so `out_dir` is always absent, the old artifact or the new one."""
    if out_dir.exists():
        if not overwrite:
            raise ArtifactError(f"{out_dir} already exists; pass overwrite=True to replace it, or pick a new directory")
        if not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file()):
            raise ArtifactError(f"{out_dir} exists and is not an accel artifact; refusing to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    trash: Path | None = None
    try:
        fill(staging)
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, trash / out_dir.name)
            try:
                os.replace(staging, out_dir)
            except BaseException:
                os.replace(trash / out_dir.name, out_dir)
                raise
        else:
            os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def write_artifact(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike[str],
    *,
    tensors: dict[str, torch.Tensor],
    quantization_config: dict[str, Any] | None,
    manifest: dict[str, Any],
    dtype: torch.dtype,
    overwrite: bool,
    untie_embeddings: bool = False,
    extra_files: dict[str, dict[str, torch.Tensor]] | None = None,
) -> ArtifactInfo:
    """The shared writer (compressed-tensors artifacts and the exporters): config.json, model.safetensors,
    tokenizer and generation config, `extra_files` (relative path -> tensors, more safetensors files such as the
    compact sparse form), then the manifest with every file's sha256 and size; atomically."""
    for key in ("layer_choices", "kernel_meta"):
        try:
            json.dumps(manifest.get(key))
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{key} must be JSON-serialisable for the manifest: {exc}") from exc
    out_dir = Path(out_dir).expanduser().absolute()
    config = copy.deepcopy(model.config)
    config.dtype = dtype
    if quantization_config is not None:
        config.quantization_config = quantization_config
    elif hasattr(config, "quantization_config"):
        del config.quantization_config
    if untie_embeddings:
        config.tie_word_embeddings = False
    files: dict[str, int] = {}

    def fill(staging: Path) -> None:
        config.save_pretrained(staging)
        cpu = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
        safetensors.torch.save_file(cpu, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        for relative, extra in (extra_files or {}).items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            extra = {name: tensor.detach().contiguous().cpu() for name, tensor in extra.items()}
            safetensors.torch.save_file(extra, str(staging / relative), metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(staging)
        listed = {name: {"sha256": _sha256(path), "bytes": path.stat().st_size}
                  for name, path in _files(staging).items()}
        body = {
            "schema_version": MANIFEST_SCHEMA_VERSION, **manifest, "dtype": str(dtype).removeprefix("torch."),
            "versions": producing_versions(), "files": listed,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        files.update({name: path.stat().st_size for name, path in _files(staging).items()})

    _publish(out_dir, overwrite, fill)
    return ArtifactInfo(path=out_dir, total_bytes=sum(files.values()), files=files)


def save_artifact(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike[str],
    config: AccelConfig,
    *,
    source: str,
    kv_scales: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    layer_choices: dict[str, dict] | None = None,
    kernel_meta: dict | None = None,
    dtype: torch.dtype = torch.float16,
    overwrite: bool = False,
    sparse_masks: dict[str, torch.Tensor] | None = None,
) -> ArtifactInfo:
    """Write `model` (QuantLinear layers and all) as a compressed-tensors artifact in `out_dir`.

    `kv_scales` maps attention module names (model.layers.0.self_attn) to (k_scale, v_scale); without it, the
    scales load_artifact attached to a loaded model are kept. Unquantized tensors are written in `dtype`, and so
    are weight, input and KV scales (compressed-tensors keeps scales in the model dtype). `sparse_masks` (module
    name -> bool mask, True = kept, as prune_model returns them) adds the compact sparse form of `config.sparsity`'s
    pattern; each mask must follow the pattern and drop only zeros.
    """
    quantized = _quant_linears(model)
    records: dict[str, dict[str, Any]] = {}
    groups: dict[str, dict[str, Any]] = {}
    tensors = dense_tensors(model, set(quantized), dtype)
    layers = {name: (module, _act_order_g_idx(name, module)) for name, module in quantized.items()}
    storage_groups = _storage_group_sizes(layers)
    for name, (module, g_idx) in layers.items():
        fmt = layer_format(module.weight_args, module.act_args)
        storage_group = storage_groups[name]
        tensors.update(_quantized_tensors(name, module, fmt, storage_group, g_idx, dtype))
        scheme = {
            "weights": _weights_json(module.weight_args, storage_group, g_idx is not None),
            "input_activations": _activations_json(module.act_args),
            "output_activations": None,
            "format": fmt,
        }
        groups.setdefault(json.dumps(scheme, sort_keys=True), {"targets": [], **scheme})["targets"].append(name)
        records[name] = {
            "format": fmt,
            "shape": [module.out_features, module.in_features],
            "weights": dataclasses.asdict(module.weight_args),
            "storage_group_size": storage_group,
            "act_order": g_idx is not None,
            "input_activations": None if module.act_args is None else dataclasses.asdict(module.act_args),
        }
    kv = kv_scales if kv_scales is not None else _kv_from_buffers(model)
    kv_record = None
    if kv:
        kv_type = _kv_type(config)
        modules = dict(model.named_modules())
        for attn, pair in kv.items():
            if attn not in modules:
                raise ArtifactError(f"kv_scales names {attn!r}, which is not a module of this model")
            for scale_name, scale in zip(KV_SCALE_NAMES, pair, strict=True):
                tensors[f"{attn}.{scale_name}"] = scale.reshape(1).to(dtype)
        kv_record = {"num_bits": 8, "type": kv_type, "modules": sorted(kv)}
    quantization_config = None
    if quantized or kv_record:
        quantization_config = _quantization_config(model, list(groups.values()), kv_record)
    output = model.get_output_embeddings()
    manifest = {
        "format": FORMAT,
        "source": source,
        "accel_config": config.model_dump(mode="json"),
        "layers": records,
        "kv_cache": kv_record,
        "layer_choices": layer_choices or {},
        "kernel_meta": kernel_meta or {},
    }
    extra_files = None
    if sparse_masks:
        sparse, manifest["sparsity"] = sparse_artifact(model, config.sparsity, sparse_masks, dtype)
        extra_files = {SPARSE_FILE: sparse}
    return write_artifact(
        model, tokenizer, out_dir, tensors=tensors, quantization_config=quantization_config, manifest=manifest,
        dtype=dtype, overwrite=overwrite, untie_embeddings=isinstance(output, QuantLinear), extra_files=extra_files,
    )


def _quantization_config(
    model: nn.Module, groups: list[dict[str, Any]], kv_record: dict[str, Any] | None
) -> dict[str, Any]:
    """config.json's quantization_config, as compressed-tensors' ModelCompressor.update_config writes it.

    One scheme targets "Linear" and ignores the unquantized Linears (lm_head), as llm-compressor writes it;
    several schemes (mixed precision) name their layers, as compressed-tensors matches names exactly.
    """
    if len(groups) == 1:
        groups[0]["targets"] = ["Linear"]
    formats = {group["format"] for group in groups}
    config: dict[str, Any] = {
        "config_groups": {f"group_{index}": group for index, group in enumerate(groups)},
        "format": formats.pop() if len(formats) == 1 else ("mixed-precision" if formats else "dense"),
        "global_compression_ratio": None,
        "ignore": [name for name, module in model.named_modules() if isinstance(module, nn.Linear)],
        "kv_cache_scheme": None if kv_record is None else {
            "num_bits": 8, "type": kv_record["type"], "symmetric": True, "strategy": "tensor", "group_size": None,
            "dynamic": False,
        },
        "quant_method": FORMAT,
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
    }
    version = producing_versions().get("compressed-tensors")
    if version is not None:
        config["version"] = version
    return config


# ---------------------------------------------------------------------------------------------- reading


def verify_artifact(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check an artifact directory against its manifest and return the manifest.

    Refuses pickle files, a missing or newer manifest, a listed file that is missing, truncated or changed
    (size or sha256), and weight files the manifest does not list.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such artifact directory")
    present = _files(root)
    pickles = [name for name in present if name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ArtifactError(
            f"{root}: refusing pickle files {pickles}: accel artifacts are safetensors only (unpickling can run "
            "arbitrary code); delete them or re-export the artifact"
        )
    if MANIFEST_NAME not in present:
        raise ArtifactError(f"{root}: no {MANIFEST_NAME}, so this is not a complete accel artifact; re-export it")
    try:
        manifest = json.loads(present[MANIFEST_NAME].read_text(encoding="utf-8"))
        version, listed = manifest["schema_version"], manifest["files"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{root}: {MANIFEST_NAME} is unreadable ({exc}); re-export the artifact") from exc
    if version > MANIFEST_SCHEMA_VERSION:
        raise ArtifactError(
            f"{root}: manifest schema {version} is newer than this accel reads ({MANIFEST_SCHEMA_VERSION}); "
            "upgrade accel"
        )
    for name, entry in listed.items():
        if Path(name).is_absolute() or ".." in Path(name).parts or name not in present:
            raise ArtifactError(f"{root}: {name}, listed in the manifest, is missing; re-export the artifact")
        size = present[name].stat().st_size
        if size != entry["bytes"]:
            raise ArtifactError(
                f"{root}: {name} is {size} bytes but the manifest says {entry['bytes']} (truncated or modified); "
                "re-export the artifact"
            )
        if _sha256(present[name]) != entry["sha256"]:
            raise ArtifactError(
                f"{root}: {name} does not match its sha256 in the manifest (corrupted or modified); "
                "re-export the artifact"
            )
    unlisted = [name for name in present if name not in listed and name.endswith(WEIGHT_SUFFIXES)]
    if unlisted:
        raise ArtifactError(f"{root}: weight files not in the manifest: {unlisted}; remove them or re-export")
    return manifest


def _take(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    try:
        return tensors.pop(key)
    except KeyError:
        raise ArtifactError(f"{WEIGHTS_NAME} has no tensor {key}; re-export the artifact") from None


def _fold_groups(name: str, stored: torch.Tensor, repeats: int, in_features: int, storage_group: int) -> torch.Tensor:
    """Inverse of the g_s expansion: one column per logical group, checking the repeats agree."""
    folded = stored[:, ::repeats]
    if not torch.equal(folded.repeat_interleave(repeats, dim=1)[:, : in_features // storage_group], stored):
        raise ArtifactError(f"{name}: stored groups disagree with the manifest's group size; re-export the artifact")
    return folded


def _load_quant_linear(name: str, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> QuantLinear:
    """Rebuild the saved QuantLinear from its tensors: exactly the codes, scales and zero points written."""
    args = WeightQuantArgs(**record["weights"])
    acts = record["input_activations"]
    act_args = None if acts is None else ActivationQuantArgs(**acts)
    out_features, in_features = record["shape"]
    if record["format"] == "pack-quantized":
        shape = _take(tensors, f"{name}.weight_shape").tolist()
        if shape != [out_features, in_features]:
            raise ArtifactError(f"{name}: weight_shape {shape} differs from the manifest's {record['shape']}")
        q = unpack_int32(_take(tensors, f"{name}.weight_packed"), args.num_bits, (out_features, in_features))
    else:
        q = _take(tensors, f"{name}.weight")
    scale = _take(tensors, f"{name}.weight_scale")
    zero_point = None if args.symmetric else _take(tensors, f"{name}.weight_zero_point")
    if zero_point is not None and record["format"] == "pack-quantized" and args.strategy != "tensor":
        zero_point = unpack_int32(zero_point, args.num_bits, (out_features, scale.shape[1]), packed_dim=0)
    g_idx = _take(tensors, f"{name}.weight_g_idx") if record["act_order"] else None
    storage_group = record["storage_group_size"]
    if args.strategy == "group":
        repeats = args.group_size // storage_group
        scale = _fold_groups(name, scale, repeats, in_features, storage_group)
        if zero_point is not None:
            zero_point = _fold_groups(name, zero_point, repeats, in_features, storage_group)
        if g_idx is not None:
            g_idx = g_idx // repeats
    if args.strategy == "tensor":
        scale = scale.reshape(1, 1)
        zero_point = None if zero_point is None else zero_point.reshape(1, 1)
    bias = tensors.pop(f"{name}.bias", None)
    input_scale = None if act_args is None or act_args.dynamic else _take(tensors, f"{name}.input_scale")
    return QuantLinear(QuantizedWeight(q, scale, zero_point, args, g_idx), bias, act_args, input_scale)


def load_artifact(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Verify and load an accel compressed-tensors artifact: (model in eval mode on `device`, tokenizer, manifest).

    The model is built from config.json in the artifact's dtype; each quantized layer becomes a QuantLinear
    holding the stored codes; KV scales become k_scale / v_scale buffers on their attention modules. A pruned
    model's compact sparse form is checked against its declared pattern and the dense weights
    (accel.sparsity.storage.read_sparse_layers returns the masks).
    """
    root = Path(path).expanduser()
    manifest = verify_artifact(root)
    if manifest.get("format") != FORMAT:
        raise ArtifactError(
            f"{root} is a {manifest.get('format')!r} export for other engines; load_artifact reads accel's "
            f"{FORMAT} artifacts"
        )
    dtype = getattr(torch, manifest["dtype"])
    config = AutoConfig.from_pretrained(root)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = safetensors.torch.load_file(root / WEIGHTS_NAME, device=str(device))
    for name, record in manifest["layers"].items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, _load_quant_linear(name, record, tensors))
    kv = manifest.get("kv_cache") or {"modules": []}
    for attn in kv["modules"]:
        for scale_name in KV_SCALE_NAMES:
            model.get_submodule(attn).register_buffer(scale_name, _take(tensors, f"{attn}.{scale_name}"))
    restored = set(manifest["layers"]) | set(kv["modules"])
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    state = model.state_dict()
    loaded = {state[key].data_ptr() for key in tensors if key in state}  # a tied tensor shares one of these
    missing = [
        key for key in missing
        if key.rpartition(".")[0] not in restored and state[key].data_ptr() not in loaded
    ]
    if missing or unexpected:
        raise ArtifactError(
            f"{root}: {WEIGHTS_NAME} does not fit config.json (missing {missing[:5]}, unexpected {unexpected[:5]}); "
            "re-export the artifact"
        )
    # Refuses a mask off its declared pattern; each pruned module keeps its mask and pattern (and a block pattern its
    # block shape), so the runtime can choose a sparse kernel for it (quant_backend.runtime_linear).
    for name, mask in read_sparse_layers(root, manifest, model).items():
        module = model.get_submodule(name)
        record = manifest["sparsity"]["layers"][name]
        module.accel_sparse_mask = mask
        module.accel_sparse_pattern = record["pattern"]
        if "block_shape" in record:
            module.accel_sparse_block_shape = tuple(record["block_shape"])
    tokenizer = AutoTokenizer.from_pretrained(root)
    return model.eval(), tokenizer, manifest
