"""rope_ops.rotary_embedding, the reference of the fused RoPE: close to the rotation by angle computed in float64, the
decoder's inline expression on [B, H, T, D]-transposed views bit for bit, strided q / k views of a fused qkv output,
tables of batch 1 or B, and clear errors."""

from __future__ import annotations

import pytest
import torch

from accel.runtime.ops import OPS
from accel.runtime.rope_ops import rotary_embedding

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Relative error of each rotated head against float64: float32 lands far under 1e-6; a 16-bit dtype rounds the tables,
# the two products and their sum, 2^-9 (bf16) / 2^-12 (fp16) relative each at most.
BOUND = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def model_rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The decoder's rotate_half before the op existed, verbatim: (x1, x2) -> (-x2, x1) over the halves of head_dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def angles(positions: torch.Tensor, d: int, theta: float = 500000.0) -> torch.Tensor:
    """positions [B|1, T] -> the float64 angle of each pair [B|1, T, D/2]: pos * theta^(-2i / D)."""
    inv_freq = theta ** -(torch.arange(0, d, 2, dtype=torch.float64) / d)
    return positions[..., None].double() * inv_freq


def tables(angle: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin [B|1, T, D] in dtype as the model builds them: each frequency in both halves."""
    full = torch.cat((angle, angle), dim=-1)
    return full.cos().to(dtype), full.sin().to(dtype)


def fused_qkv(b: int, t: int, h: int, hkv: int, d: int, dtype: torch.dtype, seed: int = 0):
    """q [B, T, H, D] and k [B, T, Hkv, D] as the model makes them: strided views of one qkv projection output."""
    gen = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(b, t, (h + 2 * hkv) * d, generator=gen) * 3).to(dtype)
    q, k, _ = qkv.split((h * d, hkv * d, hkv * d), dim=-1)
    return q.view(b, t, h, d), k.view(b, t, hkv, d)


def rotated_float64(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """The paper's definition: each pair (x_i, x_{i+D/2}) rotated by its angle, in float64. angle [B|1, T, D/2]."""
    x1, x2 = x.double().chunk(2, dim=-1)
    c, s = angle.cos().unsqueeze(2), angle.sin().unsqueeze(2)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("b", "t", "h", "hkv", "d", "decode"), [(1, 7, 4, 2, 64, False), (3, 1, 8, 2, 128, True),
                                                                 (2, 5, 5, 1, 96, True), (1, 33, 32, 8, 128, False)])
def test_close_to_the_rotation_in_float64(dtype, b, t, h, hkv, d, decode):
    q, k = fused_qkv(b, t, h, hkv, d, dtype, seed=t * 100 + d)
    gen = torch.Generator().manual_seed(1)
    positions = torch.randint(0, 8000, (b, 1), generator=gen) + torch.arange(t) if decode else torch.arange(t)[None]
    angle = angles(positions, d)
    q_rot, k_rot = rotary_embedding(q, k, *tables(angle, dtype))
    for x, got in ((q, q_rot), (k, k_rot)):
        assert got.dtype == dtype and got.shape == x.shape and got.is_contiguous()
        truth = rotated_float64(x, angle)
        error = float(((got.double() - truth).norm(dim=-1) / truth.norm(dim=-1)).max())  # the worst head
        assert error < BOUND[dtype], f"relative error {error:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decode", [False, True])
