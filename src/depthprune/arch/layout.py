"""Where each model family keeps its decoder layers, and which config fields are per layer.

One generic path covers almost every decoder-only model in transformers: the
layers are the one ``nn.ModuleList`` whose length is the configured number of
hidden layers, and any config list of that same length is a per-layer list.
Families only add small overrides (a known attribute path, extra per-layer
fields that are lists of layer *indices* rather than one entry per layer, or a
reason why removing layers would change the math of the layers that stay).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from depthprune.errors import DepthpruneError

log = logging.getLogger(__name__)

# Attribute paths tried first, in order, from the *ForCausalLM object.
COMMON_LAYER_PATHS = (
    "model.layers",            # Llama, Mistral, Qwen2/3, Gemma2/3, Phi-3, Mixtral, ...
    "model.decoder.layers",    # OPT
    "transformer.h",           # GPT-2, Falcon, GPT-J, Bloom
    "gpt_neox.layers",         # GPT-NeoX, Pythia
    "model.language_model.layers",
    "transformer.layers",
    "backbone.layers",
)

# Config attributes that hold one entry per layer (shrunk with the layers).
KNOWN_PER_LAYER_FIELDS = (
    "layer_types",
    "no_rope_layers",
    "layers_block_type",
    "attention_layers",
    "moe_layers_enabled",
    "indexer_types",  # GLM-MoE-DSA, HY-V4: per layer, run the sparse-attention indexer or reuse the previous one's
    # per-layer clamps of the expert (and shared expert) SwiGLU activations, under both names transformers uses
    "expert_swiglu_limit_list", "share_expert_swiglu_limit_list",  # Bailing-Hybrid
    "swiglu_limits", "swiglu_limits_shared",  # Step-3.7 (and Bailing-Hybrid's attribute_map aliases)
    "activation_sparsity_pattern",  # Gemma 3n: each layer's top-k activation sparsity
)

# Config attributes that hold a list of layer *indices* (renumbered, entries of
# removed layers dropped).
KNOWN_LAYER_INDEX_FIELDS = (
    "mlp_only_layers",   # Qwen2/3-MoE: dense layers
    "moe_layers",        # Llama 4: MoE layers
    "attn_layer_indices",  # Bamba: attention (not Mamba) layers
    "index_layers",        # Kolibri 1.1: the layers whose sparse-attention indexer selects a new key pool
    "hybrid_layer_ids",    # Zamba2: the layers with the shared transformer block (derived again on reload)
)

# The same, counting layers from 1 (renumbered the same way, 1-based).
KNOWN_ONE_BASED_LAYER_INDEX_FIELDS = (
    "ple_layer_ids",       # Qwen4-Exp: the layers with per-layer (n-gram) embeddings
)

# Config attributes that hold one entry per layer whose entries are layer indices (cut with the layers, then each
# entry renumbered). An entry naming a removed layer becomes the layer's own index: the layer then builds as one that
# reads nothing from another layer, which the structure check reports as a changed kept layer.
KNOWN_PER_LAYER_INDEX_FIELDS = (
    "kv_source_layers",    # Kolibri 1.1: the layer whose keys and values each layer reads (itself: its own)
)

# Per-layer lists in which a layer of one kind reuses what the nearest earlier layer of another kind computed
# (GLM-MoE-DSA, HY-V4: a "shared" indexer layer reuses the top-k indices of the previous "full" one). Removing the
# layer it reused makes it reuse the one before, as skipping that layer would; removing every such layer before it
# leaves a model that cannot run (transformers only finds out on the first forward pass).
KNOWN_REUSE_FIELDS: dict[str, tuple[str, str]] = {
    "indexer_types": ("shared", "full"),  # field: (the reusing kind, the kind it reuses)
}


def orphaned_reuse(config) -> str | None:
    """The first layer of ``config`` whose :data:`KNOWN_REUSE_FIELDS` kind reuses an earlier layer that is not there,
    described in a phrase, or None."""
    for name, (reader, source) in KNOWN_REUSE_FIELDS.items():
        values = getattr(config, name, None)
        if not isinstance(values, (list, tuple)):
            continue
        for i, value in enumerate(values):
            if value == source:
                break
            if value == reader:
                return (f"layer {i} is a '{reader}' layer in {name}, which reuses the nearest earlier '{source}' "
                        f"layer, and no '{source}' layer is kept before it")
    return None


# Config attributes that split the layers at an index: layer i is of one kind iff i < threshold. Renumbering keeps
# them exact by counting the kept layers below the threshold.
KNOWN_LAYER_THRESHOLD_FIELDS = (
    "max_window_layers",      # Qwen2: layers from this index on use sliding windows
    "first_k_dense_replace",  # DeepSeek-V2/V3, GLM-4-MoE, dots1, ...: the first k layers are dense
    "num_dense_layers",       # AFMoE: the first k layers are dense
)

# Config attributes that derive a layer's kind from its index by a rule no renumbering keeps (a period, an offset,
# a step). They are named in the refusal when a removal would change a kept layer's kind.
KNOWN_INDEX_RULE_FIELDS = (
    "decoder_sparse_step", "moe_layer_freq", "interleave_moe_layer_step", "attn_layer_period", "attn_layer_offset",
    "expert_layer_period", "expert_layer_offset", "global_attn_every_n_layers", "full_attention_interval",
    "sliding_window_pattern", "no_rope_layer_interval", "moe_layer_interval", "moe_layer_start_index",
    "moe_layer_end_index", "mamba_step", "layer_group_size", "num_kv_shared_layers",
) + KNOWN_LAYER_THRESHOLD_FIELDS


def index_rule_fields(config) -> dict:
    """The index-rule fields the config sets (name -> value), for naming them in a refusal."""
    out = {}
    for name in KNOWN_INDEX_RULE_FIELDS:
        value = getattr(config, name, None)
        # 0 switches a step, period or count off; an offset of 0 is still a position
        if isinstance(value, int) and not isinstance(value, bool) and (value or name.endswith("_offset")):
            out[name] = value
    return out


def _gpt2_blocker(config) -> str | None:
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        return (
            "this GPT-2 config sets scale_attn_by_inverse_layer_idx, which ties each layer's "
            "attention scale to its position, so removing layers would change the layers that stay"
        )
    return None


def _explicit_sparse_layers(config) -> None:
    """Qwen2/3-MoE and the families that copied it (any config with both ``decoder_sparse_step`` and
    ``mlp_only_layers``): layer i is sparse iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0. The
    rule follows the index, so before layers are removed it is rewritten as the explicit list it implies
    (decoder_sparse_step 1, every dense layer in mlp_only_layers), which renumbering then keeps exact. A family that
    reads the fields differently is still caught: the structure check compares every kept layer after the rewrite."""
    if not isinstance(getattr(config, "decoder_sparse_step", None), int) \
            or not isinstance(getattr(config, "mlp_only_layers", None), (list, tuple)):
        return
    step = getattr(config, "decoder_sparse_step", 1) or 1
    experts = getattr(config, "num_experts", 0) or 0
    dense_only = set(getattr(config, "mlp_only_layers", None) or [])
    n = num_layers(config)
    if step == 1 or experts <= 0:
        return
    config.mlp_only_layers = [i for i in range(n) if i in dense_only or (i + 1) % step != 0]
    config.decoder_sparse_step = 1


def _repeat_to_every_layer(value, n: int) -> list | None:
    """A list of kinds that repeats over the layers (RecurrentGemma's ``block_types``: layer i is
    ``value[i % len(value)]``), as one entry per layer; None for a value of another shape."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return [value[i % len(value)] for i in range(n)]
    return None


