"""Streaming layer-importance metrics.

A metric sees each decoder layer's raw input and output hidden states for one
batch, with the mask of real (non-pad) tokens, and keeps only running sums:
nothing of size batch x tokens survives the call. ``result()`` returns one
score per layer (0-based, original numbering). Higher score = more important.
All accumulation is in float64 on the CPU after a float32 cast, so bf16/fp16
models give the same scores as float32 ones up to the activations' precision.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


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


STREAMING_METRICS = {"bi": BlockInfluence}


def make_metric(name: str, num_layers: int) -> LayerMetric:
    from .errors import DepthpruneError

    try:
        return STREAMING_METRICS[name](num_layers)
    except KeyError:
        raise DepthpruneError(
            f"unknown metric '{name}': choose one of {', '.join(sorted(STREAMING_METRICS))}"
        ) from None
