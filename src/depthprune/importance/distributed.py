"""Data-parallel scoring under ``torchrun`` (torch.distributed: gloo on CPU, nccl on CUDA).

Each rank scores a fixed, contiguous share of the calibration *samples* (windows): with N samples and
W processes, the first ``N % W`` ranks get ``N // W + 1`` windows and the others ``N // W``, in order,
so any N >= W works. Each rank batches its own share with the batch size (its last batch may be
smaller). Every metric keeps float64 sums of per-token (or per-sequence) values and their counts, and
those are all-reduced (summed), never averaged, so every rank then holds the scores a single process
would have computed on the same calibration, up to the order of the float64 additions and the
batch-size dependence of the forward's own float arithmetic. Rank 0 writes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from depthprune.io.data import CalibrationSet
from depthprune.errors import DepthpruneError
from depthprune.importance.metrics import AngularDistance, RandomOrder, ReverseOrder, _MeanOverTokens

log = logging.getLogger(__name__)


@dataclass
class DistributedInfo:
    """Who this process is and what each rank scored (recorded in the score report)."""

    world_size: int
    rank: int
    backend: str
    sharding: str = "contiguous samples"
    samples_per_rank: list[int] = field(default_factory=list)
    batches_per_rank: list[int] = field(default_factory=list)  # each rank's own batches of its samples
    tokens_per_rank: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def launched_by_torchrun() -> bool:
    """True inside a multi-process launch (``torchrun`` sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_world_size() -> int:
    """How many processes torchrun started (1 outside a multi-process launch)."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def local_device(device: str) -> str:
    """Under torchrun, ``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``)."""
    if launched_by_torchrun() and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def init(device: str = "cpu") -> DistributedInfo | None:
    """Join the process group torchrun set up (gloo for CPU, nccl for CUDA); None outside torchrun."""
    if not launched_by_torchrun():
        return None
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device == "auto":
        raise DepthpruneError("--device auto (one model over several GPUs) and torchrun (one model per process) "
                              "do not combine: use --device cuda under torchrun")
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(torch.device(local_device(device)))
        dist.init_process_group(backend=backend)
    return DistributedInfo(dist.get_world_size(), dist.get_rank(), dist.get_backend())


def shard_sizes(num_samples: int, world_size: int) -> list[int]:
    """How many calibration samples each rank scores: as even as possible, the remainder to the first ranks."""
    if num_samples < world_size:
        raise DepthpruneError(f"{world_size} processes need at least {world_size} calibration samples (one per "
                              f"process) but the calibration set has {num_samples}: use --samples {world_size} "
                              "or more, or start fewer processes")
    return [num_samples // world_size + (1 if r < num_samples % world_size else 0) for r in range(world_size)]


def shard(calibration: CalibrationSet, rank: int, world_size: int) -> tuple[CalibrationSet, list[int]]:
    """This rank's contiguous run of calibration samples, and how many samples each rank gets."""
    counts = shard_sizes(len(calibration), world_size)
    first = sum(counts[:rank])
    last = first + counts[rank]
    part = CalibrationSet(calibration.input_ids[first:last], calibration.attention_mask[first:last],
                          dict(calibration.settings))
    return part, counts


def _reduce(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    import torch.distributed as dist

    buf = t.to(device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.cpu()


def all_reduce_metrics(metrics: Sequence, device: str = "cpu") -> None:
    """Sum every metric's running sums and counts over all ranks, in place."""
    import torch.distributed as dist

    dev = torch.device(local_device(device) if dist.get_backend() == "nccl" else "cpu")
    for m in metrics:
        if isinstance(m, _MeanOverTokens):
            sums = _reduce(m.sums, dev)
            m._sums = [s.clone() for s in sums]
            m.counts = _reduce(m.counts, dev)
        elif isinstance(m, AngularDistance):
            for n in m.block_sizes:
                m.sums[n] = _reduce(m.sums[n], dev)
                m.counts[n] = _reduce(m.counts[n], dev)
        elif not isinstance(m, (ReverseOrder, RandomOrder)):
            raise DepthpruneError(f"metric '{m.name}' has no data-parallel reduction; score it in one process")


def gather_counts(value: int, device: str = "cpu") -> list[int]:
    """``value`` from every rank, in rank order."""
    import torch.distributed as dist

    dev = torch.device(local_device(device) if dist.get_backend() == "nccl" else "cpu")
    out = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(out, torch.tensor([value], dtype=torch.long, device=dev))
    return [int(t) for t in out]


def is_main_process() -> bool:
    """Rank 0 (or no torchrun): the process that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


__all__ = ["DistributedInfo", "all_reduce_metrics", "gather_counts", "init", "is_main_process",
           "launched_by_torchrun", "launched_world_size", "local_device", "shard", "shard_sizes"]
