"""Per-family facts the repair needs: where a layer's MLP output joins the residual stream, how a linear map
on that output folds into the weights, and which modules LoRA adapts.

A layer of every supported family ends as ``x_out = h + m`` where ``h`` is the residual stream (input plus
attention, in series or in parallel) and ``m`` is the MLP branch's contribution. A map ``T`` applied to ``m``
(row vectors: ``m -> m @ T``) is exact to fold wherever ``m`` is the output of a linear projection: its
weight and bias absorb ``T``. Where ``m`` is the output of an elementwise-scaled norm (Gemma 2/3 and OLMo 2
normalise the MLP output before the add), only a *diagonal* ``T`` folds exactly, into the norm's scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from depthprune.errors import DepthpruneError


@dataclass(frozen=True)
class FoldSpec:
    """How one family's MLP output can carry a linear map.

    ``capture``: path (inside a decoder layer) of the module whose output is ``m``.
    ``projections``: paths of the weights ``m`` is linear in (every expert, any shared expert); missing optional
    ones (``?`` suffix) are skipped. ``diagonal``: only a diagonal map folds (into a norm scale).
    ``norm_offset``: the norm computes ``n(x) * (offset + weight)`` (Gemma: 1, OLMo 2: 0).
    """

    capture: str
    projections: tuple[str, ...] = ()
    diagonal: bool = False
    norm_offset: float = 0.0
    blocker: Callable[[object], str | None] | None = None


def _opt_blocker(config) -> str | None:
    if not getattr(config, "do_layer_norm_before", True):
        return ("this OPT config normalises after the residual add (do_layer_norm_before=False), so a map on fc2's "
                "output does not fold exactly")
    return None


_LLAMA = FoldSpec("mlp", ("mlp.down_proj",))
_MOE = FoldSpec("mlp", ("mlp.experts.down_proj", "mlp.shared_expert.down_proj?"))

FOLD_SPECS: dict[str, FoldSpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "phi3": _LLAMA,          # fused gate_up_proj, plain down_proj
    "gemma": _LLAMA,         # Gemma 1 adds the MLP output straight to the residual
    "mixtral": _MOE,
    "qwen2_moe": _MOE,       # the shared expert's sigmoid gate is a per-token scalar: linear in its down_proj
    "qwen3_moe": _MOE,
    "gpt2": FoldSpec("mlp", ("mlp.c_proj",)),                   # Conv1D: weight is (in, out)
    "gpt_neox": FoldSpec("mlp", ("mlp.dense_4h_to_h",)),        # parallel or serial residual: both h + m
    "opt": FoldSpec("fc2", ("fc2",), blocker=_opt_blocker),
    "falcon": FoldSpec("mlp", ("mlp.dense_4h_to_h",)),  # parallel attn: m + attn + x
    "gemma2": FoldSpec("post_feedforward_layernorm", ("post_feedforward_layernorm",), diagonal=True, norm_offset=1.0),
    "gemma3_text": FoldSpec("post_feedforward_layernorm", ("post_feedforward_layernorm",), diagonal=True,
                            norm_offset=1.0),
    "olmo2": FoldSpec("post_feedforward_layernorm", ("post_feedforward_layernorm",), diagonal=True),
}

# LoRA target modules (leaf names peft matches) per family: attention and MLP projections of the kept layers.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen3": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gemma": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gemma2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gemma3_text": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "olmo2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "mixtral": ("q_proj", "k_proj", "v_proj", "o_proj"),   # fused 3-D experts: attention only
    "qwen2_moe": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen3_moe": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt2": ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"),
    "gpt_neox": ("query_key_value", "attention.dense", "dense_h_to_4h", "dense_4h_to_h"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "falcon": ("query_key_value", "self_attention.dense", "dense_h_to_4h", "dense_4h_to_h"),
}


def fold_spec(config) -> FoldSpec:
    """The fold rule for ``config.model_type``; a one-sentence error where no exact fold is known."""
    model_type = getattr(config, "model_type", "?")
    spec = FOLD_SPECS.get(model_type)
    if spec is None:
        raise DepthpruneError(f"linear repair does not know where the MLP output of '{model_type}' layers joins the "
                              "residual stream, so it cannot fold a map exactly; use --repair lora instead")
    if spec.blocker is not None:
        reason = spec.blocker(config)
        if reason:
            raise DepthpruneError(f"linear repair refuses this '{model_type}' model: {reason}; use --repair lora")
    return spec


def lora_targets(config) -> list[str]:
    model_type = getattr(config, "model_type", "?")
    targets = LORA_TARGETS.get(model_type)
    if targets is None:
        raise DepthpruneError(f"LoRA repair has no target-module table for '{model_type}'; "
                              "pass lora_targets= with the projection names of its layers")
    return list(targets)