def _one_run_per_layer(value, n: int) -> list | None:
    """Runs of kinds (GPT-Neo's ``attention_types``: ``[[kinds, repeat], ...]``, the kinds repeated ``repeat`` times,
    runs concatenated) as one run of one kind per layer; None for a value of another shape or another length."""
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(run, (list, tuple)) and len(run) == 2 and isinstance(run[0], (list, tuple))
            and isinstance(run[1], int) for run in value):
        return None
    kinds = [kind for run_kinds, repeat in value for _ in range(repeat) for kind in run_kinds]
    return [[[kind], 1] for kind in kinds] if len(kinds) == n else None


# Config attributes that hold a pattern the config expands into one kind per layer every time it is loaded, so
# cutting the expanded list alone would be undone on reload. Before layers are removed each is rewritten as the
# explicit pattern of one entry per layer (same expansion), which is then cut with the layers like any per-layer list.
KNOWN_PATTERN_FIELDS: dict[str, Callable[[object, int], list | None]] = {
    "block_types": _repeat_to_every_layer,     # RecurrentGemma: recurrent/attention blocks repeat with this period
    "attention_types": _one_run_per_layer,     # GPT-Neo: global/local runs, expanded into attention_layers
}


def _explicit_patterns(config) -> None:
    """Rewrite every :data:`KNOWN_PATTERN_FIELDS` value as one entry per layer (values of another shape are left
    alone; the structure check still compares every kept layer)."""
    n = num_layers(config)
    for name, expand in KNOWN_PATTERN_FIELDS.items():
        explicit = expand(getattr(config, name, None), n)
        if explicit is not None:
            setattr(config, name, explicit)


