"""Programmatic dependent launch (pdl.py) without a GPU: when pdl_mode turns it on, and what the decode path's
kernels compile to for sm_90 with PDL on and off.

The compile checks build each kernel through triton.compile for a Hopper target (Triton lowers to PTX on any
machine) and read the PTX: with PDL=2, griddepcontrol.wait must come before the kernel's first global memory
instruction (a load issued before the wait could read what the kernel ahead has not written yet) and
griddepcontrol.launch_dependents must be there; with PDL=0 neither appears. Skipped without Triton.
"""

from __future__ import annotations

import re

import pytest
import torch
from accel_cuda.kernels import triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="needs Triton")

# The first global memory access of a kernel, in any form Triton emits on sm_90 (TMA: cp.async.bulk.tensor).
_GLOBAL_MEMORY = re.compile(r"\b(ld\.global|st\.global|atom\.global|red\.global|cp\.async)")


@pytest.fixture
def pdl(monkeypatch):
    """accel_cuda.kernels.pdl with the environment reset: no ACCEL_PDL, not under the interpreter."""
    from accel_cuda.kernels import pdl

    monkeypatch.delenv("ACCEL_PDL", raising=False)
    monkeypatch.setattr(pdl, "INTERPRET", False)
    return pdl


def _fake_card(monkeypatch, pdl, capability: tuple[int, int]) -> None:
    from accel_cuda.kernels.device import DeviceInfo

    monkeypatch.setattr(pdl, "device_info", lambda device: DeviceInfo(name="fake", capability=capability, sms=132))


@needs_triton
def test_pdl_mode_off_on_cpu(pdl):
    assert pdl.pdl_mode(torch.device("cpu")) == 0


@needs_triton
def test_pdl_mode_follows_capability(monkeypatch, pdl):
    cuda = torch.device("cuda", 0)
    _fake_card(monkeypatch, pdl, (9, 0))
    assert pdl.pdl_mode(cuda) == pdl.RELEASE_AT_END == 2
    _fake_card(monkeypatch, pdl, (10, 0))
    assert pdl.pdl_mode(cuda) == 2
    _fake_card(monkeypatch, pdl, (8, 0))
    assert pdl.pdl_mode(cuda) == 0


@needs_triton
def test_pdl_mode_env_off(monkeypatch, pdl):
    _fake_card(monkeypatch, pdl, (9, 0))
    monkeypatch.setenv("ACCEL_PDL", "0")
    assert pdl.pdl_mode(torch.device("cuda", 0)) == 0
    assert pdl.pdl_mode(torch.device("cpu")) == 0


@needs_triton
def test_pdl_mode_off_under_interpreter(monkeypatch, pdl):
    _fake_card(monkeypatch, pdl, (9, 0))
    monkeypatch.setattr(pdl, "INTERPRET", True)
    assert pdl.pdl_mode(torch.device("cuda", 0)) == 0


