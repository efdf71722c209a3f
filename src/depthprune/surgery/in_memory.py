"""Removing decoder layers from a model so that it stays consistent.

After removal: the ModuleList holds only the kept layers, every ``layer_idx``
inside them is renumbered 0..k-1 (the KV cache is indexed by it), the config's
layer count and every per-layer config list shrink with the layers, and lists of
layer indices are renumbered. The result saves with ``save_pretrained`` and
reloads with plain ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterable, Iterator, Sequence

from torch import nn

from depthprune.arch.layout import (config_layout, index_rule_fields, layout, make_rules_explicit, num_layers,
                                    orphaned_reuse, per_layer_overrides, set_num_layers, set_per_layer_overrides,
                                    shrink_one_based_indices, shrink_per_layer_indices, shrink_thresholds)
from depthprune.arch.skeleton import (LAYER_INDEX_ATTRIBUTES, LAYER_REFERENCE_ATTRIBUTES, OUTSIDE_LAYERS,
                                      layer_structure, meta_skeleton, structure_mismatches)
from depthprune.errors import DepthpruneError


def validate_layer_indices(layers: Iterable[int], total: int) -> list[int]:
    """Sorted unique 0-based indices; a clear error for out-of-range or removing everything."""
    chosen = sorted(set(int(i) for i in layers))
    if not chosen:
        raise DepthpruneError("no layers to remove: give at least one 0-based layer index")
    bad = [i for i in chosen if i < 0 or i >= total]
    if bad:
        raise DepthpruneError(f"layer index {bad[0]} is out of range: the model has layers 0..{total - 1}")
    if len(chosen) >= total:
        raise DepthpruneError(f"cannot remove all {total} layers: at least one must stay")
    return chosen


def remove_layers(model: nn.Module, layers: Sequence[int]) -> nn.Module:
    """Remove ``layers`` (0-based, current numbering) from ``model`` in place and return it."""
    lay = layout(model)
    config = model.config
    total = num_layers(config)
    removed = validate_layer_indices(layers, total)
    gone = set(removed)
    keep = [i for i in range(total) if i not in gone]
    old = lay.layers(model)
    lay.replace_layers(model, nn.ModuleList([old[i] for i in keep]))

    remap = {old_idx: new_idx for new_idx, old_idx in enumerate(keep)}
    for new_idx, layer in enumerate(lay.layers(model)):
        _renumber(layer, new_idx, remap)

    shrink_config(config, keep)
    _refresh_cached_flags(model, config)
    return model


def shrink_config(config, keep: Sequence[int]) -> None:
    """Edit ``config`` in place so that it describes only the ``keep`` layers (0-based, ascending).

    The layer count, every per-layer list, every list of layer indices and every index threshold
    (:data:`depthprune.arch.layout.KNOWN_LAYER_THRESHOLD_FIELDS`) follow the kept layers. This one function edits the config of an in-memory model
    (:func:`remove_layers`) and of a checkpoint pruned on disk (:mod:`depthprune.scale.checkpoint`).
    """
    keep = list(keep)
    make_rules_explicit(config)
    shrink_per_layer_indices(config, keep)  # before the layer count changes: it reads the entries of every layer
    fields = config_layout(config)
    for name in fields.per_layer_fields:
        values = getattr(config, name)
        setattr(config, name, type(values)(values[i] for i in keep))
    remap = {old_i: new_i for new_i, old_i in enumerate(keep)}
    for name in fields.layer_index_fields:
        values = getattr(config, name)
        setattr(config, name, [remap[i] for i in values if i in remap])
    shrink_one_based_indices(config, keep)
    shrink_thresholds(config, keep)
    overrides = per_layer_overrides(config)  # a heterogeneous config: layer index -> that layer's own fields
    if overrides is not None:
        set_per_layer_overrides(config, None)
    set_num_layers(config, len(keep))
    if overrides is not None:
        set_per_layer_overrides(config, {remap[i]: v for i, v in overrides.items() if i in remap})


def pruned_copy(model: nn.Module, layers: Sequence[int]) -> nn.Module:
    """A deep copy of ``model`` with ``layers`` removed; the original is untouched."""
    return remove_layers(copy.deepcopy(model), layers)


def _renumber(layer: nn.Module, new_idx: int, remap: dict) -> None:
    """Give the layer's modules their new position; a reference to another kept layer follows that layer (one to a
    removed layer becomes the layer's own index, as the config rule does; the structure check refuses such a removal
    before anything is saved)."""
    for module in layer.modules():
        for attr in LAYER_INDEX_ATTRIBUTES:
            if isinstance(getattr(module, attr, None), int):
                setattr(module, attr, new_idx)
        for attr in LAYER_REFERENCE_ATTRIBUTES:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(module, attr, remap.get(value, new_idx))


def _refresh_cached_flags(model: nn.Module, config) -> None:
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return
    for module in model.modules():
        if hasattr(module, "has_sliding_layers"):
            module.has_sliding_layers = "sliding_attention" in layer_types


def pruned_config(config, removed: Sequence[int]):
    """A copy of ``config`` describing the model without ``removed`` (the config a pruned checkpoint saves)."""
    total = num_layers(config)
    gone = set(validate_layer_indices(removed, total))
    shrunk = copy.deepcopy(config)
    shrink_config(shrunk, [i for i in range(total) if i not in gone])
    return shrunk


def structure_refusal(original, removed: Sequence[int], *, trust_remote_code: bool = False) -> str | None:
    """Why removing ``removed`` from ``original`` (a model or a config) would be saved wrong, or None.

    The pruned config must build every kept layer as it was (:func:`depthprune.arch.skeleton.structure_mismatches`).
    A family whose per-layer kind follows an index rule the config cannot be rewritten to keep (an MoE layer every
    k-th position, a hybrid period, a residual scale set by depth) fails this for most removals; the sentence names
    the first layer that would change and how, the config fields that set the rule, and the removal of as many
    layers closest to the requested one that keeps every kept layer as it was (checked the same way), if any.
    """
    config = original.config if hasattr(original, "named_modules") else original
    total = num_layers(config)
    removed = validate_layer_indices(removed, total)
    keep = [i for i in range(total) if i not in set(removed)]
    before = original if hasattr(original, "named_modules") else meta_skeleton(config, trust_remote_code)
    kind = getattr(config, "model_type", "?")
    try:
        shrunk = pruned_config(config, removed)
        if callable(getattr(shrunk, "validate", None)):
            shrunk.validate()  # the checks save_pretrained would run (layer-group counts, list lengths)
        after = meta_skeleton(shrunk, trust_remote_code)
    except DepthpruneError:
        raise
    except Exception as exc:  # transformers refuses the shrunk config itself
        sentence = (f"removing layers {removed} from this {kind} model cannot be saved correctly: transformers "
                    f"cannot build a model from the pruned config ({_one_line(exc)})")
        safe = _trailing_removal(before, len(removed), config, trust_remote_code)
        return sentence + (f"; removing layers {safe} instead keeps every kept layer as it was" if safe else "")
    orphan = orphaned_reuse(shrunk)
    if orphan is not None:  # every module builds as it was, but the model cannot run
        safe = _trailing_removal(before, len(removed), config, trust_remote_code)
        return (f"removing layers {removed} from this {kind} model cannot be saved correctly: after renumbering "
                f"{orphan}" + (f"; removing layers {safe} instead keeps every kept layer as it was" if safe else
                               f"; no removal of {len(removed)} layers keeps every kept layer as it was"))
    problems = structure_mismatches(before, after, keep)
    if not problems:
        return None
    rules = index_rule_fields(config)
    if OUTSIDE_LAYERS in problems[0]:
        return (f"removing layers {removed} from this {kind} model cannot be saved correctly: "
                f"{problems[0]}; depthprune removes whole decoder layers and keeps every other tensor as it is, so "
                "no removal of layers can be saved for this model")
    source = (f"its config derives each layer's kind from the layer's index "
              f"({', '.join(f'{k}={v}' for k, v in rules.items())})" if rules
              else "its model code derives each layer's kind from the layer's index (no config field sets it)")
    sentence = (f"removing layers {removed} from this {kind} model cannot be saved correctly: {source}, and after "
                f"renumbering {problems[0]}"
                + (f" ({len(problems) - 1} more layers change)" if len(problems) > 1 else ""))
    safe = _closest_safe_removal(before, after, removed, config, trust_remote_code)
    if safe is not None:
        return sentence + f"; removing layers {safe} instead keeps every kept layer as it was"
    return sentence + f"; no removal of {len(removed)} layers keeps every kept layer as it was"


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _closest_safe_removal(before, after, removed: list[int], config, trust_remote_code: bool) -> list[int] | None:
    """The removal of ``len(removed)`` layers that keeps the most of the requested layers removed and builds every
    kept layer as it was, or None.

    The pruned config builds the same sequence of layer kinds for every removal of that many layers when the kinds
    follow an index rule (``after``); a removal is safe when the kept layers of ``before`` show exactly that
    sequence. The best such subsequence is found by dynamic programming over (original layer, pruned position) and
    then checked with a skeleton of its own pruned config, since a family may also rewrite some fields per removal.
    """
    layers_before, layers_after = layout(before).layers(before), layout(after).layers(after)
    ids: dict = {}
    source = [ids.setdefault(layer_structure(layer), len(ids)) for layer in layers_before]
    target = [ids.get(layer_structure(layer), -1) for layer in layers_after]
    n, m, wanted = len(source), len(target), set(removed)
    inf = n + 1
    # cost[i][j]: fewest requested layers kept when source[:i] yields target[:j]
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0
    for i in range(n):
        for j in range(m + 1):
            if cost[i][j] == inf:
                continue
            cost[i + 1][j] = min(cost[i + 1][j], cost[i][j])
            if j < m and source[i] == target[j]:
                cost[i + 1][j + 1] = min(cost[i + 1][j + 1], cost[i][j] + (i in wanted))
    if cost[n][m] == inf:
        return _trailing_removal(before, len(removed), config, trust_remote_code)
    kept, j = [], m
    for i in range(n, 0, -1):  # walk back: keep layer i-1 only where that step was needed for the optimum
        if j > 0 and source[i - 1] == target[j - 1] and cost[i - 1][j - 1] + ((i - 1) in wanted) == cost[i][j] \
                and cost[i - 1][j - 1] < inf:
            kept.append(i - 1)
            j -= 1
        elif cost[i - 1][j] != cost[i][j]:
            return None  # pragma: no cover - the table is consistent by construction
    safe = sorted(set(range(n)) - set(kept))
    try:
        check = meta_skeleton(pruned_config(config, safe), trust_remote_code)
    except Exception:
        return None
    if not structure_mismatches(before, check, sorted(kept)):
        return safe
    return _trailing_removal(before, len(removed), config, trust_remote_code)


def _trailing_removal(before, count: int, config, trust_remote_code: bool) -> list[int] | None:
    """The last ``count`` layers, when removing them keeps every kept layer as it was, or None.

    Removing trailing layers renumbers no kept layer, so it is the one removal worth checking when the kinds the
    pruned config builds depend on which layers went (a family whose layers also keep a copy of the list of indices
    of some kind, like Zamba2's shared-block layer map, matches no subsequence of the same length)."""
    total = num_layers(config)
    safe = list(range(total - count, total))
    try:
        shrunk = pruned_config(config, safe)
        if callable(getattr(shrunk, "validate", None)):
            shrunk.validate()
        check = meta_skeleton(shrunk, trust_remote_code)
    except Exception:
        return None
    if orphaned_reuse(shrunk) is not None:
        return None
    return safe if not structure_mismatches(before, check, list(range(total - count))) else None


def check_removable(model: nn.Module) -> None:
    """Raise the clear unsupported-architecture error early, before any heavy work."""
    layout(model)


__all__ = ["check_removable", "pruned_config", "pruned_copy", "pruned_view", "remove_layers", "shrink_config",
           "structure_refusal", "validate_layer_indices"]


@contextlib.contextmanager
def pruned_view(model: nn.Module, layers: Sequence[int]) -> Iterator[nn.Module]:
    """Temporarily remove ``layers`` (0-based, current numbering) from ``model`` without copying weights.

    Inside the ``with`` block the model *is* the pruned model (same modules, renumbered
    ``layer_idx``, shrunk config); on exit every change is undone. An empty ``layers``
    yields the model unchanged.
    """
    layers = list(layers)
    if not layers:
        yield model
        return
    lay = layout(model)
    original_layers = lay.layers(model)
    config_state = dict(model.config.__dict__)
    index_state = [(m, attr, getattr(m, attr)) for m in model.modules()
                   for attr in LAYER_INDEX_ATTRIBUTES + LAYER_REFERENCE_ATTRIBUTES
                   if isinstance(getattr(m, attr, None), int)]
    flag_state = [(m, m.has_sliding_layers) for m in model.modules() if hasattr(m, "has_sliding_layers")]
    try:
        remove_layers(model, layers)
        yield model
    finally:
        lay.replace_layers(model, original_layers)
        for key in [k for k in model.config.__dict__ if k not in config_state]:
            del model.config.__dict__[key]
        model.config.__dict__.update(config_state)
        for module, attr, value in index_state:
            setattr(module, attr, value)
        for module, value in flag_state:
            module.has_sliding_layers = value
