"""One rank of test_comm_backend's two-process run over gloo (a script, started by the test as its own process).

    python comm_worker.py RANK WORLD_SIZE PORT OUT_DIR

Both ranks run the collectives; rank 0 then sends a 40-token sequence of KV blocks (fp16 in its store) three times:
uncompressed, int8 and int4 on the wire; rank 1 receives each into its own fp16 store and compares what it reads
with the float64 originals and with kv_quant's reference quantization of them. Each rank writes OUT_DIR/rank<r>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from accel.integration.comm_backend import KVBlockTransfer, KVCompression, TorchDistributedBackend
from accel.integration.kv_runtime import KVPoolConfig, KVPrecision, KVStoreConfig, KVTier, PagedKVStore
from accel.quantization.kv_quant import quantize_kv

LAYERS, HEADS, DIM, BLOCK, TOKENS = 2, 3, 64, 16, 40
WIRE = {"plain": None, "int8": KVCompression(precision=KVPrecision(dtype="int8")),
        "int4": KVCompression(precision=KVPrecision(dtype="int4"))}


def originals(layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sender's K and V of one layer, [heads, tokens, head_dim] float64 (both ranks can make them)."""
    gen = torch.Generator().manual_seed(100 + layer)
    k, v = torch.randn(2, HEADS, TOKENS, DIM, generator=gen, dtype=torch.float64)
    k[..., 3] += 4.0  # an offset key channel
    return k, v


def new_store() -> PagedKVStore:
    return PagedKVStore(KVStoreConfig(num_layers=LAYERS, num_kv_heads=HEADS, head_dim=DIM, block_size=BLOCK,
                                      pools={KVTier.GPU: KVPoolConfig(capacity_bytes=2**24)}))


def sender(transfer: KVBlockTransfer) -> dict:
    store = new_store()
    store.allocate_for_sequence("seq", TOKENS)
    table = store.block_table("seq")
    for layer in range(LAYERS):
        k, v = originals(layer)
        for index, block_id in enumerate(table):
            part = slice(index * BLOCK, min((index + 1) * BLOCK, TOKENS))
            store.write(block_id, layer, 0, k[:, part].float(), v[:, part].float())
    reports = {name: transfer.send_blocks(store, table, dst=1, compression=flag) for name, flag in WIRE.items()}
    return {name: {**r.model_dump(mode="json"), "bytes_saved": r.bytes_saved, "wire_bytes": r.wire_bytes}
            for name, r in reports.items()}


def receiver(transfer: KVBlockTransfer) -> dict:
    store = new_store()
    results = {}
    for name, flag in WIRE.items():
        report = transfer.recv_blocks(store, src=0, sequence_id=name)
        checks = {"report": {**report.model_dump(mode="json"), "bytes_saved": report.bytes_saved},
                  "exact": [], "max_error": [], "max_error_bound": [], "reference_diff": []}
        for layer in range(LAYERS):
            got = store.gather(name, layer, TOKENS)  # what the receiving store holds, float32
            for which, (x, received) in enumerate(zip(originals(layer), got, strict=True)):
                stored = x.float().half()  # the sender stored fp16
                if flag is None:
                    checks["exact"].append(bool(torch.equal(received, stored.float())))
                    continue
                wire = quantize_kv(stored.float()[None], flag.precision.kv_args()[which])  # kv_quant's reference
                expected = wire.dequantize(torch.float32)[0].half().float()  # dequantized, stored fp16 here
                checks["reference_diff"].append(float((received - expected).abs().max()))
                # against the float64 originals: fp16 storage twice plus half a quantization step
                error = (received.double() - x).abs()
                step = wire.scale[0].double()
                allowed = step / 2 + x.abs() * 2**-10 + 2**-14
                checks["max_error"].append(float(error.max()))
                checks["max_error_bound"].append(bool((error <= allowed).all()))
        results[name] = checks
    results["blocks"] = {name: store.block_table(name) for name in WIRE}
    results["store_stats"] = store.get_stats()
    return results


def main() -> None:
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    comm = TorchDistributedBackend("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                   timeout_s=60)
    result: dict = {"rank": comm.rank, "world_size": comm.world_size, "backend": comm.backend}
    summed = comm.all_reduce(torch.arange(4, dtype=torch.float32) + 10 * rank)
    result["all_reduce_sum"] = summed.tolist()
    result["all_reduce_max"] = comm.all_reduce(torch.tensor([float(rank), -float(rank)]), op="max").tolist()
    result["all_reduce_avg"] = comm.all_reduce(torch.tensor([2.0 * rank]), op="avg").tolist()
    result["all_gather"] = [t.tolist() for t in comm.all_gather(torch.tensor([rank, rank * rank]))]
    message = torch.arange(6, dtype=torch.int32).reshape(2, 3) * 7
    if rank == 0:
        comm.send(message, dst=1)
    else:
        result["recv"] = comm.recv(torch.zeros(2, 3, dtype=torch.int32), src=0).tolist()
    transfer = KVBlockTransfer(comm)
    result["kv"] = sender(transfer) if rank == 0 else receiver(transfer)
    result["stats"] = transfer.get_stats()
    comm.barrier()
    comm.close()
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
