"""comm_backend: the collectives accel needs (CommBackendProtocol), a torch.distributed implementation, and KV-block
transfer that quantizes on send and dequantizes on receive.

- CommBackendProtocol (the wider system's name): all_reduce, all_gather, send, recv, get_stats.
- TorchDistributedBackend: torch.distributed with gloo on CPU and nccl on CUDA; it counts calls, bytes and seconds
  per op (bytes: what this rank's call moved: all_reduce and send its tensor, recv what arrived, all_gather the
  world's tensors).
- KVBlockTransfer: moves a sequence's blocks from one PagedKVStore to another over any CommBackendProtocol. The
  sender carries a compression flag (KVCompression: which quantizer, which precision); with it on, every page stored
  at more bytes than the flag's precision is re-quantized with kv_quant (KVPage.requantize -> quantize_kv) before it
  leaves, and a page already at or below it goes as stored. The receiver rebuilds each page from its codes and
  scales, dequantizes it (QuantizedKV.dequantize, x^ = (q - zp) * s) and writes the tokens into new blocks of its
  own store at that store's precision. Three messages:
      header    int64 [2]: metadata bytes, payload bytes
      metadata  uint8 JSON: the flag, the shape, per block its tokens and per page its precision and the dtype,
                shape and byte offset of each tensor (codes, scale, zero point of K and of V)
      payload   uint8: every tensor's bytes, in the metadata's order
  The report says what was sent (payload bytes) beside what the pages occupy in the sender's store (what an
  uncompressed transfer sends), so bytes_saved = uncompressed_bytes - payload_bytes.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from pydantic import Field, field_validator

from accel.integration.kv_runtime.pages import KVPage
from accel.integration.kv_runtime.store import KVCapacityError, PagedKVStore
from accel.integration.kv_runtime.types import KVPrecision, KVTier
from accel.quantization.kv_quant import QuantizedKV
from accel.schema.base import AccelModel

__all__ = [
    "CommBackendProtocol",
    "KVBlockTransfer",
    "KVCompression",
    "KVTransferReport",
    "TorchDistributedBackend",
]

WIRE_VERSION = 1
_REDUCE_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN", "product": "PRODUCT"}


@runtime_checkable
class CommBackendProtocol(Protocol):
    """Collectives and point-to-point messages between the ranks of one group."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def device(self) -> torch.device:
        """Where tensors must be to travel (cuda for nccl, cpu for gloo)."""
        ...

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce `tensor` over all ranks in place (sum, max, min, product, avg) and return it."""
        ...

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `tensor` (same shape on each), in rank order."""
        ...

    def send(self, tensor: torch.Tensor, dst: int) -> None: ...

    def recv(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        """Fill `tensor` (the sender's shape and dtype) from rank `src` and return it."""
        ...

    def get_stats(self) -> dict[str, Any]: ...


class TorchDistributedBackend:
    """CommBackendProtocol over torch.distributed; joins (or creates) the default process group."""

    def __init__(
        self,
        backend: Literal["gloo", "nccl"] | None = None,
        *,
        init_method: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        if not dist.is_initialized():
            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            if backend == "nccl" and not torch.cuda.is_available():
                raise ValueError("backend 'nccl' needs CUDA devices; use 'gloo' on CPU")
            dist.init_process_group(
                backend, init_method=init_method, rank=rank, world_size=world_size,
                timeout=timedelta(seconds=timeout_s),
            )
        self.backend = dist.get_backend()
        if self.backend == "nccl":
            self._device = torch.device("cuda", self.rank % torch.cuda.device_count())
            torch.cuda.set_device(self._device)
        else:
            self._device = torch.device("cpu")
        self._calls: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self._seconds: Counter[str] = Counter()

    @property
    def rank(self) -> int:
        return dist.get_rank()

    @property
    def world_size(self) -> int:
        return dist.get_world_size()

    @property
    def device(self) -> torch.device:
        return self._device

    def _timed(self, op: str, nbytes: int, call: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = call()
        self._seconds[op] += time.perf_counter() - start
        self._calls[op] += 1
        self._bytes[op] += nbytes
        return result

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if op not in (*_REDUCE_OPS, "avg"):
            raise ValueError(f"op must be one of {[*_REDUCE_OPS, 'avg']}, got {op!r}")
        reduce = getattr(dist.ReduceOp, _REDUCE_OPS.get(op, "SUM"))  # avg: a sum, divided below (gloo has no AVG)
        self._timed("all_reduce", tensor.nbytes, lambda: dist.all_reduce(tensor, op=reduce))
        if op == "avg":
            tensor.div_(self.world_size)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._timed("all_gather", tensor.nbytes * self.world_size, lambda: dist.all_gather(out, tensor.contiguous()))
        return out

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self._timed("send", tensor.nbytes, lambda: dist.send(tensor.contiguous(), dst))

    def recv(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        self._timed("recv", tensor.nbytes, lambda: dist.recv(tensor, src))
        return tensor

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        """Leave the process group (every rank calls it)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def get_stats(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "rank": self.rank,
            "world_size": self.world_size,
            "ops": {
                op: {"calls": self._calls[op], "bytes": self._bytes[op], "seconds": self._seconds[op]}
                for op in sorted(self._calls)
            },
        }


class KVCompression(AccelModel):
    """The compression flag a KV-block transfer carries: kv_quant quantizes pages to `precision` on send (per-token
    precisions only: a partial tail block has no channel scales)."""

    enabled: bool = True
    quantizer: Literal["kv_quant"] = "kv_quant"
    precision: KVPrecision = Field(default_factory=lambda: KVPrecision(dtype="int8"))

    @field_validator("precision")
    @classmethod
    def _per_token(cls, value: KVPrecision) -> KVPrecision:
        if not value.token_writable:
            raise ValueError(f"precision {value.name}: compress to a per-token precision (int8, int4, fp8_e4m3)")
        return value

    @property
    def bits(self) -> int:
        return self.precision.bits


class KVTransferReport(AccelModel):
    """One transfer from the sender's or the receiver's side. block_ids are the sender's blocks (sender) or the
    new blocks (receiver); page_precisions counts the pages by the precision they travelled at; uncompressed_bytes
    is what the pages occupy in the sender's store (the sender tells the receiver)."""

    direction: Literal["send", "recv"]
    peer: int
    block_ids: list[int]
    tokens: int
    compression: KVCompression | None
    page_precisions: dict[str, int]
    uncompressed_bytes: int
    payload_bytes: int
    metadata_bytes: int
    seconds: float

    @property
    def wire_bytes(self) -> int:
        return 16 + self.metadata_bytes + self.payload_bytes

    @property
    def bytes_saved(self) -> int:
        return self.uncompressed_bytes - self.payload_bytes


def _tensor_parts(page: KVPage) -> list[tuple[str, torch.Tensor]]:
    named = []
    for stream, stored in (("k", page.keys), ("v", page.values)):
        for part, tensor in (("codes", stored.codes), ("scale", stored.scale), ("zero_point", stored.zero_point)):
            if tensor is not None:
                named.append((f"{stream}.{part}", tensor))
    return named


class KVBlockTransfer:
    """Sends and receives KV blocks between PagedKVStores over a CommBackendProtocol (module docstring)."""

    def __init__(self, comm: CommBackendProtocol) -> None:
        self.comm = comm
        self._totals: Counter[str] = Counter()

    def send_blocks(
        self, store: PagedKVStore, block_ids: list[int], dst: int, compression: KVCompression | None = None
    ) -> KVTransferReport:
        """Send blocks (a sequence's, in position order) to rank `dst`, quantized per `compression` when on."""
        if not block_ids:
            raise ValueError("block_ids is empty; name the blocks to send (e.g. store.block_table(sequence))")
        start = time.perf_counter()
        config = store.config
        flag = compression if compression is not None and compression.enabled else None
        blocks, chunks, offset, uncompressed = [], [], 0, 0
        for index, block_id in enumerate(block_ids):
            pages = store.block_pages(block_id)
            filled = {page.filled for page in pages}
            if len(filled) != 1:
                raise ValueError(f"block {block_id} holds {sorted(filled)} tokens across layers; send complete steps")
            tokens = filled.pop()
            if tokens < config.block_size and index < len(block_ids) - 1:
                raise ValueError(f"block {block_id} holds {tokens} of {config.block_size} tokens but is not the last")
            sent_pages = []
            for page in pages:
                uncompressed += page.nbytes
                smaller = flag is not None and config.page_bytes(flag.precision) < config.page_bytes(page.precision)
                sent = page.requantize(flag.precision) if smaller and flag is not None else page
                parts = []
                for name, tensor in _tensor_parts(sent):
                    raw = tensor.contiguous().view(torch.uint8).flatten()
                    parts.append({"name": name, "dtype": str(tensor.dtype).removeprefix("torch."),
                                  "shape": list(tensor.shape), "offset": offset, "nbytes": raw.numel()})
                    chunks.append(raw)
                    offset += raw.numel()
                sent_pages.append({"precision": sent.precision.name, "parts": parts})
            blocks.append({"source_block": block_id, "tokens": tokens, "pages": sent_pages})
        metadata = {
            "version": WIRE_VERSION,
            "compression": None if flag is None else flag.model_dump(mode="json"),
            "shape": {"num_layers": config.num_layers, "num_kv_heads": config.num_kv_heads,
                      "head_dim": config.head_dim, "block_size": config.block_size},
            "uncompressed_bytes": uncompressed,
            "blocks": blocks,
        }
        meta = torch.tensor(list(json.dumps(metadata).encode()), dtype=torch.uint8)
        payload = torch.cat(chunks)
        device = self.comm.device
        self.comm.send(torch.tensor([meta.numel(), payload.numel()], dtype=torch.int64, device=device), dst)
        self.comm.send(meta.to(device), dst)
        self.comm.send(payload.to(device), dst)
        report = KVTransferReport(
            direction="send",
            peer=dst,
            block_ids=list(block_ids),
            tokens=sum(b["tokens"] for b in blocks),
            compression=flag,
            page_precisions=dict(Counter(p["precision"] for b in blocks for p in b["pages"])),
            uncompressed_bytes=uncompressed,
            payload_bytes=payload.numel(),
            metadata_bytes=meta.numel(),
            seconds=time.perf_counter() - start,
        )
        self._count(report)
        return report

    def recv_blocks(
        self, store: PagedKVStore, src: int, sequence_id: str, tier: KVTier = KVTier.GPU
    ) -> KVTransferReport:
        """Receive blocks from rank `src` into a new sequence of `store`: each page dequantized and its tokens
        written at the sequence's precision (the store's write precision unless set)."""
        if sequence_id in store.sequences():
            raise ValueError(f"sequence {sequence_id!r} already exists in the receiving store; pick a new id")
        start = time.perf_counter()
        device = self.comm.device
        header = self.comm.recv(torch.zeros(2, dtype=torch.int64, device=device), src).tolist()
        meta = self.comm.recv(torch.empty(header[0], dtype=torch.uint8, device=device), src).cpu()
        payload = self.comm.recv(torch.empty(header[1], dtype=torch.uint8, device=device), src).cpu()
        metadata = json.loads(bytes(meta.tolist()).decode())
        if metadata["version"] != WIRE_VERSION:
            raise ValueError(f"KV transfer wire version {metadata['version']}, this accel reads {WIRE_VERSION}")
        config = store.config
        mine = {"num_layers": config.num_layers, "num_kv_heads": config.num_kv_heads, "head_dim": config.head_dim,
                "block_size": config.block_size}
        if metadata["shape"] != mine:
            raise ValueError(f"the sender's KV shape {metadata['shape']} differs from the receiving store's {mine}")
        blocks = metadata["blocks"]
        total = sum(block["tokens"] for block in blocks)
        allocation = store.allocate_for_sequence(sequence_id, total, tier)
        if not allocation.success:
            raise KVCapacityError(f"receiving {len(blocks)} blocks: {allocation.error_message}")
        table = store.block_table(sequence_id)
        for block_id, block in zip(table, blocks, strict=True):
            for layer, sent in enumerate(block["pages"]):
                page = self._page(sent, payload, block["tokens"])
                k, v = page.dequantize()
                store.write(block_id, layer, 0, k, v)
        compression = metadata["compression"]
        report = KVTransferReport(
            direction="recv",
            peer=src,
            block_ids=table,
            tokens=total,
            compression=None if compression is None else KVCompression.model_validate(compression),
            page_precisions=dict(Counter(p["precision"] for b in blocks for p in b["pages"])),
            uncompressed_bytes=metadata["uncompressed_bytes"],
            payload_bytes=payload.numel(),
            metadata_bytes=meta.numel(),
            seconds=time.perf_counter() - start,
        )
        self._count(report)
        return report

    @staticmethod
    def _page(sent: dict[str, Any], payload: torch.Tensor, tokens: int) -> KVPage:
        """A page rebuilt from its tensors' bytes in the payload."""
        precision = KVPrecision.from_name(sent["precision"])
        tensors = {
            part["name"]: payload[part["offset"] : part["offset"] + part["nbytes"]]
            .clone()  # its own storage, aligned for the element size
            .view(getattr(torch, part["dtype"]))
            .reshape(part["shape"])
            for part in sent["parts"]
        }
        args = precision.kv_args()
        streams = [
            QuantizedKV(
                codes=tensors[f"{stream}.codes"],
                scale=tensors.get(f"{stream}.scale"),
                zero_point=tensors.get(f"{stream}.zero_point"),
                args=args[which],
            )
            for which, stream in enumerate(("k", "v"))
        ]
        return KVPage(precision, streams[0], streams[1], filled=tokens)

    def _count(self, report: KVTransferReport) -> None:
        side = report.direction
        self._totals[f"{side}_transfers"] += 1
        self._totals[f"{side}_blocks"] += len(report.block_ids)
        self._totals[f"{side}_payload_bytes"] += report.payload_bytes
        self._totals[f"{side}_wire_bytes"] += report.wire_bytes
        if side == "send":
            self._totals["send_uncompressed_bytes"] += report.uncompressed_bytes
            self._totals["send_bytes_saved"] += report.bytes_saved

    def get_stats(self) -> dict[str, Any]:
        """Transfer totals beside the comm backend's own op counts."""
        return {"kv_transfer": dict(self._totals), "comm": self.comm.get_stats()}
