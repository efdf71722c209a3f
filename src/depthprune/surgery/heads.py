"""Removing attention heads: shrinking the projections and the config's head counts.

Head numbering and masking are described in :mod:`depthprune.arch.heads`. Removal shrinks ``q_proj``/``o_proj``
(and ``k_proj``/``v_proj`` for whole KV groups) and the config's head counts. transformers has one
``num_attention_heads``/``num_key_value_heads`` for all layers, so a checkpoint is possible only when every layer
loses the same number of KV groups, or the same number of query heads from every KV group; anything else can be
evaluated masked (:func:`depthprune.arch.heads.masked_heads`) but is never saved as if removed.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from depthprune.arch.heads import (HeadGeometry, HeadSet, attention_modules, check_head_set, geometry,  # noqa: F401
                                   groups_to_heads, masked_heads)  # masked_heads: re-exported with removal
from depthprune.arch.layout import parameter_count
from depthprune.errors import DepthpruneError

def removable(heads: HeadSet, geo: HeadGeometry, hidden_size: int | None = None) -> str | None:
    """None if ``heads`` can be removed into a plain checkpoint, else why not (one sentence)."""
    chosen = check_head_set(heads, geo)
    if set(chosen) != set(range(geo.num_layers)):
        return "transformers needs the same head count in every layer, but some layers lose no heads"
    kinds = set()
    for layer, hs in chosen.items():
        per_group = [sum(1 for h in hs if geo.group_of(h) == g) for g in range(geo.num_kv_heads)]
        whole = [c for c in per_group if c == geo.group_size]
        if whole and len(whole) + per_group.count(0) == len(per_group):
            kinds.add(("groups", len(whole)))
        elif len(set(per_group)) == 1 and 0 < per_group[0] < geo.group_size:
            kinds.add(("query", per_group[0]))
        else:
            return (f"layer {layer} removes whole KV groups and single query heads mixed, or unequal query heads "
                    "per KV group, which one num_attention_heads/num_key_value_heads cannot express")
    if len(kinds) != 1:
        return "layers lose different numbers of heads, which one num_attention_heads cannot express"
    kind, n = kinds.pop()
    if kind == "groups" and n >= geo.num_kv_heads:
        return "every KV group of a layer would go; remove the layer instead (depthprune prune)"
    left = geo.num_heads - len(next(iter(chosen.values())))
    if hidden_size is not None and hidden_size % left:
        return (f"transformers' config validation needs hidden_size ({hidden_size}) to be a multiple of "
                f"num_attention_heads ({left}), even with an explicit head_dim")
    return None


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, len(rows), bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[rows])
    return new


def _keep_cols(linear: nn.Linear, cols: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(cols), linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, cols])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new


def _rows_of(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)], dtype=torch.long)


def remove_heads(model: nn.Module, heads: HeadSet) -> nn.Module:
    """Remove query heads (and KV groups left without queries) in place; a clear error if the
    result would need per-layer head counts. Returns the model."""
    geo = geometry(model)
    why = removable(heads, geo, getattr(model.config, "hidden_size", None))
    if why is not None:
        raise DepthpruneError(f"cannot save this head removal as a checkpoint: {why}; evaluate it masked instead")
    chosen = check_head_set(heads, geo)
    new_heads = geo.num_heads - len(next(iter(chosen.values())))
    new_kv = geo.num_kv_heads
    for layer, attn in enumerate(attention_modules(model)):
        gone = set(chosen[layer])
        keep_q = [h for h in range(geo.num_heads) if h not in gone]
        keep_kv = [g for g in range(geo.num_kv_heads) if any(geo.group_of(h) == g for h in keep_q)]
        new_kv = len(keep_kv)
        attn.q_proj = _keep_rows(attn.q_proj, _rows_of(keep_q, geo.head_dim))
        attn.o_proj = _keep_cols(attn.o_proj, _rows_of(keep_q, geo.head_dim))
        attn.k_proj = _keep_rows(attn.k_proj, _rows_of(keep_kv, geo.head_dim))
        attn.v_proj = _keep_rows(attn.v_proj, _rows_of(keep_kv, geo.head_dim))
        for name, value in (("num_heads", new_heads), ("num_attention_heads", new_heads),
                            ("num_key_value_heads", len(keep_kv)), ("num_key_value_groups", new_heads // len(keep_kv))):
            if isinstance(getattr(attn, name, None), int):
                setattr(attn, name, value)
    config = model.config
    config.head_dim = geo.head_dim  # explicit, so that it does not follow hidden_size // num_attention_heads
    config.num_attention_heads = new_heads
    config.num_key_value_heads = new_kv
    return model


def heads_removed_copy(model: nn.Module, heads: HeadSet) -> nn.Module:
    """A deep copy of ``model`` with ``heads`` removed; the original is untouched."""
    geo = geometry(model)
    why = removable(heads, geo, getattr(model.config, "hidden_size", None))
    if why is not None:
        raise DepthpruneError(f"cannot save this head removal as a checkpoint: {why}; evaluate it masked instead")
    return remove_heads(copy.deepcopy(model), heads)


def attention_parameter_share(model: nn.Module, heads: HeadSet) -> float:
    """Share of all model parameters (tied weights once) that removing ``heads`` takes away: q_proj rows and
    o_proj columns of each query head, plus k_proj/v_proj rows of whole KV groups (biases not counted)."""
    geo = geometry(model)
    chosen = check_head_set(heads, geo)
    mods = attention_modules(model)
    hidden = mods[0].q_proj.in_features
    per_q = 2 * hidden * geo.head_dim  # q_proj rows + o_proj columns
    per_kv = 2 * hidden * geo.head_dim  # k_proj + v_proj rows
    gone = 0
    for layer, hs in chosen.items():
        gone += per_q * len(hs)
        groups = {geo.group_of(h) for h in hs}
        gone += per_kv * sum(1 for g in groups if all(h in hs for h in geo.group_heads(g)))
    return gone / parameter_count(model)