# Index rules rewritten as explicit per-layer fields before layers are removed, keyed by the fields (not the family),
# so a family that copies a rule is covered without being listed.
RULE_REWRITES: tuple[Callable[[object], None], ...] = (_explicit_sparse_layers, _explicit_patterns)


@dataclass(frozen=True)
class Family:
    """Small overrides for one ``config.model_type``."""

    layers_path: str | None = None
    per_layer_fields: tuple[str, ...] = ()
    layer_index_fields: tuple[str, ...] = ()
    blocker: Callable[[object], str | None] | None = None


FAMILIES: dict[str, Family] = {
    "llama": Family("model.layers"),
    "mistral": Family("model.layers"),
    "mixtral": Family("model.layers"),
    "qwen2": Family("model.layers"),
    "qwen3": Family("model.layers"),
    "qwen2_moe": Family("model.layers"),
    "qwen3_moe": Family("model.layers"),
    "gemma": Family("model.layers"),
    "gemma2": Family("model.layers"),
    "gemma3_text": Family("model.layers"),
    "phi3": Family("model.layers"),
    "gpt2": Family("transformer.h", blocker=_gpt2_blocker),
    "gpt_neox": Family("gpt_neox.layers"),
    "opt": Family("model.decoder.layers"),
    "falcon": Family("transformer.h"),
}


def _get_path(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


get_path = _get_path  # public: the module at a dotted path (None when any part is missing)


def _set_path(root: nn.Module, path: str, value) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = _get_path(root, parent_path) if parent_path else root
    setattr(parent, name, value)


def num_layers(config) -> int:
    """The configured number of decoder layers (``num_hidden_layers`` or its alias)."""
    for name in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise DepthpruneError(
        f"unsupported architecture '{getattr(config, 'model_type', '?')}': its config has no "
        "num_hidden_layers (or n_layer/num_layers) field"
    )


def set_num_layers(config, n: int) -> None:
    """Set the layer count on every name the config knows it by."""
    config.num_hidden_layers = n  # attribute_map routes this to n_layer etc.
    for name in ("n_layer", "num_layers", "n_layers"):
        if name in config.__dict__:
            config.__dict__[name] = n


@dataclass
class LayerLayout:
    """Where the decoder layers of one model live and how its config describes them."""

    model_type: str
    layers_path: str
    per_layer_fields: list[str] = field(default_factory=list)
    layer_index_fields: list[str] = field(default_factory=list)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return _get_path(model, self.layers_path)

    def replace_layers(self, model: nn.Module, new_layers: nn.ModuleList) -> None:
        _set_path(model, self.layers_path, new_layers)


def _find_layer_list(model: nn.Module, n: int, preferred: str | None) -> str | None:
    for path in ((preferred,) if preferred else ()) + COMMON_LAYER_PATHS:
        obj = _get_path(model, path)
        if isinstance(obj, nn.ModuleList) and len(obj) == n:
            return path
    # Generic fallback: the unique ModuleList with exactly n entries, shallowest first.
    candidates = [
        name for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n and name
    ]
    candidates.sort(key=lambda s: s.count("."))
    if candidates:
        if len(candidates) > 1:
            log.info("several ModuleLists of length %d; using %s", n, candidates[0])
        return candidates[0]
    return None


@dataclass
class ConfigLayout:
    """What the config alone says about the layers: the per-layer fields (no model needed).

    The one source of truth for per-layer config fields, used both by in-memory surgery and by
    checkpoint-level pruning (:mod:`depthprune.scale.checkpoint`), which never builds the model.
    """

    model_type: str
    num_layers: int
    per_layer_fields: list[str] = field(default_factory=list)
    layer_index_fields: list[str] = field(default_factory=list)
    preferred_path: str | None = None


def per_layer_overrides(config) -> dict | None:
    """A heterogeneous config's per-layer overrides (transformers' ``per_layer_config``: layer index -> the fields
    that layer sets differently), or None for a homogeneous config."""
    spec = config.__dict__.get("_heterogeneity_spec")
    if not getattr(config, "is_heterogeneous", False) or spec is None:
        return None
    return {int(i): dict(v) for i, v in spec.per_layer_overrides.items()}


def set_per_layer_overrides(config, overrides: dict | None) -> None:
    """Set (or clear, with None) a config's per-layer overrides; transformers validates them against the current
    layer count, so set that first."""
    config.per_layer_config = overrides or None


def shrink_thresholds(config, keep) -> None:
    """Renumber the config's index thresholds (:data:`KNOWN_LAYER_THRESHOLD_FIELDS`) for the ``keep`` layers."""
    for name in KNOWN_LAYER_THRESHOLD_FIELDS:
        threshold = getattr(config, name, None)
        if isinstance(threshold, int) and not isinstance(threshold, bool):
            setattr(config, name, sum(1 for i in keep if i < threshold))


def shrink_per_layer_indices(config, keep) -> None:
    """Cut and renumber the config's per-layer lists of layer indices (:data:`KNOWN_PER_LAYER_INDEX_FIELDS`) for the
    ``keep`` layers (0-based, ascending)."""
    n = num_layers(config)
    remap = {old: new for new, old in enumerate(keep)}
    for name in KNOWN_PER_LAYER_INDEX_FIELDS:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == n:
            setattr(config, name, [remap.get(values[old], new) for new, old in enumerate(keep)])


def shrink_one_based_indices(config, keep) -> None:
    """Renumber the config's 1-based layer-index lists (:data:`KNOWN_ONE_BASED_LAYER_INDEX_FIELDS`) for the ``keep``
    layers (0-based), dropping the entries of removed layers."""
    remap = {old + 1: new + 1 for new, old in enumerate(keep)}
    for name in KNOWN_ONE_BASED_LAYER_INDEX_FIELDS:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)):
            setattr(config, name, [remap[i] for i in values if i in remap])


