"""kv_runtime's store: pages against kv_quant's reference and float64 error bounds at every precision, exact byte
accounting, allocation / free / info / utilization / fragmentation, precision switching per layer and per request,
memory pressure that demotes and offloads without losing a block, callbacks, and errors that name the field."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from accel.integration.kv_runtime import (
    AllocationResult,
    KVBackendProtocol,
    KVPage,
    KVPoolConfig,
    KVPrecision,
    KVStoreConfig,
    KVTier,
    MigrationPlan,
    MigrationResult,
    PagedKVStore,
)
from accel.integration.kv_runtime.pages import dequantize_pages
from accel.quantization.kv_quant import QuantizedKV, quantize_kv

LAYERS, HEADS, DIM, BLOCK = 2, 3, 64, 16
PRECISIONS = ["fp32", "fp16", "bf16", "fp8_e4m3", "int8", "int4", "int4-kivi", "int8-channel", "fp8_e4m3-kivi"]
FP16 = KVPrecision(dtype="fp16")
INT8 = KVPrecision(dtype="int8")
KIVI = KVPrecision(dtype="int4", granularity="kivi")


def sample(seed: int, tokens: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V [heads, tokens, head_dim] in float64, keys with an offset outlier channel (as real keys have)."""
    gen = torch.Generator().manual_seed(seed)
    k, v = torch.randn(2, HEADS, tokens, DIM, generator=gen, dtype=torch.float64)
    k[..., 5] = k[..., 5] * 0.1 + 6.0
    return k, v


def bound(stored: QuantizedKV, precision: KVPrecision, x: torch.Tensor) -> torch.Tensor:
    """The elementwise error kv_quant promises for x [h, t, d] stored as `stored` (its first t slots)."""
    t = x.shape[1]
    rounding = x.abs() * 2**-20  # float32 arithmetic on x itself
    if not precision.quantized:
        unit = {"fp32": 2**-24, "fp16": 2**-11, "bf16": 2**-8}[precision.dtype]
        return x.abs() * unit + 2**-24  # round to nearest: half an ulp, relative
    assert stored.scale is not None
    step = stored.scale[0].double().expand(-1, stored.codes.shape[-2], x.shape[-1])[:, :t]
    if precision.dtype == "fp8_e4m3":
        return torch.maximum(x.abs() * 2**-4, step * 2**-10) + rounding
    return step / 2 + rounding


def store(capacity_blocks: float = 64, **kwargs: object) -> PagedKVStore:
    config = KVStoreConfig(num_layers=LAYERS, num_kv_heads=HEADS, head_dim=DIM, block_size=BLOCK,
                           pools={KVTier.GPU: KVPoolConfig(capacity_bytes=1)})
    capacity = int(capacity_blocks * config.block_bytes(kwargs.get("precision", FP16)))  # type: ignore[arg-type]
    pools = kwargs.pop("pools", {KVTier.GPU: KVPoolConfig(capacity_bytes=capacity)})
    return PagedKVStore(KVStoreConfig(num_layers=LAYERS, num_kv_heads=HEADS, head_dim=DIM, block_size=BLOCK,
                                      pools=pools, **kwargs))  # type: ignore[arg-type]


