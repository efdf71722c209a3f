"""Tiny random-weight configs for any transformers causal-LM family, with its per-layer index rules switched on.

A family's config class is built with its own defaults, shrunk to a few dimensions (the fields below, where the
class has them), eight layers, and every index-rule field set so that layer kinds really alternate (an MoE layer
every second position, the first two layers dense, attention every fourth layer, ...). Families whose config
rejects such generic sizes are reported as not built; the tests and ``bench/family_table.py`` use the rest.
"""

from __future__ import annotations

import torch
import transformers as tf
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

N_LAYERS = 8

SIZES = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    max_position_embeddings=256, moe_intermediate_size=16, shared_expert_intermediate_size=16, num_experts=4,
    num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1,
    kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, mamba_d_state=4,
    mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=4, ssm_state_size=4, mamba_n_heads=4, mamba_head_dim=16,
    mamba_n_groups=1, expert_intermediate_size=16, sliding_window=8, moe_num_experts=4, moe_k=2, moe_topk=2,
    num_shared_experts=1, linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=8,
    linear_value_head_dim=8, d_model=32, n_embd=32, n_head=4, rope_dim=4, partial_rotary_factor=1.0, pad_token_id=0,
    bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
)

# index rules switched on (only where the config class has the field as an integer)
RULES = dict(
    first_k_dense_replace=2, decoder_sparse_step=2, moe_layer_freq=2, interleave_moe_layer_step=2,
    attn_layer_period=4, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
    global_attn_every_n_layers=3, num_dense_layers=2, full_attention_interval=4, sliding_window_pattern=3,
    no_rope_layer_interval=4, moe_layer_start_index=2, moe_layer_interval=2, max_window_layers=4, mamba_step=2,
)

# explicit per-layer fields left to the config class to derive from the rules above
DERIVED = ("layer_types", "mlp_only_layers", "hybrid_override_pattern", "layers_block_type", "no_rope_layers",
           "block_types")

RULE_FIELD_NAMES = tuple(RULES) + DERIVED + ("use_sliding_window", "moe_layers", "attn_layer_indices",
                                             "full_attn_idxs", "mlp_layer_types", "attention_layers")


def causal_families() -> dict[str, list[str]]:
    """model_type -> the per-layer / index-rule fields its default config has, for every causal-LM family that has
    any."""
    out = {}
    for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        if model_type not in CONFIG_MAPPING:
            continue
        try:
            defaults = CONFIG_MAPPING[model_type]().to_dict()
        except Exception:
            continue
        fields = [f for f in RULE_FIELD_NAMES if f in defaults]
        if fields:
            out[model_type] = fields
    return out


def tiny_config(model_type: str, n_layers: int = N_LAYERS):
    cls = CONFIG_MAPPING[model_type]
    defaults = cls().to_dict()
    kwargs = {k: v for k, v in SIZES.items() if k in defaults}
    for k in ("num_hidden_layers", "num_layers", "n_layer", "n_layers"):
        if k in defaults:
            kwargs[k] = n_layers
    for k in DERIVED:
        if k in defaults:
            kwargs[k] = None
    for k, v in RULES.items():
        if k in defaults and (defaults[k] is None or type(defaults[k]) is int):
            kwargs[k] = v
    if "use_sliding_window" in defaults:
        kwargs["use_sliding_window"] = True
    if "qk_rope_head_dim" in defaults:  # multi-head latent attention: the rotary part is the head_dim
        kwargs["head_dim"] = kwargs["qk_rope_head_dim"]
    return cls(**kwargs)


def tiny_family_model(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A random-weight model of the family (weights scaled up so layers differ visibly); it has run one forward."""
    config = tiny_config(model_type)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
        model(input_ids=probe(), use_cache=False)
    return model


def probe() -> torch.Tensor:
    """Token ids longer than the tiny sliding window (8), so a sliding/full switch changes the logits."""
    return torch.randint(3, 100, (1, 24), generator=torch.Generator().manual_seed(1))
