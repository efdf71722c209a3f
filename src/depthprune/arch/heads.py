"""Attention heads of a decoder model: where they live and how to mask them (removal: depthprune.surgery.heads).

Head numbering (everywhere heads are named): layers are 0-based, original numbering;
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
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from depthprune.arch.layout import layout
from depthprune.errors import DepthpruneError

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


def check_head_set(heads: HeadSet, geo: HeadGeometry) -> dict[int, list[int]]:
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
    chosen = check_head_set(heads, geo)
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


__all__ = ["HeadGeometry", "HeadSet", "attention_modules", "check_head_set", "geometry", "groups_to_heads", "masked_heads"]