def test_equals_the_models_expression_on_transposed_views_exactly(dtype, decode):
    """model.py rotated q.transpose(1, 2) [B, H, T, D] with cos.unsqueeze(1): the same products and sums per element."""
    b, t, h, hkv, d = (3, 1, 8, 2, 64) if decode else (2, 9, 6, 3, 64)
    q, k = fused_qkv(b, t, h, hkv, d, dtype, seed=5)
    positions = torch.tensor([[40], [3], [17]]) if decode else torch.arange(t)[None]
    cos, sin = tables(angles(positions, d), dtype)
    q_rot, k_rot = rotary_embedding(q, k, cos, sin)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)  # [B|1, 1, T, D]
    for x, got in ((q, q_rot), (k, k_rot)):
        x = x.transpose(1, 2)
        expected = x * c + model_rotate_half(x) * s
        assert torch.equal(got, expected.transpose(1, 2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_views_rotate_as_their_contiguous_copies(dtype):
    q, k = fused_qkv(2, 4, 5, 1, 32, dtype, seed=7)
    assert not q.is_contiguous() and not k.is_contiguous()
    gen = torch.Generator().manual_seed(2)
    cos, sin = (torch.randn(2, 4, 32, generator=gen).to(dtype) for _ in range(2))  # arbitrary tables, both halves
    got = rotary_embedding(q, k, cos, sin)
    want = rotary_embedding(q.contiguous(), k.contiguous(), cos, sin)
    for g, w in zip(got, want, strict=True):
        assert g.is_contiguous() and torch.equal(g, w)


def test_a_table_of_batch_one_serves_every_row():
    q, k = fused_qkv(3, 6, 4, 2, 64, torch.bfloat16, seed=9)
    cos, sin = tables(angles(torch.arange(6)[None], 64), torch.bfloat16)  # [1, T, D]
    got = rotary_embedding(q, k, cos, sin)
    expanded = rotary_embedding(q, k, cos.expand(3, -1, -1), sin.expand(3, -1, -1))
    repeated = rotary_embedding(q, k, cos.repeat(3, 1, 1), sin.repeat(3, 1, 1))
    for g, e, r in zip(got, expanded, repeated, strict=True):
        assert torch.equal(g, e) and torch.equal(g, r)
    for row in range(3):  # each row on its own, the same table
        q_row, k_row = rotary_embedding(q[row : row + 1], k[row : row + 1], cos, sin)
        assert torch.equal(q_row, got[0][row : row + 1]) and torch.equal(k_row, got[1][row : row + 1])


def test_position_zero_is_the_identity():
    q, k = fused_qkv(1, 1, 2, 1, 16, torch.float16)
    cos, sin = tables(angles(torch.zeros(1, 1), 16), torch.float16)
    q_rot, k_rot = rotary_embedding(q, k, cos, sin)
    assert torch.equal(q_rot, q) and torch.equal(k_rot, k)


def test_op_inputs_cover_strided_views_both_table_batches_and_odd_heads():
    op = OPS["rotary_embedding"]
    made = [make_inputs(torch.Generator().manual_seed(0), "cpu", torch.bfloat16) for make_inputs in op.input_makers]
    assert [(tuple(q.shape), k.shape[2], cos.shape[0]) for q, k, cos, _ in made] == [
        ((2, 3, 5, 64), 1, 1), ((3, 1, 8, 128), 2, 3), ((2, 4, 3, 96), 3, 2)
    ]
    assert all(not q.is_contiguous() and not k.is_contiguous() for q, k, _, _ in made)
    assert op.rtol == op.atol == 0.0


def _args(dtypes: dict[str, torch.dtype] | None = None, **shapes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """(q, k, cos, sin) of ones: q [2, 3, 4, 8], k [2, 3, 2, 8], cos [1, 3, 8], sin [2, 3, 8] unless overridden."""
    shapes = {"q": (2, 3, 4, 8), "k": (2, 3, 2, 8), "cos": (1, 3, 8), "sin": (2, 3, 8), **shapes}
    return tuple(torch.ones(shape, dtype=(dtypes or {}).get(name, torch.float32)) for name, shape in shapes.items())


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (_args(q=(2, 3, 8)), r"q must be a floating-point \[B, T, H, D\], got torch.float32 \(2, 3, 8\)"),
        (_args({"q": torch.int32}), "q must be a floating-point"),
        (_args(q=(2, 3, 4, 7), k=(2, 3, 2, 7), cos=(1, 3, 7), sin=(1, 3, 7)), "D must be even .* D = 7"),
        (_args(k=(2, 4, 2, 8)), r"k torch.float32 \(2, 4, 2, 8\) must be \[B, T, Hkv, D\] = \[2, 3, Hkv, 8\]"),
        (_args(k=(2, 3, 2, 6)), r"k .* must be \[B, T, Hkv, D\]"),
        (_args({"k": torch.float16}), r"k torch.float16 .* in q's dtype torch.float32"),
        (_args(cos=(3, 3, 8)), r"cos torch.float32 \(3, 3, 8\) must be \[B or 1, T, D\] = \[2 or 1, 3, 8\]"),
        (_args(cos=(3, 8)), r"cos .* \(3, 8\) must be \[B or 1, T, D\]"),
        (_args(sin=(2, 3, 16)), r"sin .* \(2, 3, 16\) must be"),
        (_args({"sin": torch.bfloat16}), r"sin torch.bfloat16 .* in q's dtype torch.float32"),
    ],
)
def test_arguments_off_the_contract_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        rotary_embedding(*args)
