"""Folding a linear map on a layer's MLP output into that layer's weights, exactly.

Row-vector convention: the map sends the MLP output ``m`` (shape ``(..., d)``) to ``m @ T``.

* ``nn.Linear`` (``y = z W^T + b``, ``W`` is ``(d, k)``): ``W' = T^T W``, ``b' = T^T b``.
* GPT-2 ``Conv1D`` (``y = z W + b``, ``W`` is ``(k, d)``): ``W' = W T``, ``b' = b T``.
* fused expert tensors (``(E, d, k)`` used as ``F.linear(z, W[e])``): ``W'[e] = T^T W[e]`` for every expert.
* a norm scale (``y = n(z) * (offset + w)``) with a diagonal ``T = diag(t)``: ``w' = (offset + w) * t - offset``.

Arithmetic is float64; the result is cast back to the parameter's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from depthprune.errors import DepthpruneError
from depthprune.repair.families import FoldSpec
from depthprune.arch.layout import get_path




def projections(layer: nn.Module, spec: FoldSpec) -> list[tuple[str, object]]:
    """The (path, module-or-parameter) pairs that carry the map in ``layer``; optional ones may be missing."""
    found = []
    for path in spec.projections:
        optional = path.endswith("?")
        path = path.rstrip("?")
        obj = get_path(layer, path)
        if obj is None:
            if optional:
                continue
            raise DepthpruneError(f"cannot fold the repair map: this layer has no '{path}' "
                                  "(an unexpected variant of its family); use --repair lora")
        found.append((path, obj))
    return found


def capture_module(layer: nn.Module, spec: FoldSpec) -> nn.Module:
    module = get_path(layer, spec.capture)
    if not isinstance(module, nn.Module):
        raise DepthpruneError(f"cannot repair: this layer has no '{spec.capture}' module to read the MLP output from")
    return module


@torch.no_grad()
def _fold_full(obj, T: torch.Tensor) -> None:
    if isinstance(obj, nn.Parameter) and obj.dim() == 3:          # fused experts (E, d, k)
        w = obj.data.double()
        obj.data.copy_((T.t().to(w.device) @ w).to(obj.dtype))
        return
    if isinstance(obj, nn.Linear):
        w = obj.weight.data.double()
        Tt = T.t().to(w.device)
        obj.weight.data.copy_((Tt @ w).to(obj.weight.dtype))
        if obj.bias is not None:
            obj.bias.data.copy_((Tt @ obj.bias.data.double()).to(obj.bias.dtype))
        return
    if type(obj).__name__ == "Conv1D":                              # transformers' GPT-2 Conv1D: weight (in, out)
        w = obj.weight.data.double()
        T = T.to(w.device)
        obj.weight.data.copy_((w @ T).to(obj.weight.dtype))
        if obj.bias is not None:
            obj.bias.data.copy_((obj.bias.data.double() @ T).to(obj.bias.dtype))
        return
    raise DepthpruneError(f"cannot fold a repair map into a {type(obj).__name__}; use --repair lora")


@torch.no_grad()
def _fold_diagonal(norm: nn.Module, t: torch.Tensor, offset: float) -> None:
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or getattr(norm, "bias", None) is not None:
        raise DepthpruneError(f"cannot fold a diagonal repair map into a {type(norm).__name__} "
                              "without a plain scale vector; use --repair lora")
    w = weight.data.double()
    weight.data.copy_(((offset + w) * t.to(w.device) - offset).to(weight.dtype))


def fold_map(layer: nn.Module, spec: FoldSpec, T: torch.Tensor) -> None:
    """Fold ``T`` (``(d, d)``, or ``(d,)`` for a diagonal spec) into ``layer`` in place."""
    T = T.detach().double().cpu()
    if spec.diagonal:
        if T.dim() != 1:
            raise DepthpruneError("this family only folds a diagonal map exactly (its MLP output is normalised "
                                  "before the residual add); fit with the diagonal restriction")
        for _, obj in projections(layer, spec):
            _fold_diagonal(obj, T, spec.norm_offset)
        return
    if T.dim() != 2:
        raise ValueError("a full map must be (d, d)")
    for _, obj in projections(layer, spec):
        _fold_full(obj, T)
