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

from depthprune.arch.layout import config_layout, layout, make_rules_explicit, num_layers, set_num_layers
from depthprune.arch.skeleton import meta_skeleton, structure_mismatches
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

    for new_idx, layer in enumerate(lay.layers(model)):
        _renumber(layer, new_idx)

    shrink_config(config, keep)
    _refresh_cached_flags(model, config)
    return model


def shrink_config(config, keep: Sequence[int]) -> None:
    """Edit ``config`` in place so that it describes only the ``keep`` layers (0-based, ascending).

    The layer count, every per-layer list, every list of layer indices and the sliding-window
    threshold follow the kept layers. This one function edits the config of an in-memory model
    (:func:`remove_layers`) and of a checkpoint pruned on disk (:mod:`depthprune.scale.checkpoint`).
    """
    keep = list(keep)
    make_rules_explicit(config)
    fields = config_layout(config)
    for name in fields.per_layer_fields:
        values = getattr(config, name)
        setattr(config, name, type(values)(values[i] for i in keep))
    remap = {old_i: new_i for new_i, old_i in enumerate(keep)}
    for name in fields.layer_index_fields:
        values = getattr(config, name)
        setattr(config, name, [remap[i] for i in values if i in remap])
    _shrink_window_threshold(config, keep)
    set_num_layers(config, len(keep))


def pruned_copy(model: nn.Module, layers: Sequence[int]) -> nn.Module:
    """A deep copy of ``model`` with ``layers`` removed; the original is untouched."""
    return remove_layers(copy.deepcopy(model), layers)


def _renumber(layer: nn.Module, new_idx: int) -> None:
    for module in layer.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = new_idx
        if isinstance(getattr(module, "layer_id", None), int):
            module.layer_id = new_idx


def _shrink_window_threshold(config, keep: list[int]) -> None:
    # Qwen2-style: layers with index >= max_window_layers use sliding windows.
    threshold = getattr(config, "max_window_layers", None)
    if isinstance(threshold, int):
        config.max_window_layers = sum(1 for i in keep if i < threshold)


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
    k-th position, a hybrid period) fails this for most removals; the sentence names the first layer that would
    change and how.
    """
    config = original.config if hasattr(original, "named_modules") else original
    total = num_layers(config)
    removed = validate_layer_indices(removed, total)
    keep = [i for i in range(total) if i not in set(removed)]
    before = original if hasattr(original, "named_modules") else meta_skeleton(config, trust_remote_code)
    after = meta_skeleton(pruned_config(config, removed), trust_remote_code)
    problems = structure_mismatches(before, after, keep)
    if not problems:
        return None
    kind = getattr(config, "model_type", "?")
    return (f"removing layers {removed} from this {kind} model cannot be saved correctly: its config derives each "
            f"layer's kind from the layer's index, and after renumbering {problems[0]}"
            + (f" ({len(problems) - 1} more layers change)" if len(problems) > 1 else "")
            + "; choose layers that keep every kept layer's kind")


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
    index_state = [(m, attr, getattr(m, attr)) for m in model.modules() for attr in ("layer_idx", "layer_id")
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
