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
    "block_types",
    "layers_block_type",
    "attention_layers",
    "moe_layers_enabled",
)

# Config attributes that hold a list of layer *indices* (renumbered, entries of
# removed layers dropped).
KNOWN_LAYER_INDEX_FIELDS = (
    "mlp_only_layers",
)


def _gpt2_blocker(config) -> str | None:
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        return (
            "this GPT-2 config sets scale_attn_by_inverse_layer_idx, which ties each layer's "
            "attention scale to its position, so removing layers would change the layers that stay"
        )
    return None


def _explicit_sparse_layers(config) -> None:
    """Qwen2/3-MoE: layer i is sparse iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0. The
    rule follows the index, so before layers are removed it is rewritten as the explicit list it implies
    (decoder_sparse_step 1, every dense layer in mlp_only_layers), which renumbering then keeps exact."""
    step = getattr(config, "decoder_sparse_step", 1) or 1
    experts = getattr(config, "num_experts", 0) or 0
    dense_only = set(getattr(config, "mlp_only_layers", None) or [])
    n = num_layers(config)
    if step == 1 or experts <= 0:
        return
    config.mlp_only_layers = [i for i in range(n) if i in dense_only or (i + 1) % step != 0]
    config.decoder_sparse_step = 1


@dataclass(frozen=True)
class Family:
    """Small overrides for one ``config.model_type``."""

    layers_path: str | None = None
    per_layer_fields: tuple[str, ...] = ()
    layer_index_fields: tuple[str, ...] = ()
    blocker: Callable[[object], str | None] | None = None
    # rewrites an index rule of the config as the explicit per-layer fields it implies (original numbering)
    explicit_rule: Callable[[object], None] | None = None


FAMILIES: dict[str, Family] = {
    "llama": Family("model.layers"),
    "mistral": Family("model.layers"),
    "mixtral": Family("model.layers"),
    "qwen2": Family("model.layers"),
    "qwen3": Family("model.layers"),
    "qwen2_moe": Family("model.layers", layer_index_fields=("mlp_only_layers",), explicit_rule=_explicit_sparse_layers),
    "qwen3_moe": Family("model.layers", layer_index_fields=("mlp_only_layers",), explicit_rule=_explicit_sparse_layers),
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


def make_rules_explicit(config) -> None:
    """Rewrite the config's index rules as explicit per-layer fields, for the families that have a rewrite."""
    family = FAMILIES.get(getattr(config, "model_type", None), Family())
    if family.explicit_rule is not None:
        family.explicit_rule(config)


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
        if name.startswith("_") or name in index_fields:
            continue
        known = name in KNOWN_PER_LAYER_FIELDS + family.per_layer_fields
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


def parameter_count(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
