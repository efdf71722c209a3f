"""Weightless (meta-device) model skeletons: what a config builds, layer by layer, without memory.

Two uses, both config-only:

* :func:`layer_keys`: which checkpoint keys belong to which decoder layer (the family's layer path found on the
  skeleton), for cutting a checkpoint on disk and for streaming it layer by layer;
* :func:`structure_mismatches`: whether a pruned config still builds every kept layer as it was. Families whose
  per-layer kind follows an index rule (MoE every k-th layer, dense-first MoE, hybrid attention/SSM periods,
  sliding/full patterns) build a different layer at a renumbered position unless the config is rewritten. The
  check compares each kept layer's structure (its modules' classes, parameter names and shapes, and attention
  attributes such as the sliding window) between the original and the pruned config, so it holds for families
  depthprune has never seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM

from depthprune.arch.layout import KNOWN_PATTERN_FIELDS, KNOWN_PER_LAYER_FIELDS, layout, num_layers
from depthprune.errors import DepthpruneError

# Per-module attributes that hold the layer's own position and are renumbered by surgery (they index caches). Every
# other plain attribute of a layer's modules is part of its structure: an attribute derived from the layer index
# (a sliding window, a residual scale, a "use rope" flag) that changes with renumbering changes what the layer
# computes.
# A module's copy of the model's layer count (MiniMax's attention keeps one) changes with every removal by design.
LAYER_INDEX_ATTRIBUTES = ("layer_idx", "layer_id")
# Per-module attributes that hold the index of a layer the module reads from (itself included): surgery renumbers
# them through the map of kept layers, and a kept layer is compared with that map applied to its original value (a
# reference to a removed layer never matches).
LAYER_REFERENCE_ATTRIBUTES = ("kv_source_layer",)  # Kolibri 1.1: the layer whose keys and values attention reads
OUTSIDE_LAYERS = "(outside the layers)"  # marks a mismatch of a tensor that is not in a decoder layer
_NOT_STRUCTURE = frozenset(LAYER_INDEX_ATTRIBUTES + LAYER_REFERENCE_ATTRIBUTES
                           + ("training", "num_hidden_layers", "num_layers", "n_layer", "n_layers"))
# A module's copy of a whole per-layer config list (GPT-Neo's blocks keep attention_layers) is cut with the layers by
# design; the layer's own entry is what it computes with, and that shows in its other attributes and modules.
_PER_LAYER_COPIES = frozenset(KNOWN_PER_LAYER_FIELDS + tuple(KNOWN_PATTERN_FIELDS))


def meta_skeleton(config, trust_remote_code: bool = False, dtype=None):
    """The causal-LM module tree for ``config`` with every parameter on the meta device (no memory)."""
    try:
        with init_empty_weights():
            kwargs = {"dtype": dtype} if dtype is not None else {}
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise DepthpruneError(
                f"unsupported architecture '{getattr(config, 'model_type', '?')}': transformers has no causal-LM "
                "(decoder-only) class for it, and depthprune prunes decoder-only models") from None
        raise


@dataclass
class LayerKeys:
    """How checkpoint keys name decoder layers: ``{prefix}.{index}.{rest}``."""

    prefix: str
    num_layers: int
    pattern: re.Pattern = field(repr=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.pattern = re.compile(rf"^{re.escape(self.prefix)}\.(\d+)\.(.+)$")

    def split(self, key: str) -> tuple[int, str] | None:
        """``(layer index, rest of the key)`` for a layer tensor, None for any other tensor."""
        m = self.pattern.match(key)
        return (int(m.group(1)), m.group(2)) if m else None

    def rename(self, key: str, new_index: int) -> str:
        _, rest = self.split(key)  # type: ignore[misc]
        return f"{self.prefix}.{new_index}.{rest}"


def layer_keys(config, keys: Sequence[str], skeleton=None, trust_remote_code: bool = False) -> LayerKeys:
    """Find the checkpoint-key prefix of the decoder layers from the family's layer path (meta skeleton)."""
    skeleton = skeleton if skeleton is not None else meta_skeleton(config, trust_remote_code)
    path = layout(skeleton).layers_path
    n = num_layers(config)
    candidates = [path]
    base = getattr(skeleton, "base_model_prefix", "")
    if base and path.startswith(base + "."):
        candidates.append(path[len(base) + 1:])  # legacy checkpoints saved from the base model (GPT-2: h.0.)
    for prefix in candidates:
        lk = LayerKeys(prefix, n)
        seen = {s[0] for s in map(lk.split, keys) if s is not None}
        if seen:
            if seen != set(range(n)):
                raise DepthpruneError(f"the checkpoint has tensors for layers {sorted(seen)} under '{prefix}.' "
                                      f"but its config says {n} layers; the checkpoint and config disagree")
            return lk
    raise DepthpruneError(f"no checkpoint tensor is named like the decoder layers ('{path}.N.'); "
                          "this checkpoint's key names are not supported for pruning on disk")


