"""comm_backend with two real processes over gloo on localhost: collectives and send/recv, then KV blocks sent
uncompressed, as int8 and as int4 (quantized by kv_quant on send, dequantized on receive) and checked against the
float64 originals and kv_quant's reference, with the bytes saved counted exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from accel.integration.comm_backend import CommBackendProtocol, KVCompression, TorchDistributedBackend
from accel.integration.kv_runtime import KVPrecision

WORKER = Path(__file__).with_name("comm_worker.py")
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
PAGES = 3 * 2  # 40 tokens in 16-token blocks, 2 layers
PAGE_BYTES = {"fp16": 12288, "int8": 6528, "int4": 3840}  # 3 KV heads, head_dim 64, 16 tokens, fp32 scales


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Run the two ranks as separate processes; their JSON results, rank order."""
    out = tmp_path_factory.mktemp("comm")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen([sys.executable, str(WORKER), str(rank), "2", str(port), str(out)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]
    logs = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=TIMEOUT_S)
            logs.append(output)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for rank, (process, log) in enumerate(zip(processes, logs, strict=True)):
        assert process.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_collectives_and_point_to_point(ranks: list[dict]) -> None:
    for rank in ranks:
        assert rank["backend"] == "gloo" and rank["world_size"] == 2
        assert rank["all_reduce_sum"] == [10.0, 12.0, 14.0, 16.0]  # arange(4) + arange(4) + 10
        assert rank["all_reduce_max"] == [1.0, 0.0]
        assert rank["all_reduce_avg"] == [1.0]  # (0 + 2) / 2
        assert rank["all_gather"] == [[0, 0], [1, 1]]
    assert ranks[1]["recv"] == [[0, 7, 14], [21, 28, 35]]
    ops = ranks[0]["stats"]["comm"]["ops"]
    assert ops["all_reduce"]["calls"] == 3 and ops["all_gather"]["bytes"] == 2 * 16


def test_kv_blocks_arrive_within_their_quantization_error(ranks: list[dict]) -> None:
    received = ranks[1]["kv"]
    assert all(received["plain"]["exact"]) and len(received["plain"]["exact"]) == 4  # 2 layers x (K, V)
    for name in ("int8", "int4"):
        checks = received[name]
        # the same codes and scales as kv_quant's own quantization of the sender's fp16 K/V
        assert max(checks["reference_diff"]) == 0.0, (name, checks["reference_diff"])
        assert all(checks["max_error_bound"]), (name, checks["max_error"])
        assert min(checks["max_error"]) > 0  # it really travelled quantized
    assert max(received["int4"]["max_error"]) > max(received["int8"]["max_error"])
    tables = received["blocks"]
    assert [len(tables[n]) for n in ("plain", "int8", "int4")] == [3, 3, 3]
    assert received["store_stats"]["tiers"]["gpu"]["pages_by_precision"] == {"fp16": 3 * PAGES}


def test_bytes_saved_are_counted_exactly(ranks: list[dict]) -> None:
    sent, received = ranks[0]["kv"], ranks[1]["kv"]
    uncompressed = PAGES * PAGE_BYTES["fp16"]
    for name in ("plain", "int8", "int4"):
        report = sent[name]
        payload = PAGES * PAGE_BYTES["fp16" if name == "plain" else name]
        assert report["uncompressed_bytes"] == uncompressed and report["payload_bytes"] == payload
        assert report["bytes_saved"] == uncompressed - payload
        assert report["page_precisions"] == {"fp16" if name == "plain" else name: PAGES}
        assert report["tokens"] == 40 and report["block_ids"] == [0, 1, 2]
        assert received[name]["report"]["payload_bytes"] == payload
        assert received[name]["report"]["uncompressed_bytes"] == uncompressed
    assert sent["int8"]["compression"] == {"enabled": True, "quantizer": "kv_quant",
                                           "precision": {"dtype": "int8", "granularity": "per_token"}}
    assert sent["int8"]["bytes_saved"] == 34560 and sent["int4"]["bytes_saved"] == 50688  # 47% and 69% saved
    # what rank 0 sent is what rank 1 received, byte for byte, messages included
    send_ops, recv_ops = ranks[0]["stats"]["comm"]["ops"]["send"], ranks[1]["stats"]["comm"]["ops"]["recv"]
    assert send_ops["bytes"] == recv_ops["bytes"] == 24 + sum(sent[n]["wire_bytes"] for n in sent)
    totals = ranks[0]["stats"]["kv_transfer"]
    assert totals["send_bytes_saved"] == 34560 + 50688 and totals["send_blocks"] == 9


def test_backend_is_a_comm_backend_and_flags_validate() -> None:
    comm = TorchDistributedBackend("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        assert isinstance(comm, CommBackendProtocol)
        assert comm.all_reduce(torch.tensor([3.0]), op="product").tolist() == [3.0]
        with pytest.raises(ValueError, match="op must be one of"):
            comm.all_reduce(torch.tensor([1.0]), op="mean")
        assert comm.get_stats()["ops"]["all_reduce"]["calls"] == 1
    finally:
        comm.close()
    assert KVCompression().bits == 8 and KVCompression(precision=KVPrecision(dtype="int4")).bits == 4
    with pytest.raises(ValueError, match="compress to a per-token precision"):
        KVCompression(precision=KVPrecision(dtype="int4", granularity="kivi"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a CPU-only machine gives")
def test_nccl_without_cuda_names_the_fix() -> None:
    with pytest.raises(ValueError, match="backend 'nccl' needs CUDA devices; use 'gloo' on CPU"):
        TorchDistributedBackend("nccl")