def fill(kv: PagedKVStore, sequence_id: str, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate and write `tokens` tokens of random K/V to every layer (layer l gets seed + l); returns layer 0's."""
    result = kv.allocate_for_sequence(sequence_id, tokens)
    assert result.success, result.error_message
    first = None
    for layer in range(LAYERS):
        k, v = sample(seed + layer, tokens)
        for index, block_id in enumerate(kv.block_table(sequence_id)):
            part = slice(index * BLOCK, min((index + 1) * BLOCK, tokens))
            kv.write(block_id, layer, 0, k[:, part].float(), v[:, part].float())
        first = first or (k, v)
    assert first is not None
    return first


# ------------------------------------------------------------------------------------------ pages


@pytest.mark.parametrize("name", PRECISIONS)
def test_page_matches_the_quantizer_and_its_error_bound(name: str) -> None:
    precision = KVPrecision.from_name(name)
    k, v = sample(1)
    if precision.token_writable:  # written in three pieces, as decoding fills a block
        page = KVPage.empty(precision, HEADS, BLOCK, DIM, torch.device("cpu"))
        for start, end in ((0, 5), (5, 6), (6, BLOCK)):
            page.write(start, k[:, start:end].float(), v[:, start:end].float())
    else:
        page = KVPage.from_tensors(precision, k.float(), v.float(), BLOCK)
    assert page.full and page.filled == BLOCK
    for stored, x, which in ((page.keys, k, 0), (page.values, v, 1)):
        args = precision.kv_args()[which]
        reference = quantize_kv(x[None].float(), args)  # the whole page at once: the reference
        if precision.quantized:
            assert torch.equal(stored.codes.view(torch.uint8), reference.codes.view(torch.uint8))
            assert torch.equal(stored.scale, reference.scale)
        else:
            assert torch.equal(stored.codes, x[None].to(precision.torch_dtype))
        error = (stored.dequantize(torch.float64)[0] - x).abs()  # against the float64 originals
        assert (error <= bound(stored, precision, x)).all(), (name, float(error.max()))
        if precision.quantized:
            assert error.max() > 0  # it really quantized


@pytest.mark.parametrize("name", PRECISIONS)
@pytest.mark.parametrize("block_size", [16, 32])
def test_page_bytes_are_the_schemas(name: str, block_size: int) -> None:
    precision = KVPrecision.from_name(name)
    k, v = sample(2, block_size)
    page = KVPage.from_tensors(precision, k.float(), v.float(), block_size)
    tensors = [t for s in (page.keys, page.values) for t in (s.codes, s.scale, s.zero_point) if t is not None]
    assert page.nbytes == sum(t.numel() * t.element_size() for t in tensors)
    assert page.nbytes == precision.page_schema(LAYERS, HEADS, DIM, block_size).page_size_bytes


def test_keys_and_values_do_not_share_storage() -> None:
    # fp32 pages once aliased K and V (one zeros tensor cast "to" its own dtype): values overwrote keys.
    page = KVPage.empty(KVPrecision(dtype="fp32"), HEADS, BLOCK, DIM, torch.device("cpu"))
    k, v = sample(3, 4)
    page.write(0, k.float(), v.float())
    got_k, got_v = page.dequantize()
    assert torch.equal(got_k, k.float()) and torch.equal(got_v, v.float())


@pytest.mark.parametrize(("source", "target"), [("fp16", "int8"), ("int8", "int4-kivi"), ("fp16", "fp8_e4m3"),
                                                ("int8", "int4"), ("int4-kivi", "fp16")])
def test_requantized_page_keeps_every_token_within_both_steps(source: str, target: str) -> None:
    k, v = sample(4)
    first = KVPage.from_tensors(KVPrecision.from_name(source), k.float(), v.float(), BLOCK)
    second = first.requantize(KVPrecision.from_name(target))
    assert second.filled == first.filled == BLOCK and second.precision.name == target
    for before, after, x in ((first.keys, second.keys, k), (first.values, second.values, v)):
        step_one = bound(before, first.precision, x)
        middle = before.dequantize(torch.float64)[0]
        step_two = bound(after, second.precision, middle)
        error = (after.dequantize(torch.float64)[0] - x).abs()
        assert (error <= step_one + step_two).all()  # |x - x''| <= |x - x'| + |x' - x''|


def test_page_refuses_what_its_precision_cannot_do() -> None:
    k, v = sample(5, 4)
    with pytest.raises(ValueError, match="int4-kivi needs a full block .16 tokens.*holds 4"):
        KVPage.from_tensors(KIVI, k.float(), v.float(), BLOCK)
    full = KVPage.from_tensors(KIVI, *(x.float() for x in sample(5)), BLOCK)
    with pytest.raises(ValueError, match="channel scales over the whole block; re-quantize"):
        full.write(0, k.float(), v.float())
    with pytest.raises(ValueError, match="slots 14 .. 17 fall outside the page's 16 slots"):
        KVPage.empty(INT8, HEADS, BLOCK, DIM, torch.device("cpu")).write(14, k.float(), v.float())


def test_many_pages_dequantize_at_once_as_one_by_one() -> None:
    # runs of one precision are read in one pass (channel scales expanded over their tokens): the same values
    names = ["fp16", "fp16", "int8", "int4-kivi", "int4-kivi", "int8", "fp32", "int4"]
    pages = [KVPage.from_tensors(KVPrecision.from_name(n), *(x.float() for x in sample(20 + i)), BLOCK)
             for i, n in enumerate(names)]
    lengths = [BLOCK] * 7 + [5]
    keys, values = dequantize_pages(pages, lengths)
    one_by_one = [page.dequantize() for page in pages]
    assert torch.equal(keys, torch.cat([k[:, :n] for (k, _), n in zip(one_by_one, lengths, strict=True)], dim=1))
    assert torch.equal(values, torch.cat([v[:, :n] for (_, v), n in zip(one_by_one, lengths, strict=True)], dim=1))
    assert keys.shape == (HEADS, 7 * BLOCK + 5, DIM)
    with pytest.raises(ValueError, match="one length per page"):
        dequantize_pages(pages, lengths[:2])


def test_precision_names_and_validation() -> None:
    assert [KVPrecision.from_name(n).name for n in PRECISIONS] == PRECISIONS
    assert KVPrecision.from_name("int4-kivi") == KIVI and hash(KVPrecision.from_name("int4-kivi")) == hash(KIVI)
    with pytest.raises(ValidationError, match="kv_quant has no e5m2 quantizer; use 'fp8_e4m3'"):
        KVPrecision(dtype="fp8_e5m2")
    with pytest.raises(ValidationError, match="granularity 'kivi' applies to quantized dtypes"):
        KVPrecision(dtype="fp16", granularity="kivi")
    with pytest.raises(ValueError, match="suffix must be '-kivi' or '-channel'"):
        KVPrecision.from_name("int8-tensor")


# ------------------------------------------------------------------------------------------ store


def test_store_is_a_kv_backend_and_accounts_bytes_exactly() -> None:
    kv = store(capacity_blocks=8)
    assert isinstance(kv, KVBackendProtocol)
    heard: list[AllocationResult] = []
    kv.register_allocation_callback(heard.append)
    k, _ = fill(kv, "a", 40, seed=0)  # 40 tokens: blocks of 16, 16, 8
    table = kv.block_table("a")
    block_bytes = kv.config.block_bytes(FP16)
    assert len(table) == 3 and heard[0].block_ids == table and heard[0].total_bytes == 3 * block_bytes
    stats = kv.get_stats()
    assert stats["tiers"]["gpu"]["used_bytes"] == stats["tiers"]["gpu"]["tensor_bytes"] == 3 * block_bytes
    assert kv.get_utilization() == pytest.approx(3 / 8)
    assert kv.get_fragmentation() == pytest.approx(8 / 48)  # 8 empty slots of 48; fp16 bytes are per slot
    info = kv.get_block_info(table[2])
    assert info is not None and info.sequence_id == "a" and info.token_range == (32, 40)
    assert info.filled_tokens == [8, 8] and info.layer_precisions == ["fp16", "fp16"]
    assert info.size_bytes == block_bytes and kv.get_block_info(999) is None
    keys, _ = kv.gather("a", 0, 40)
    assert torch.equal(keys, k.float().half().float())
    raw = kv.allocate(2)
    assert raw.success and kv.free(raw.block_ids) and kv.get_utilization() == pytest.approx(3 / 8)
    kv.truncate_sequence("a", 17)
    assert len(kv.block_table("a")) == 2 and kv.get_block_info(table[1]).filled_tokens == [1, 1]  # type: ignore[union-attr]
    assert kv.release_sequence("a") and not kv.release_sequence("a")
    assert kv.get_stats()["blocks"] == 0 and kv.get_utilization() == 0.0


def test_migration_per_layer_and_per_request_keeps_every_block() -> None:
    kv = store()
    k0, _ = fill(kv, "a", 40, seed=0)
    fill(kv, "b", 32, seed=10)
    table, other = kv.block_table("a"), kv.block_table("b")
    heard: list[MigrationResult] = []
    kv.register_migration_callback(heard.append)
    before = kv.get_stats()["tiers"]["gpu"]["used_bytes"]
    # layer 0 of sequence a's two full blocks to int4 KIVI
    assert kv.migrate_blocks(MigrationPlan(block_ids=table[:2], dst_precision=KIVI, layers=[0]))
    page_saving = kv.config.page_bytes(FP16) - kv.config.page_bytes(KIVI)
    assert heard[-1].bytes_saved == 2 * page_saving
    assert kv.get_stats()["tiers"]["gpu"]["used_bytes"] == before - 2 * page_saving
    assert kv.get_block_info(table[0]).layer_precisions == ["int4-kivi", "fp16"]  # type: ignore[union-attr]
    keys, _ = kv.gather("a", 0, 40)
    error = (keys[:, :32].double() - k0[:, :32]).abs()
    assert 0 < float(error.max()) < 0.5  # int4 KIVI of N(0, 1) keys, per channel over 16 tokens
    # per request: all of sequence b to int8; sequence a untouched
    result = kv.switch_sequence_precision("b", INT8)
    assert result.success and result.block_ids == other
    assert all(kv.get_block_info(i).layer_precisions == ["int8", "int8"] for i in other)  # type: ignore[union-attr]
    assert kv.get_block_info(table[2]).layer_precisions == ["fp16", "fp16"]  # type: ignore[union-attr]
    kv.allocate_for_sequence("b", 48)  # the request's next block is written at its precision
    assert kv.get_block_info(kv.block_table("b")[-1]).layer_precisions == ["int8", "int8"]  # type: ignore[union-attr]
    stats = kv.get_stats()
    assert stats["blocks"] == 3 + 3 and stats["tiers"]["gpu"]["used_bytes"] == stats["tiers"]["gpu"]["tensor_bytes"]


def test_pressure_demotes_cold_blocks_down_the_ladder_and_loses_none() -> None:
    kv = store(capacity_blocks=6)
    originals = {name: fill(kv, name, 32, seed=s) for name, s in (("old", 0), ("mid", 10), ("new", 20))}
    blocks = {name: kv.block_table(name) for name in originals}
    kv.gather("new", 0, 32)  # "new" is the most recently read
    demoted: list[MigrationResult] = []
    kv.register_migration_callback(demoted.append)
    result = kv.allocate_for_sequence("next", 32)  # the tier is full: 2 more blocks need room
    assert result.success
    # an int8 step frees 1 - 6528 / 12288 = 47% of a block, so 2 blocks take 5 steps, coldest first: "old", "mid",
    # then the first block of "new" (read before its second); the most recently read block stays fp16
    assert result.demoted_block_ids == [*blocks["old"], *blocks["mid"], blocks["new"][0]]
    assert result.evicted_block_ids == []
    assert [m.block_ids[0] for m in demoted] == result.demoted_block_ids
    assert all(m.reason == "pressure" and m.dst_precision == "int8" for m in demoted)
    assert kv.get_block_info(blocks["new"][1]).layer_precisions == ["fp16", "fp16"]  # type: ignore[union-attr]
    stats = kv.get_stats()["tiers"]["gpu"]
    assert stats["used_bytes"] == stats["tensor_bytes"] <= stats["capacity_bytes"]
    for name, (k, _) in originals.items():  # every block and token is still there, within int8's error
        assert kv.block_table(name) == blocks[name]
        keys, _ = kv.gather(name, 0, 32)
        assert keys.shape == (HEADS, 32, DIM)
        assert float((keys.double() - k).abs().max()) < 6.2 / 127  # half an int8 step of the outlier channel
    # when one step of every block is not enough, the coldest full blocks take the second step (int4 KIVI)
    kv = store(capacity_blocks=6)
    for name, seed in (("old", 0), ("mid", 10), ("new", 20)):
        fill(kv, name, 32, seed)
    result = kv.allocate(3)  # 6 int8 steps free 2.8 of the 3 blocks needed; 2 KIVI steps the rest
    assert result.success and len(result.demoted_block_ids) == 6
    precisions = [kv.get_block_info(i).layer_precisions for i in range(6)]  # type: ignore[union-attr]
    assert precisions == [["int4-kivi"] * 2] * 2 + [["int8"] * 2] * 4
    assert kv.get_stats()["counters"]["demoted_blocks"] == 6


def test_pressure_offloads_when_demotion_is_not_enough_and_fails_cleanly_when_nothing_helps() -> None:
    bytes_fp16 = KVStoreConfig(num_layers=LAYERS, num_kv_heads=HEADS, head_dim=DIM, block_size=BLOCK,
                               pools={KVTier.GPU: KVPoolConfig(capacity_bytes=1)}).block_bytes(FP16)
    pools = {KVTier.GPU: KVPoolConfig(capacity_bytes=4 * bytes_fp16),
             KVTier.CPU: KVPoolConfig(capacity_bytes=2 * bytes_fp16)}
    kv = store(pools=pools, pressure_ladder=[], offload_tier=KVTier.CPU)
    k, _ = fill(kv, "a", 64, seed=0)
    evicted: list[list[int]] = []
    kv.register_eviction_callback(evicted.append)
    result = kv.allocate_for_sequence("b", 32)
    assert result.success and evicted == [result.evicted_block_ids] and len(result.evicted_block_ids) == 2
    assert {kv.get_block_info(i).tier for i in result.evicted_block_ids} == {KVTier.CPU}  # type: ignore[union-attr]
    keys, _ = kv.gather("a", 0, 64)  # offloaded blocks are still read, in position order
    assert torch.equal(keys, k.float().half().float())
    with pytest.raises(ValueError, match=r"blocks \[0, 1\] are not in src_tier 'gpu'"):
        kv.migrate(MigrationPlan(dst_tier=KVTier.CPU, block_ids=result.evicted_block_ids))
    before = kv.get_stats()
    failed = kv.allocate_for_sequence("c", 16)  # both tiers full, nothing to demote: refused, nothing changed
    assert not failed.success and "tier 'gpu' cannot hold 1 more blocks" in (failed.error_message or "")
    after = kv.get_stats()
    assert after["tiers"] == before["tiers"] and after["counters"]["failed_allocations"] == 1
    assert "c" not in kv.sequences()


def test_migration_is_all_or_nothing_and_rewinding_into_a_cold_block_rewrites_it() -> None:
    kv = store(capacity_blocks=3.2)
    fill(kv, "a", 48, seed=0)
    table = kv.block_table("a")
    before = kv.get_stats()
    plan = MigrationPlan(block_ids=table, dst_precision=KVPrecision(dtype="fp32"))  # twice the bytes: no room
    result = kv.migrate(plan)
    assert not result.success and "has" in (result.error_message or "") and kv.get_stats()["tiers"] == before["tiers"]
    assert kv.migrate_blocks(MigrationPlan(block_ids=table[:2], dst_precision=KIVI))
    # a rewind (speculative decoding) to position 20 lands in block 1, now int4 KIVI: it returns to fp16 first
    writes: list[MigrationResult] = []
    kv.register_migration_callback(writes.append)
    kv.truncate_sequence("a", 20)
    k, v = sample(9, 1)
    kv.write(table[1], 0, 4, k.float(), v.float())
    assert writes[-1].reason == "write" and writes[-1].dst_precision == "fp16"
    info = kv.get_block_info(table[1])
    assert info is not None and info.layer_precisions == ["fp16", "int4-kivi"] and info.filled_tokens == [5, 4]
    keys, _ = kv.gather("a", 0, 21)
    assert torch.equal(keys[:, 20], k[:, 0].float().half().float())


def test_bad_input_names_the_field() -> None:
    kv = store()
    fill(kv, "a", 20, seed=0)
    table = kv.block_table("a")
    with pytest.raises(ValueError, match="block 1 holds positions of sequence 'a'.*release_sequence"):
        kv.free([table[1]])
    with pytest.raises(ValueError, match="block 77 is not allocated"):
        kv.migrate_blocks(MigrationPlan(block_ids=[77], dst_precision=INT8))
    with pytest.raises(ValueError, match=r"int4-kivi needs full blocks .*\(1, 4\)"):
        kv.migrate_blocks(MigrationPlan(block_ids=table, dst_precision=KIVI))
    with pytest.raises(ValueError, match="tier 'cpu' has no pool"):
        kv.migrate(MigrationPlan(src_tier=KVTier.CPU, block_ids=table, dst_precision=INT8))
    with pytest.raises(ValueError, match="tier 'cpu' has no pool; configured: \\['gpu'\\]"):
        kv.allocate(1, KVTier.CPU)
    with pytest.raises(ValueError, match="layer 2 is outside 0 .. 1"):
        kv.read(table[0], 2)
    with pytest.raises(ValueError, match="block 1 holds 4 tokens, 6 were asked for"):
        kv.gather("a", 0, 22)
    with pytest.raises(ValueError, match="num_blocks must be at least 1"):
        kv.allocate(0)
    with pytest.raises(ValidationError, match="block_ids is empty"):
        MigrationPlan(block_ids=[], dst_precision=INT8)
    with pytest.raises(ValidationError, match="neither changes tier nor sets dst_precision"):
        MigrationPlan(block_ids=[1])
    shape = {"num_layers": LAYERS, "num_kv_heads": HEADS, "head_dim": DIM}
    gpu = {KVTier.GPU: KVPoolConfig(capacity_bytes=10**6)}
    with pytest.raises(ValidationError, match="pools is empty"):
        KVStoreConfig(**shape, pools={})
    with pytest.raises(ValidationError, match="tier 'nvme' needs a disk-backed pool"):
        KVStoreConfig(**shape, pools={KVTier.NVME: KVPoolConfig(capacity_bytes=10**6)})
    with pytest.raises(ValidationError, match="write precision must be per_token"):
        KVStoreConfig(**shape, pools=gpu, precision=KIVI)
    with pytest.raises(ValidationError, match="pressure_ladder must make pages smaller at every step"):
        KVStoreConfig(**shape, pools=gpu, pressure_ladder=[KVPrecision(dtype="int4"), INT8])
    with pytest.raises(ValidationError, match="offload_tier 'cpu' has no pool"):
        KVStoreConfig(**shape, pools=gpu, offload_tier=KVTier.CPU)
    with pytest.raises(ValidationError, match="capacity_bytes"):
        KVPoolConfig(capacity_bytes=0)


def test_default_ladder_keeps_only_steps_that_shrink_a_page() -> None:
    shape = {"num_layers": LAYERS, "num_kv_heads": HEADS, "head_dim": DIM}
    gpu = {KVTier.GPU: KVPoolConfig(capacity_bytes=10**6)}
    assert [p.name for p in KVStoreConfig(**shape, pools=gpu).ladder()] == ["int8", "int4-kivi"]
    assert [p.name for p in KVStoreConfig(**shape, pools=gpu, precision=INT8).ladder()] == ["int4-kivi"]
    # 4-token blocks: KIVI's channel scales outweigh its codes, so it is no step down from int8
    assert [p.name for p in KVStoreConfig(**shape, pools=gpu, block_size=4).ladder()] == ["int8"]
    assert math.isclose(KVStoreConfig(**shape, pools=gpu).block_bytes(FP16), 2 * 2 * HEADS * BLOCK * DIM * 2)
