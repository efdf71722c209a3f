"""Streaming layer-importance metrics.

A metric sees each decoder layer's raw input and output hidden states for one
batch, with the mask of real (non-pad) tokens, and keeps only running sums:
nothing of size batch x tokens survives the call. ``result()`` returns one
score per layer (0-based, original numbering). Higher score = more important.
All accumulation is in float64 on the CPU after a float32 cast, so bf16/fp16
models give the same scores as float32 ones up to the activations' precision.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from depthprune.errors import DepthpruneError


class LayerMetric(Protocol):
    """The interface every streaming metric implements."""

    name: str

    def update(self, layer: int, x_in: torch.Tensor, x_out: torch.Tensor, mask: torch.Tensor) -> None:
        """Add one batch: ``x_in``/``x_out`` are (B, T, d), ``mask`` is (B, T) bool of real tokens."""

    def result(self) -> torch.Tensor:
        """One float score per layer, higher = more important."""


class _MeanOverTokens:
    """Running mean of a per-token quantity, per layer, over real tokens only."""

    name = "mean"

    def __init__(self, num_layers: int):
        # Per-layer running sums stay on the activations' device (no host sync per layer);
        # float64 except on MPS, which has none.
        self._sums: list[torch.Tensor | None] = [None] * num_layers
        self.counts = torch.zeros(num_layers, dtype=torch.long)

    @property
    def sums(self) -> torch.Tensor:
        return torch.tensor([0.0 if s is None else float(s) for s in self._sums], dtype=torch.float64)

    def per_token(self, x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, layer: int, x_in: torch.Tensor, x_out: torch.Tensor, mask: torch.Tensor) -> None:
        mask = mask.to(x_in.device, torch.bool)
        n = int(mask.sum())
        if n == mask.numel():  # no padding in this batch: skip the gather copy
            a, b = x_in.reshape(-1, x_in.shape[-1]), x_out.reshape(-1, x_out.shape[-1])
        else:
            a, b = x_in[mask], x_out[mask]
        if a.dtype != torch.float32:
            a, b = a.float(), b.float()
        acc = torch.float32 if a.device.type == "mps" else torch.float64
        total = self.per_token(a, b).sum(dtype=acc)
        previous = self._sums[layer]
        self._sums[layer] = total if previous is None else previous + total.to(previous.device)
        self.counts[layer] += n

    def means(self) -> torch.Tensor:
        if bool((self.counts == 0).any()):
            missing = int((self.counts == 0).nonzero()[0])
            raise RuntimeError(f"layer {missing} saw no tokens; was the model run with the hooks attached?")
        return self.sums / self.counts


class BlockInfluence(_MeanOverTokens):
    """ShortGPT's Block Influence: BI_i = 1 - mean_t cos(x_i,t, x_{i+1},t)."""

    name = "bi"

    def per_token(self, x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(x_in, x_out, dim=-1, eps=1e-8)

    def result(self) -> torch.Tensor:
        return 1.0 - self.means()


class RelativeMagnitude(_MeanOverTokens):
    """ShortGPT's Relative Magnitude: mean_t ||f(x)|| / ||x + f(x)|| with f(x) = output - input.

    A layer that adds little to the residual stream scores low (less important).
    """

    name = "relative-magnitude"

    def per_token(self, x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
        return (x_out - x_in).norm(dim=-1) / x_out.norm(dim=-1).clamp_min(1e-12)

    def result(self) -> torch.Tensor:
        return self.means()


class ReverseOrder:
    """Baseline: the last layer is the least important, then the one before it, ... (needs no data)."""

    name = "reverse-order"

    def __init__(self, num_layers: int):
        self.num_layers = num_layers

    def update(self, layer: int, x_in: torch.Tensor, x_out: torch.Tensor, mask: torch.Tensor) -> None:
        pass

    def result(self) -> torch.Tensor:
        # score L-1-i: the last layer scores 0 (removed first), layer 0 scores highest.
        return (self.num_layers - 1) - torch.arange(self.num_layers, dtype=torch.float64)


class RandomOrder:
    """Baseline: a seeded random permutation of the layers as scores (needs no data)."""

    name = "random"

    def __init__(self, num_layers: int, seed: int = 0):
        self.num_layers = num_layers
        self.seed = seed

    def update(self, layer: int, x_in: torch.Tensor, x_out: torch.Tensor, mask: torch.Tensor) -> None:
        pass

    def result(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.randperm(self.num_layers, generator=g).to(torch.float64)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real token of each row of a (B, T) mask (works for left and right padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise arccos(cos(a, b)) / pi in [0, 1], cosine clamped to [-1, 1] first."""
    cos = F.cosine_similarity(a, b, dim=-1, eps=1e-8).clamp(-1.0, 1.0)
    return torch.arccos(cos) / math.pi


class AngularDistance:
    """Gromov et al. (2024): angular distance between the input of layer ``s`` and the output of
    layer ``s + n - 1`` (a contiguous block of ``n`` layers), for every start ``s`` and each asked ``n``.

    ``tokens="last"`` (the paper's choice, metric ``angular``) uses each sequence's last real token
    and averages over sequences; ``tokens="all"`` (metric ``angular-all``) averages over every real
    token. Streaming: within a batch it keeps the (reduced) inputs of the last ``max(n)`` layers only,
    nothing survives a batch but running sums. ``result()`` is the per-layer (n = 1) distance, higher
    = more important; :meth:`block_result` gives every asked block size.
    """

    def __init__(self, num_layers: int, block_sizes: Sequence[int] = (1,), tokens: str = "last"):
        if tokens not in ("last", "all"):
            raise ValueError("tokens must be 'last' or 'all'")
        sizes = sorted({int(n) for n in block_sizes} | {1})
        if sizes[0] < 1 or sizes[-1] > num_layers:
            raise DepthpruneError(f"angular block sizes must be between 1 and {num_layers} for a "
                                  f"{num_layers}-layer model, got {sizes[0] if sizes[0] < 1 else sizes[-1]}")
        self.name = "angular" if tokens == "last" else "angular-all"
        self.num_layers = num_layers
        self.tokens = tokens
        self.block_sizes = sizes
        self.sums = {n: torch.zeros(num_layers - n + 1, dtype=torch.float64) for n in sizes}
        self.counts = {n: torch.zeros(num_layers - n + 1, dtype=torch.long) for n in sizes}
        self._inputs: dict[int, torch.Tensor] = {}

    def _reduce(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.tokens == "all":
            return x[mask].float()
        last = last_token_index(mask)
        rows = torch.arange(x.shape[0], device=x.device)[last >= 0]
        return x[rows, last[last >= 0]].float()

    def update(self, layer: int, x_in: torch.Tensor, x_out: torch.Tensor, mask: torch.Tensor) -> None:
        mask = mask.to(x_in.device, torch.bool)
        if layer == 0:
            self._inputs.clear()
        self._inputs[layer] = self._reduce(x_in, mask)
        out = self._reduce(x_out, mask)
        for n in self.block_sizes:
            start = layer - n + 1
            if start < 0 or start not in self._inputs:
                continue
            d = angular_distance(self._inputs[start], out)
            self.sums[n][start] += d.sum(dtype=torch.float64).cpu()
            self.counts[n][start] += d.numel()
        oldest_needed = layer + 2 - self.block_sizes[-1]
        for key in [k for k in self._inputs if k < oldest_needed]:
            del self._inputs[key]
        if layer == self.num_layers - 1:
            self._inputs.clear()

    def block_result(self) -> dict[int, list[float]]:
        """{n: [distance of the block starting at s, for s = 0 .. L - n]} (0-based start layers)."""
        out = {}
        for n in self.block_sizes:
            if bool((self.counts[n] == 0).any()):
                raise RuntimeError("angular distance saw no tokens; was the model run with the hooks attached?")
            out[n] = [float(v) for v in self.sums[n] / self.counts[n]]
        return out

    def result(self) -> torch.Tensor:
        return torch.tensor(self.block_result()[1], dtype=torch.float64)


STREAMING_METRICS = {
    "bi": BlockInfluence,
    "angular": lambda n, **kw: AngularDistance(n, tokens="last", **kw),
    "angular-all": lambda n, **kw: AngularDistance(n, tokens="all", **kw),
    "relative-magnitude": RelativeMagnitude,
    "reverse-order": ReverseOrder,
    "random": RandomOrder,
}
# Metrics that need more than one pass (see :mod:`depthprune.loss_metrics`).
LOSS_METRICS = ("ppl", "taylor")
ALL_METRICS = tuple(STREAMING_METRICS) + LOSS_METRICS


def check_metric(name: str) -> str:
    if name not in ALL_METRICS:
        raise DepthpruneError(f"unknown metric '{name}': choose one of {', '.join(ALL_METRICS)}")
    return name


def make_metric(name: str, num_layers: int, *, seed: int = 0, block_sizes: Sequence[int] = (1,)) -> LayerMetric:
    """A streaming metric by name (``seed`` for ``random``, ``block_sizes`` for the angular ones)."""
    if name not in STREAMING_METRICS:
        if name in LOSS_METRICS:
            raise DepthpruneError(f"metric '{name}' needs its own passes over the data, not the streaming hooks")
        check_metric(name)
    if name == "random":
        return RandomOrder(num_layers, seed=seed)
    if name.startswith("angular"):
        return STREAMING_METRICS[name](num_layers, block_sizes=block_sizes)
    return STREAMING_METRICS[name](num_layers)
