"""One forward pass with hooks on every decoder layer, feeding streaming metrics.

The hooks read each layer's raw input and output (not ``output_hidden_states``,
whose last entry is taken after the final norm), hand them to the metrics, and
stop the forward pass right after the last layer: the final norm and the LM
head are never computed. Only the metrics' running sums outlive a batch.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from depthprune.arch.layout import input_device, layout
from depthprune.io.data import CalibrationSet
from depthprune.errors import NonFiniteActivationError
from depthprune.importance.metrics import LayerMetric, make_metric

log = logging.getLogger(__name__)


class _StopAfterLastLayer(Exception):
    """Raised by the last layer's hook to skip the final norm and LM head."""


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    raise TypeError(f"cannot find the hidden states in a layer output of type {type(output).__name__}")


def run_layer_metrics(
    model: nn.Module,
    calibration: CalibrationSet,
    metrics: Sequence[LayerMetric],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> int:
    """Run ``calibration`` through ``model`` once, feeding every layer's input/output to ``metrics``.

    Returns the number of real (non-pad) tokens seen. Raises
    :class:`NonFiniteActivationError` naming the layer and dtype if a layer
    output holds NaN or inf.
    """
    layers = layout(model).layers(model)
    last = len(layers) - 1
    state: dict = {}

    def make_hook(index: int):
        def hook(module, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = _first_tensor(output)
            if x_in.device != x_out.device:
                # device_map="auto": accelerate moves the input inside the layer's forward, so the hook sees it
                # on the previous layer's device; only layers at a device boundary pay this one copy
                x_in = x_in.to(x_out.device)
            masks = state["masks"]
            if x_out.device not in masks:  # one copy of the batch mask per device, not one per layer
                masks[x_out.device] = state["mask"].to(x_out.device)
            mask = masks[x_out.device]
            # One float32 reduction: NaN/inf anywhere makes it non-finite (cheaper than isfinite().all()).
            if not bool(torch.isfinite(x_out.sum(dtype=torch.float32))):
                raise NonFiniteActivationError(
                    f"layer {index} produced NaN or inf activations in {x_out.dtype}; "
                    "try --dtype float32 (or bfloat16 instead of float16)"
                )
            for metric in metrics:
                metric.update(index, x_in, x_out, mask)
            if index == last:
                raise _StopAfterLastLayer
        return hook

    handles = [layer.register_forward_hook(make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    device = input_device(model)
    tokens = 0
    try:
        with torch.inference_mode():
            batches = calibration.batches(batch_size)
            for input_ids, attention_mask in tqdm(batches, total=calibration.num_batches(batch_size),
                                                  desc="scoring layers", disable=not progress, unit="batch"):
                state["mask"] = attention_mask.bool()
                state["masks"] = {}
                tokens += int(attention_mask.sum())
                try:
                    model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
                except _StopAfterLastLayer:
                    pass
                else:  # pragma: no cover - only if a model bypasses its layer modules
                    raise RuntimeError("the forward pass finished without reaching the last decoder layer")
    finally:
        for handle in handles:
            handle.remove()
    return tokens


def layer_scores(model: nn.Module, calibration: CalibrationSet, metric_names: Iterable[str],
                 *, batch_size: int = 8, progress: bool = True) -> tuple[dict[str, list[float]], int]:
    """Scores per layer for each named streaming metric, all from one pass."""
    n = len(layout(model).layers(model))
    metrics = [make_metric(name, n) for name in metric_names]
    tokens = run_layer_metrics(model, calibration, metrics, batch_size=batch_size, progress=progress)
    return {m.name: [float(v) for v in m.result()] for m in metrics}, tokens