def _plain(value):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) or v is None for v in value):
        return tuple(value)
    return _NOT_PLAIN


_NOT_PLAIN = object()


def layer_structure(layer, remap: dict | None = None) -> tuple:
    """A comparable description of one decoder layer: per module, its class, its direct parameters' shapes and its
    plain attributes (numbers, strings, flags; all but :data:`LAYER_INDEX_ATTRIBUTES`).

    An attribute that is None counts as unset, like one that holds a tensor or another object: a module that keeps
    its own running state (RecurrentGemma's recurrent_states: None when built, a tensor after a forward) must look
    the same on a used model and on a fresh skeleton. None against a number still differs (the number is listed).

    ``remap`` (original layer index -> pruned index) maps the :data:`LAYER_REFERENCE_ATTRIBUTES` of a layer of the
    original model, to compare it with the same layer of the pruned one; without it they are left out (the layer's
    kind alone, as the search for a safe removal compares it)."""
    rows = []
    for name, module in layer.named_modules():
        params = tuple((p, tuple(t.shape)) for p, t in module.named_parameters(recurse=False))
        attrs = tuple(sorted((a, v) for a, v in ((a, _plain(v)) for a, v in vars(module).items()
                                                 if not a.startswith("_") and a not in _NOT_STRUCTURE)
                             if v is not _NOT_PLAIN and v is not None
                             and not (a in _PER_LAYER_COPIES and isinstance(v, tuple))))
        if remap is not None:
            refs = tuple((a, remap.get(v, "a removed layer") if isinstance(v, int) else _plain(v))
                         for a, v in sorted(vars(module).items()) if a in LAYER_REFERENCE_ATTRIBUTES)
            attrs = tuple(sorted(attrs + refs, key=repr))
        rows.append((name, type(module).__name__, params, attrs))
    return tuple(rows)


def _difference(before: tuple, after: tuple) -> str:
    b = {row[0]: row for row in before}
    a = {row[0]: row for row in after}
    for name in list(b) + [n for n in a if n not in b]:
        if name not in a:
            return f"loses {name or 'its'} {b[name][1]}"
        if name not in b:
            return f"gains {name} {a[name][1]}"
        if b[name] != a[name]:
            _, cls_b, params_b, attrs_b = b[name]
            _, cls_a, params_a, attrs_a = a[name]
            where = name or "the layer"
            if cls_b != cls_a:
                return f"{where} changes from {cls_b} to {cls_a}"
            if params_b != params_a:
                return f"{where} changes its parameters from {dict(params_b)} to {dict(params_a)}"
            changed = sorted(set(attrs_b) ^ set(attrs_a), key=repr)
            return f"{where} changes {changed[0][0]} from {dict(attrs_b).get(changed[0][0])} to " \
                   f"{dict(attrs_a).get(changed[0][0])}"
    return "changes"  # pragma: no cover - only called on differing structures


def structure_mismatches(original, pruned, keep: Sequence[int]) -> list[str]:
    """How the kept layers of ``pruned`` differ from the same layers of ``original`` (empty: they do not).

    ``original`` and ``pruned`` are models or configs (configs are built on the meta device); ``keep`` lists, for
    each layer of ``pruned``, the index of the layer of ``original`` it must be.
    """
    before = original if hasattr(original, "named_modules") else meta_skeleton(original)
    after = pruned if hasattr(pruned, "named_modules") else meta_skeleton(pruned)
    layers_before, layers_after = layout(before).layers(before), layout(after).layers(after)
    if len(layers_after) != len(keep):
        return [f"the pruned config builds {len(layers_after)} layers, not the {len(keep)} kept ones"]
    problems = _outside_layers(before, after)
    remap = {old: new for new, old in enumerate(keep)}
    identity = {new: new for new in range(len(keep))}
    for new, old in enumerate(keep):
        s_before, s_after = layer_structure(layers_before[old], remap), layer_structure(layers_after[new], identity)
        if s_before != s_after:
            problems.append(f"layer {old} (now {new}) {_difference(s_before, s_after)}")
    return problems


def _outside_layers(before, after) -> list[str]:
    """Tensors outside the decoder layers are kept as they are, so the pruned config must build them with the same
    shapes (Gemma 4's per-layer input embeddings grow with the layer count: removing layers would need them cut)."""
    def shapes(model):
        prefix = layout(model).layers_path + "."
        return {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)
                if not name.startswith(prefix)}  # tied weights count under each name on both sides
    b, a = shapes(before), shapes(after)
    problems = []
    for name in sorted(set(b) | set(a)):
        if b.get(name) != a.get(name):
            problems.append(f"{name} {OUTSIDE_LAYERS} changes from {b.get(name, 'absent')} to "
                            f"{a.get(name, 'absent')}, which removing layers does not cut")
    return problems


__all__ = ["LAYER_INDEX_ATTRIBUTES", "LAYER_REFERENCE_ATTRIBUTES", "OUTSIDE_LAYERS", "LayerKeys", "layer_keys",
           "layer_structure", "meta_skeleton", "structure_mismatches"]
