"""Layer importance from the language-model loss: metrics that need more than one pass.

* ``ppl``: calibration perplexity with each single layer skipped (Shortened LLaMA's PPL
  criterion; higher = removing the layer hurts more = more important).
* ``taylor``: first-order Taylor importance ``sum_k |w_k * dL/dw_k|`` over each layer's weights,
  with ``L`` the mean next-token loss over every real calibration token (pads masked), the
  gradient accumulated over all batches before taking the absolute value.
* :func:`greedy_ppl`: SLEB-style greedy removal, one layer per step, each step removing the layer
  whose removal raises calibration loss least.

Skipping layers never reloads or copies the model. :class:`CachedLayerRunner` runs the model once
per calibration batch and keeps the hidden state entering every decoder layer together with the
exact positional/keyword arguments each layer was called with (captured by a forward pre-hook, so
rotary position embeddings, per-layer-type masks and the like are reused as the model built them;
the KV cache is off). A candidate removal then re-runs only the layers after the candidate, calling
the layer modules directly; the final norm, LM head and any logit soft-capping are run by the model's
own forward with every decoder layer stubbed out to hand back the given hidden state.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from depthprune.arch.layout import layout
from depthprune.io.data import CalibrationSet
from depthprune.errors import DepthpruneError
from depthprune.importance.scoring import _first_tensor
from depthprune.arch.layout import input_device
from depthprune.evaluation.perplexity import perplexity_on

log = logging.getLogger(__name__)


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-token NLL over real targets (as in perplexity) and their count; row by row to bound memory."""
    keep = mask[:, 1:].bool() & mask[:, :-1].bool()
    total = logits.new_zeros((), dtype=torch.float32)
    for row in range(logits.shape[0]):
        k = keep[row]
        if bool(k.any()):
            total = total + F.cross_entropy(logits[row, :-1][k].float(), input_ids[row, 1:][k], reduction="sum")
    return total, int(keep.sum())


@dataclass
class _LayerCall:
    args: tuple            # positional arguments after the hidden states
    kwargs: dict           # keyword arguments (without the hidden states)
    hidden_positional: bool
    output_tail: tuple | None  # extra tuple entries of the layer output, None if it returns a tensor


@dataclass
class LayerCapture:
    """What the pre-/post-hooks of :func:`capture_layer_calls` saw during one forward pass."""

    inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # hidden state entering layer j
    calls: dict[int, _LayerCall] = field(default_factory=dict)     # everything else layer j was called with
    final: dict[str, torch.Tensor] = field(default_factory=dict)   # "h": the last layer's output

    def clear(self) -> None:
        self.inputs.clear(), self.calls.clear(), self.final.clear()


