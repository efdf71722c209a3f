"""Attention heads of a decoder model: where they live, masking them, removing them.

Head numbering (everywhere in :mod:`depthprune.width`): layers are 0-based, original numbering;
query heads are 0-based within a layer; KV group ``g`` is key/value head ``g`` and the query
heads ``g*q .. g*q+q-1`` that share it (``q = num_attention_heads // num_key_value_heads``, the
grouping transformers' ``repeat_kv`` uses). Masking a KV group masks all of its query heads.

Masking a query head zeroes its slice of the output projection's input (a forward pre-hook on
``o_proj``). That is exactly the model without that head: the attention output is the
concatenation of the per-head outputs and nothing else reads it before ``o_proj``.

Removal shrinks ``q_proj``/``o_proj`` (and ``k_proj``/``v_proj`` for whole KV groups) and the
config's head counts. transformers has one ``num_attention_heads``/``num_key_value_heads`` for
all layers, so a checkpoint is possible only when every layer loses the same number of KV groups,
or the same number of query heads from every KV group (no whole group); anything else can be
evaluated masked (:func:`masked_heads`) but is never saved as if removed.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from ..architectures import layout
from ..errors import DepthpruneError

HeadSet = Mapping[int, Sequence[int]]  # layer -> query heads (0-based within the layer)


@dataclass(frozen=True)
class HeadGeometry:
    num_layers: int
    num_heads: int      # query heads per layer
    num_kv_heads: int   # KV groups per layer
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def group_heads(self, group: int) -> list[int]:
        """Query heads that share KV group ``group``."""
        q = self.group_size
        return list(range(group * q, (group + 1) * q))

    def group_of(self, head: int) -> int:
        return head // self.group_size


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of every decoder layer (Llama-style separate q/k/v/o projections)."""
    mods = []
    for i, layer in enumerate(layout(model).layers(model)):
        attn = getattr(layer, "self_attn", None)
        if attn is None or not all(isinstance(getattr(attn, p, None), nn.Linear)
                                   for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            raise DepthpruneError(f"layer {i} of this {getattr(model.config, 'model_type', '?')} model has no "
                                  "self_attn with separate q/k/v/o projections; head scoring supports Llama-style "
                                  "attention (Llama, Mistral, Qwen2/3, Gemma 2/3, SmolLM)")
        mods.append(attn)
    return mods


def geometry(model: nn.Module) -> HeadGeometry:
    """Head counts and size from the config, checked against the projection shapes."""
    config = model.config
    heads = getattr(config, "num_attention_heads", None)
    if not isinstance(heads, int):
        raise DepthpruneError("the model config has no num_attention_heads; cannot locate attention heads")
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    mods = attention_modules(model)
    for i, attn in enumerate(mods):
        if attn.q_proj.out_features != heads * head_dim or attn.o_proj.in_features != heads * head_dim \
                or attn.k_proj.out_features != kv * head_dim:
            raise DepthpruneError(f"layer {i}'s projections do not match {heads} heads x {head_dim} "
                                  f"({kv} KV heads); per-layer head counts are not supported")
    if heads % kv:
        raise DepthpruneError(f"{heads} query heads do not split into {kv} KV groups")
    return HeadGeometry(len(mods), heads, kv, head_dim)


def _check_heads(heads: HeadSet, geo: HeadGeometry) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, hs in heads.items():
        if not 0 <= int(layer) < geo.num_layers:
            raise DepthpruneError(f"layer {layer} is out of range: the model has layers 0..{geo.num_layers - 1}")
        chosen = sorted(set(int(h) for h in hs))
        bad = [h for h in chosen if not 0 <= h < geo.num_heads]
        if bad:
            raise DepthpruneError(f"head {bad[0]} is out of range: layers have query heads 0..{geo.num_heads - 1}")
        if chosen:
            out[int(layer)] = chosen
    return out


def groups_to_heads(groups: HeadSet, geo: HeadGeometry) -> dict[int, list[int]]:
    """{layer: KV groups} -> {layer: query heads of those groups}."""
    return {int(layer): sorted(h for g in gs for h in geo.group_heads(int(g))) for layer, gs in groups.items()}


@contextlib.contextmanager
def masked_heads(model: nn.Module, heads: HeadSet) -> Iterator[None]:
    """Within the block, the given query heads contribute nothing (their o_proj input slice is zero)."""
    geo = geometry(model)
    chosen = _check_heads(heads, geo)
    mods = attention_modules(model)
    handles = []
    for layer, hs in chosen.items():
        keep = torch.ones(geo.num_heads * geo.head_dim)
        for h in hs:
            keep[h * geo.head_dim:(h + 1) * geo.head_dim] = 0

        def hook(module, args, _keep=keep):
            x = args[0]
            return (x * _keep.to(device=x.device, dtype=x.dtype), *args[1:])

        handles.append(mods[layer].o_proj.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def removable(heads: HeadSet, geo: HeadGeometry, hidden_size: int | None = None) -> str | None:
    """None if ``heads`` can be removed into a plain checkpoint, else why not (one sentence)."""
    chosen = _check_heads(heads, geo)
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
    chosen = _check_heads(heads, geo)
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
    chosen = _check_heads(heads, geo)
    mods = attention_modules(model)
    hidden = mods[0].q_proj.in_features
    per_q = 2 * hidden * geo.head_dim  # q_proj rows + o_proj columns
    per_kv = 2 * hidden * geo.head_dim  # k_proj + v_proj rows
    gone = 0
    for layer, hs in chosen.items():
        gone += per_q * len(hs)
        groups = {geo.group_of(h) for h in hs}
        gone += per_kv * sum(1 for g in groups if all(h in hs for h in geo.group_heads(g)))
    from ..surgery import parameter_count

    return gone / parameter_count(model)