def build_signature(fn, types: dict[str, str], constexprs: dict[str, object]):
    """triton.compile's signature, constexprs and attrs for a @triton.jit `fn`: each argument's type from `types`
    ("*bf16", "fp32", "tensordesc<i32[16, 128]>", ...; "i32" when not named), "constexpr" for those in
    `constexprs`; pointers marked 16-byte aligned (as the launches' tensors are)."""
    unknown = (set(types) | set(constexprs)) - set(fn.arg_names)
    assert not unknown, f"{fn.__name__} has no arguments {unknown}"
    signature, values, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            values[(i,)] = constexprs[name]
        else:
            signature[name] = types.get(name, "i32")
            if signature[name].startswith("*"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, values, attrs


def compile_ptx(fn, types: dict[str, str], constexprs: dict[str, object], pdl: int, **options) -> str:
    """`fn` compiled for sm_90 with PDL=pdl (and launch_pdl to match), as PTX."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, values, attrs = build_signature(fn, types, {**constexprs, "PDL": pdl})
    src = ASTSource(fn=fn, signature=signature, constexprs=values, attrs=attrs)
    options = {"num_warps": 4, **options, "launch_pdl": bool(pdl)}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]


def _gemv_tma():
    from accel_cuda.kernels import w4a16_gemv_tma
    from accel_cuda.kernels.w4a16_gemv import _MAGIC

    types = {
        "x_ptr": "*i64",
        "w_desc": "tensordesc<i32[16, 128]>",
        "s_desc": "tensordesc<bf16[16, 8]>",
        "z_desc": "tensordesc<bf16[16, 8]>",
        "out_ptr": "*bf16",
        "ws_ptr": "*fp32",
        "cnt_ptr": "*i32",
    }
    consts = {
        "HAS_ZP": False,
        "BLOCK_N": 16,
        "NG": 8,
        "SPLIT_P2": 4,
        "ASM": w4a16_gemv_tma._DOT_CHAIN["bf16"],
        "CONSTRAINTS": w4a16_gemv_tma._CHAIN_CONSTRAINTS,
        "MAGIC": _MAGIC["bf16"],
        "STAGES": 3,
    }
    return w4a16_gemv_tma._gemv_tma_kernel, types, consts, {"num_stages": 3}


def _gemv():
    from accel_cuda.kernels import w4a16_gemv

    types = {
        "x_ptr": "*i64",
        "w_ptr": "*i32",
        "s_ptr": "*bf16",
        "z_ptr": "*bf16",
        "out_ptr": "*bf16",
        "ws_ptr": "*fp32",
        "cnt_ptr": "*i32",
    }
    consts = {
        "HAS_ZP": False,
        "PREFETCH": True,
        "BLOCK_N": 16,
        "NG": 4,
        "SPLIT_P2": 4,
        "EVEN": True,
        "ASM": w4a16_gemv._DOT_WORD["bf16"],
        "MAGIC": w4a16_gemv._MAGIC["bf16"],
    }
    return w4a16_gemv._gemv_kernel, types, consts, {"num_stages": 1}


def _tma_dot():
    from accel_cuda.kernels import wxa16_tma_dot as td

    types = {
        "x_desc": "tensordesc<bf16[16, 128]>",
        "w_desc": "tensordesc<i32[64, 16]>",
        "s_desc": "tensordesc<bf16[64, 8]>",
        "z_desc": "tensordesc<i8[64, 16]>",
        "s_ptr": "*bf16",
        "z_ptr": "*i8",
        "out_ptr": "*bf16",
        "ws_ptr": "*fp32",
        "cnt_ptr": "*i32",
    }
    consts = {
        "BITS": 4,
        "HAS_ZP": True,
        "PER_CHANNEL": False,
        "BLOCK_N": 64,
        "BLOCK_M": 16,
        "NG": 1,
        "SBOX": 8,
        "ZBOX": 16,
        "STAGES": 4,
        "PAIRS": True,
        "ASM": td._PAIR_ASM["bf16"],
        "MAGIC": td._MAGIC["bf16"],
        "CVT": td._CVT_PAIR["bf16"],
    }
    return td._tma_dot_kernel, types, consts, {"num_stages": 4}


def _w8a8_tma():
    from accel_cuda.kernels import w8a8_tma

    types = {
        "x_desc": "tensordesc<i8[16, 128]>",
        "w_desc": "tensordesc<i8[128, 128]>",
        "sx_ptr": "*fp32",
        "sw_ptr": "*fp32",
        "bias_ptr": "*bf16",
        "out_ptr": "*bf16",
        "ws_ptr": "*fp32",
        "cnt_ptr": "*i32",
    }
    consts = {"FP8": False, "SW_PER_N": True, "HAS_BIAS": True, "BLOCK_N": 128, "BLOCK_M": 16, "STAGES": 6}
    return w8a8_tma._w8a8_tma_kernel, types, consts, {"num_stages": 6}


def _sparse24_tma():
    from accel_cuda.kernels import w4a16_sparse24_tma
    from accel_cuda.kernels.w4a16_gemv import _MAGIC
    from accel_cuda.kernels.w4a16_sparse24_gemv import _DOT_SPARSE

    types = {
        "x_ptr": "*i64",
        "w_desc": "tensordesc<i32[4, 256]>",
        "m_desc": "tensordesc<i32[4, 256]>",
        "s_desc": "tensordesc<bf16[16, 8]>",
        "z_desc": "tensordesc<bf16[16, 8]>",
        "out_ptr": "*bf16",
        "ws_ptr": "*fp32",
        "cnt_ptr": "*i32",
    }
    consts = {
        "HAS_ZP": False,
        "BLOCK_N": 16,
        "NG": 8,
        "SPLIT_P2": 2,
        "ASM": _DOT_SPARSE["bf16"],
        "MAGIC": _MAGIC["bf16"],
        "STAGES": 3,
    }
    return w4a16_sparse24_tma._sparse_tma_kernel, types, consts, {"num_stages": 3}


def _quantize_rows():
    from accel_cuda.kernels import w8a8

    types = {"x_ptr": "*bf16", "q_ptr": "*i8", "s_ptr": "*fp32", "static_ptr": "*fp32"}
    consts = {"FP8": False, "STATIC": False, "RECIP": True, "BLOCK_K": 4096, "ONE_PASS": True}
    return w8a8._quantize_rows_kernel, types, consts, {"num_warps": 8}


def _w8a8_gemm():
    from accel_cuda.kernels import w8a8

    types = {
        "a_ptr": "*i8",
        "b_ptr": "*i8",
        "sa_ptr": "*fp32",
        "sb_ptr": "*fp32",
        "bias_ptr": "*bf16",
        "out_ptr": "*bf16",
    }
    consts = {
        "SB_PER_N": True,
        "HAS_BIAS": True,
        "FP8": False,
        "SPLIT_K": False,
        "EVEN_K": True,
        "BLOCK_M": 16,
        "BLOCK_N": 64,
        "BLOCK_K": 256,
        "GROUP_M": 8,
    }
    return w8a8._gemm_kernel, types, consts, {"num_stages": 4}


def _norm():
    from accel_cuda.kernels import norm

    types = {name: "*bf16" for name in ("x_ptr", "r_ptr", "w_ptr", "out_ptr", "h_ptr", "q_ptr", "s_ptr")}
    consts = {
        "H": 4096,
        "BLOCK_M": 1,
        "BLOCK_H": 4096,
        "ADD_RESIDUAL": True,
        "QUANT": False,
        "FP8": False,
        "RECIP": True,
        "Y_F32": False,
    }
    return norm._rms_norm_kernel, {**types, "eps": "fp32"}, consts, {"num_warps": 8}


def _norm_quant():
    from accel_cuda.kernels import norm

    types = {name: "*bf16" for name in ("x_ptr", "r_ptr", "w_ptr", "out_ptr", "h_ptr")}
    consts = {
        "H": 4096,
        "BLOCK_M": 1,
        "BLOCK_H": 4096,
        "ADD_RESIDUAL": False,
        "QUANT": True,
        "FP8": False,
        "RECIP": True,
        "Y_F32": False,
    }
    return norm._rms_norm_kernel, {**types, "q_ptr": "*i8", "s_ptr": "*fp32", "eps": "fp32"}, consts, {}


def _rope():
    from accel_cuda.kernels import rope

    types = {name: "*bf16" for name in ("q_ptr", "k_ptr", "cos_ptr", "sin_ptr", "q_out", "k_out")}
    return rope._rope_kernel, types, {"HALF": 64, "BLOCK_H": 8, "BLOCK_D": 64}, {"enable_fp_fusion": False}


def _silu_mul():
    from accel_cuda.kernels import act

    return act._silu_and_mul_kernel, {"x_ptr": "*bf16", "out_ptr": "*bf16"}, {"I": 14336, "BLOCK": 1024}, {}


def _kv_write():
    from accel_cuda.kernels import kv_write

    types = {
        "k_ptr": "*bf16",
        "v_ptr": "*bf16",
        "pos_ptr": "*i64",
        "kc_ptr": "*i8",
        "ks_ptr": "*fp32",
        "kz_ptr": "*fp32",
        "vc_ptr": "*i8",
        "vs_ptr": "*fp32",
        "vz_ptr": "*fp32",
    }
    consts = {"D": 128, "FMT": 1, "RECIP": True, "BLOCK_T": 1, "BLOCK_D": 128, "BLOCK_G": 4}
    return kv_write._kv_write_kernel, types, consts, {}


def _rope_kv_write():
    from accel_cuda.kernels import rope_kv_write

    types = {name: "*bf16" for name in ("q_ptr", "k_ptr", "v_ptr", "cos_ptr", "sin_ptr", "q_out", "k_rot")}
    types |= {name: "*i8" for name in ("kc_ptr", "vc_ptr")}
    types |= {name: "*fp32" for name in ("ks_ptr", "kz_ptr", "vs_ptr", "vz_ptr")}
    consts = {"HALF": 64, "FMT": 1, "RECIP": True, "BLOCK_D": 128, "BLOCK_G": 4}
    blocks = {"BLOCK_H": 8, "BLOCK_KV": 1, "BLOCK_HALF": 64}  # the plan at Llama-3-8B's decode (int8)
    kernel = rope_kv_write._rope_kv_write_kernel
    return kernel, {**types, "pos_ptr": "*i64"}, {**consts, **blocks}, {"enable_fp_fusion": False}


def _attention_split():
    from accel_cuda.kernels import attention

    types = {name: "*bf16" for name in ("q_ptr", "k_ptr", "ks_ptr", "kz_ptr", "v_ptr", "vs_ptr", "vz_ptr", "out_ptr")}
    types |= {"lens_ptr": "*i32", "o_ptr": "*fp32", "lse_ptr": "*fp32", "sm_scale": "fp32"}
    consts = {
        "D": 128,
        "FMT": 0,
        "DIRECT": False,
        "PRECISION": "tf32",
        "F16": False,
        "WORDS": False,
        "ASM": True,
        "QK_I8": False,
        "BLOCK_R": 16,
        "BLOCK_N": 64,
        "BLOCK_D": 128,
    }
    return attention._split_kernel, types, consts, {"num_stages": 2}


def _attention_fma():
    from accel_cuda.kernels import attention

    types = {name: "*bf16" for name in ("q_ptr", "kz_ptr", "vz_ptr", "out_ptr")}
    types |= {
        "k_ptr": "*i8",
        "v_ptr": "*i8",
        "ks_ptr": "*fp32",
        "vs_ptr": "*fp32",
        "lens_ptr": "*i32",
        "o_ptr": "*fp32",
        "lse_ptr": "*fp32",
        "sm_scale": "fp32",
    }
    consts = {"D": 128, "FMT": 1, "DIRECT": False, "BLOCK_R": 4, "REPS": 2, "LANES": 8, "BLOCK_D": 128}
    return attention._fma_kernel, types, consts, {"num_stages": 2}


def _attention_reduce():
    from accel_cuda.kernels import attention

    types = {"o_ptr": "*fp32", "lse_ptr": "*fp32", "lens_ptr": "*i32", "out_ptr": "*bf16"}
    return attention._reduce_kernel, types, {"D": 128, "BLOCK_S": 16, "BLOCK_D": 128}, {}


KERNELS = {
    "w4a16_gemv_tma": _gemv_tma,
    "w4a16_gemv": _gemv,
    "wxa16_tma_dot": _tma_dot,
    "w8a8_tma": _w8a8_tma,
    "w4a16_sparse24_tma": _sparse24_tma,
    "quantize_rows": _quantize_rows,
    "w8a8_gemm": _w8a8_gemm,
    "rms_norm_add": _norm,
    "rms_norm_quant": _norm_quant,
    "rope": _rope,
    "silu_and_mul": _silu_mul,
    "kv_write": _kv_write,
    "rope_kv_write": _rope_kv_write,
    "attention_split": _attention_split,
    "attention_fma": _attention_fma,
    "attention_reduce": _attention_reduce,
}


@needs_triton
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_pdl_waits_before_global_memory(name):
    fn, types, consts, options = KERNELS[name]()
    ptx = compile_ptx(fn, types, consts, pdl=2, **options)
    first = _GLOBAL_MEMORY.search(ptx)
    assert first is not None, "no global memory instruction found"
    wait = ptx.find("griddepcontrol.wait")
    assert 0 <= wait < first.start(), f"{first.group(0)} before griddepcontrol.wait"
    assert "griddepcontrol.launch_dependents" in ptx


@needs_triton
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_pdl_off_emits_nothing(name):
    fn, types, consts, options = KERNELS[name]()
    ptx = compile_ptx(fn, types, consts, pdl=0, **options)
    assert _GLOBAL_MEMORY.search(ptx) is not None
    assert "griddepcontrol" not in ptx