@contextlib.contextmanager
def capture_layer_calls(layers: nn.ModuleList) -> Iterator[LayerCapture]:
    """Hooks that record, for every decoder layer, its input and the exact other arguments the model's own
    forward called it with (rotary embeddings, per-layer-type masks, position ids; KV cache off).

    The one capture mechanism behind the greedy-ppl activation cache and layer-streamed scoring
    (:mod:`depthprune.scale.streamed`), so a layer re-run outside the model gets what the model gives it.
    """
    state = LayerCapture()
    last = len(layers) - 1

    def pre_hook(index):
        def hook(module, args, kwargs):
            if args:
                x, rest, positional = args[0], tuple(args[1:]), True
            else:
                x, rest, positional = kwargs["hidden_states"], (), False
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            if kw.get("use_cache"):
                kw["use_cache"] = False
            state.inputs[index] = x
            state.calls[index] = _LayerCall(rest, kw, positional, None)
        return hook

    def post_hook(index):
        def hook(module, args, kwargs, output):
            if isinstance(output, tuple):
                state.calls[index].output_tail = tuple(output[1:])
            if index == last:
                state.final["h"] = _first_tensor(output)
        return hook

    handles = [layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles += [layer.register_forward_hook(post_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        yield state
    finally:
        for h in handles:
            h.remove()


def call_layer(layer: nn.Module, call: _LayerCall, h: torch.Tensor) -> torch.Tensor:
    """Run ``layer`` on hidden state ``h`` with the arguments captured for it; its output hidden state."""
    out = layer(h, *call.args, **call.kwargs) if call.hidden_positional else layer(hidden_states=h, **call.kwargs)
    return _first_tensor(out)


@dataclass
class _Batch:
    input_ids: torch.Tensor
    mask: torch.Tensor
    inputs: list[torch.Tensor]       # inputs[j]: hidden state entering layer j under the current removals
    calls: list[_LayerCall]
    final: torch.Tensor | None = None


@dataclass
class CachedLayerRunner:
    """The calibration set run once, with what each layer saw, so that removals re-run only the layers after them."""

    model: nn.Module
    calibration: CalibrationSet
    batch_size: int = 8
    progress: bool = True
    removed: list[int] = field(default_factory=list)
    layer_runs: int = 0   # decoder-layer calls made after the capture pass (for the cost benchmark)
    tail_runs: int = 0

    def __post_init__(self) -> None:
        self.layers = layout(self.model).layers(self.model)
        self.num_layers = len(self.layers)
        self.device = input_device(self.model)
        self.batches: list[_Batch] = []
        self.targets = 0
        self._capture()

    def _capture(self) -> None:
        with capture_layer_calls(self.layers) as seen, torch.inference_mode():
            for ids, mask in tqdm(self.calibration.batches(self.batch_size),
                                  total=self.calibration.num_batches(self.batch_size), desc="caching layer inputs",
                                  disable=not self.progress, unit="batch"):
                ids, mask = ids.to(self.device), mask.to(self.device)
                seen.clear()
                self.model(input_ids=ids, attention_mask=mask, use_cache=False)
                if len(seen.inputs) != self.num_layers:
                    raise RuntimeError("the forward pass did not call every decoder layer")
                self.batches.append(_Batch(ids, mask, [seen.inputs[j] for j in range(self.num_layers)],
                                           [seen.calls[j] for j in range(self.num_layers)], seen.final["h"]))
                self.targets += int((mask[:, 1:].bool() & mask[:, :-1].bool()).sum())
        if self.targets == 0:
            raise DepthpruneError("the calibration set has no next-token targets; use longer sequences")

    # -- running pieces ---------------------------------------------------------------------------

    def run_layer(self, batch: _Batch, j: int, h: torch.Tensor) -> torch.Tensor:
        self.layer_runs += 1
        return call_layer(self.layers[j], batch.calls[j], h)

    @contextlib.contextmanager
    def _stubbed_layers(self, batch: _Batch, h: torch.Tensor) -> Iterator[None]:
        """Every decoder layer hands back ``h`` (in its own output structure) without computing anything."""
        saved = []
        for j, layer in enumerate(self.layers):
            tail = batch.calls[j].output_tail

            def stub(*args, _tail=tail, **kwargs):
                return h if _tail is None else (h, *_tail)

            saved.append((layer, layer.__dict__.get("forward")))
            layer.forward = stub
        try:
            yield
        finally:
            for layer, previous in saved:
                if previous is None:
                    del layer.forward
                else:
                    layer.forward = previous

    def tail_nll(self, batch: _Batch, h: torch.Tensor) -> float:
        """Summed next-token NLL when ``h`` is the last decoder layer's output (final norm, head run by the model)."""
        with self._stubbed_layers(batch, h):
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.mask, use_cache=False).logits
        self.tail_runs += 1
        return float(next_token_nll(logits, batch.input_ids, batch.mask)[0])

    def loss_without(self, candidate: int | None) -> float:
        """Mean calibration NLL with the committed removals plus ``candidate`` skipped (None: only the committed)."""
        gone = set(self.removed) | ({candidate} if candidate is not None else set())
        start = candidate if candidate is not None else self.num_layers
        return self._loss_from(start, gone)

    def loss_from(self, start: int) -> float:
        """Mean calibration NLL re-running layers ``start``.. as the model is now (committed removals skipped),
        from the cached input of layer ``start``: a change made inside layer ``start`` or later (e.g. masked
        attention heads) is measured without re-running the layers before it."""
        if not 0 <= start < self.num_layers:
            raise ValueError(f"start layer {start} is out of range 0..{self.num_layers - 1}")
        return self._loss_from(start, set(self.removed))

    def _loss_from(self, start: int, gone: set[int]) -> float:
        total = 0.0
        with torch.inference_mode():
            for batch in self.batches:
                h = batch.inputs[start] if start < self.num_layers else batch.final
                for j in range(start, self.num_layers):
                    if j not in gone:
                        h = self.run_layer(batch, j, h)
                total += self.tail_nll(batch, h)
        return total / self.targets

    def commit(self, layer: int) -> None:
        """Remove ``layer`` for good: refresh the cached inputs of every layer after it."""
        if layer in self.removed:
            return
        self.removed.append(layer)
        gone = set(self.removed)
        with torch.inference_mode():
            for batch in self.batches:
                h = batch.inputs[layer]
                for j in range(layer + 1, self.num_layers):
                    batch.inputs[j] = h
                    if j not in gone:
                        h = self.run_layer(batch, j, h)
                batch.final = h


def ppl_scores(model: nn.Module, calibration: CalibrationSet, *, batch_size: int = 8, progress: bool = True,
               runner: CachedLayerRunner | None = None) -> list[float]:
    """Calibration perplexity with each single layer skipped (one-shot ranking; higher = more important)."""
    runner = runner or CachedLayerRunner(model, calibration, batch_size=batch_size, progress=progress)
    scores = []
    for c in tqdm(range(runner.num_layers), desc="ppl: skipping each layer", disable=not progress, unit="layer"):
        scores.append(math.exp(runner.loss_without(c)))
    return scores


def taylor_scores(model: nn.Module, calibration: CalibrationSet, *, batch_size: int = 8,
                  progress: bool = True) -> list[float]:
    """First-order Taylor importance per layer: sum over its weights of |w * dL/dw| (float32 accumulation)."""
    layers = layout(model).layers(model)
    device = input_device(model)
    params = list(model.parameters())
    saved_flags = [p.requires_grad for p in params]
    saved_grads = [p.grad for p in params]
    layer_params = [list(layer.parameters()) for layer in layers]
    in_layers = {id(p) for ps in layer_params for p in ps}
    targets = int((calibration.attention_mask[:, 1:].bool() & calibration.attention_mask[:, :-1].bool()).sum())
    if targets == 0:
        raise DepthpruneError("the calibration set has no next-token targets; use longer sequences")
    try:
        for p in params:
            p.requires_grad_(id(p) in in_layers)
            p.grad = None
        with torch.enable_grad():
            for ids, mask in tqdm(calibration.batches(batch_size), total=calibration.num_batches(batch_size),
                                  desc="taylor: backward", disable=not progress, unit="batch"):
                ids, mask = ids.to(device), mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                nll, _ = next_token_nll(logits, ids, mask)
                (nll / targets).backward()
        scores = []
        for ps in layer_params:
            total = torch.zeros((), dtype=torch.float64)
            for p in ps:
                if p.grad is not None:
                    total += (p.detach().float() * p.grad.float()).abs().sum(dtype=torch.float64).cpu()
            scores.append(float(total))
        return scores
    finally:
        for p, flag, grad in zip(params, saved_flags, saved_grads):
            p.grad = grad
            p.requires_grad_(flag)


def naive_loss(model: nn.Module, calibration: CalibrationSet, *, batch_size: int = 8) -> float:
    """Mean next-token NLL of a full forward pass over the calibration set (reference/benchmark path)."""
    return perplexity_on(model, calibration, batch_size=batch_size, progress=False).nll


__all__ = ["CachedLayerRunner", "LayerCapture", "call_layer", "capture_layer_calls", "naive_loss", "next_token_nll", "ppl_scores",
           "taylor_scores"]