def make_rules_explicit(config) -> None:
    """Rewrite the config's index rules as the explicit per-layer fields they imply, where the config has such
    fields (:data:`RULE_REWRITES`; each rewrite checks the fields it needs and leaves other configs alone)."""
    for rewrite in RULE_REWRITES:
        rewrite(config)


def config_layout(config, model_type: str | None = None) -> ConfigLayout:
    """Check that layers can be removed from a model with ``config`` and list its per-layer fields."""
    model_type = getattr(config, "model_type", None) or model_type or "unknown"
    family = FAMILIES.get(model_type, Family())
    if getattr(config, "is_encoder_decoder", False):
        raise DepthpruneError(
            f"unsupported architecture '{model_type}': depthprune removes layers from decoder-only "
            "models, and this is an encoder-decoder model"
        )
    n = num_layers(config)
    if family.blocker is not None:
        reason = family.blocker(config)
        if reason:
            raise DepthpruneError(f"unsupported configuration of '{model_type}': {reason}")
    per_layer, index_fields = _layer_fields(config, n, family)
    return ConfigLayout(model_type, n, per_layer, index_fields, family.layers_path)


def layout(model: nn.Module) -> LayerLayout:
    """Describe the decoder layers of ``model``; a clear error if they cannot be found."""
    config = model.config
    cfg = config_layout(config, type(model).__name__)
    model_type, n = cfg.model_type, cfg.num_layers
    path = _find_layer_list(model, n, cfg.preferred_path)
    if path is None:
        raise DepthpruneError(
            f"unsupported architecture '{model_type}': found no ModuleList of {n} decoder layers "
            f"(looked at {', '.join(COMMON_LAYER_PATHS)} and every ModuleList in the model)"
        )
    return LayerLayout(model_type, path, cfg.per_layer_fields, cfg.layer_index_fields)


def _layer_fields(config, n: int, family: Family) -> tuple[list[str], list[str]]:
    index_fields = [f for f in KNOWN_LAYER_INDEX_FIELDS + family.layer_index_fields
                    if isinstance(getattr(config, f, None), (list, tuple))]
    per_layer = []
    for name, value in config.__dict__.items():
        if name.startswith("_") or name in index_fields or name in KNOWN_ONE_BASED_LAYER_INDEX_FIELDS \
                or name in KNOWN_PER_LAYER_INDEX_FIELDS:
            continue  # index lists are renumbered, never cut by position
        # a pattern field counts once rewritten as one entry per layer (its pattern form may have any length)
        known = name in KNOWN_PER_LAYER_FIELDS + family.per_layer_fields + tuple(KNOWN_PATTERN_FIELDS)
        # Only lists named like per-layer data count: a token-id list that happens
        # to have n entries (eos_token_id=[1, 106] on a 2-layer model) must not shrink.
        if isinstance(value, (list, tuple)) and len(value) == n and (known or "layer" in name):
            per_layer.append(name)
    for name in KNOWN_PER_LAYER_FIELDS + family.per_layer_fields:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)) and len(value) != n:
            raise DepthpruneError(
                f"inconsistent config: '{name}' has {len(value)} entries but the model has {n} layers"
            )
    return sorted(set(per_layer)), sorted(set(index_fields))


def input_device(model: nn.Module):
    """The device the model's token embeddings (its inputs) live on."""
    return model.get_input_embeddings().weight.device


def weight_bytes(model: nn.Module, *, buffers: bool = False) -> int:
    """Bytes the model's parameters (and, with ``buffers``, its buffers) take at their dtypes; tied weights once."""
    tensors = {id(p): p for p in model.parameters()}
    if buffers:
        tensors.update({id(b): b for b in model.buffers()})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def parameter_count(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
