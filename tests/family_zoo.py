"""Tiny random-weight configs for any transformers causal-LM family, with its per-layer index rules switched on.

A family's config class is built with its own defaults, shrunk to a few dimensions (the fields below, where the
class has them), eight layers, and every index-rule field set so that layer kinds really alternate (an MoE layer
every second position, the first two layers dense, attention every fourth layer, ...). Where a family's config
rejects the generic sizes, ``FAMILY_SIZES`` adds the few it needs; families that still do not build are reported
as not built; the tests and ``bench/family_table.py`` use the rest.
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


# per-family sizes where the generic ones above do not fit the family's config (merged over them, applied whether or
# not the class's defaults name the field); each entry says what the config requires
_INDEXER = dict(index_topk=4, index_head_dim=8, index_n_heads=2)  # sparse-attention indexer: top-4 of 24 tokens
FAMILY_SIZES: dict[str, dict] = {
    # multi-head latent attention with a sparse indexer: key/value heads equal the query heads; MoE every second
    # layer after two dense ones (first_k_dense_replace / moe_layer_freq build mlp_layer_types)
    "axk2": dict(num_key_value_heads=4, first_k_dense_replace=2, moe_layer_freq=2, **_INDEXER),
    "deepseek_v32": dict(num_key_value_heads=4, **_INDEXER),
    # every second layer reuses the previous indexer's selection (indexer_types full/shared)
    "glm_moe_dsa": dict(num_key_value_heads=4, index_topk_freq=2, **_INDEXER),
    # the sliding layers' own attention sizes (swa_*) must fit too; heads equal key/value heads
    "dots3_note_text": dict(num_key_value_heads=4, first_k_dense_replace=2, moe_layer_freq=2, **_INDEXER,
                            swa_num_attention_heads=4, swa_num_key_value_heads=4, swa_q_lora_rank=16,
                            swa_kv_lora_rank=16, swa_head_dim=8, swa_qk_nope_head_dim=4, swa_v_head_dim=8),
    # expert routing fields under attribute_map names the generic sizes miss (n_group, num_experts_per_tok); full
    # attention every third layer; per-layer expert SwiGLU limits that differ, so cutting them with the layers counts
    "bailing_hybrid": dict(n_group=1, topk_group=1, num_experts_per_tok=2, num_key_value_heads=4, layer_group_size=3,
                           expert_swiglu_limit_list=[1.0, 2.0, 0.5, 3.0, 1.5, 2.5, 0.75, 4.0],
                           share_expert_swiglu_limit_list=[2.0, 0.5, 1.0, 0, 3.0, 0.75, 1.5, 2.5]),
    "kimi_linear": dict(num_experts_per_tok=2, n_group=1, topk_group=1, linear_head_dim=8, linear_num_heads=4,
                        first_k_dense_replace=2),
    # rotary parameters per layer type (none: the full-attention layers use no positions)
    "cohere_compass_text": dict(layer_types=["sliding_attention"] * 3 + ["full_attention"] + ["sliding_attention"] * 3
                                + ["full_attention"],
                                rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                                 "full_attention": None}),
    # the last four layers reuse the key/values of the last layer of each kind before them; per-layer embeddings
    "gemma3n_text": dict(num_kv_shared_layers=4, layer_types=(["sliding_attention"] * 3 + ["full_attention"]) * 2,
                         vocab_size_per_layer_input=128, hidden_size_per_layer_input=8, laurel_rank=4,
                         activation_sparsity_pattern=[0.95, 0.95] + [0.0] * 6),
    # global/local runs (attention_types) expanded into attention_layers; a local window shorter than the probe
    "gpt_neo": dict(attention_types=[[["global", "local"], 4]], window_size=8),
    # key/value rounding to NVFP4 needs head_dim a multiple of 16; indexed attention every second layer, of which
    # layers 3 and 5 read the keys/values of layer 1 (kv_source_layers) and layers 1, 5, 7 select a key pool
    "kolibri1_1": dict(head_dim=16, index_num_heads=2, index_topk=4, index_pool_size=16, index_compression=4,
                       index_num_local_tokens=4, index_num_sink_tokens=2, mlp_only_intermediate_size=64,
                       layer_types=["sliding_attention", "indexed_attention"] * 4),
    "lfm2_moe": dict(layer_types=["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv",
                                  "full_attention"]),
    # the QSA indexer and hyper-connection sizes have no defaults that fit; per-layer n-gram embeddings on the
    # (1-based) layers 2 and 6 with a tiny n-gram vocabulary
    "qwen4_exp_text": dict(indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=8, indexer_budget=8,
                           indexer_compress_ratio=2, hc_count=2, hc_lowrank=4, ple_layer_ids=[2, 6], ple_embed_dim=16,
                           heads_per_ngram=2, ngram_vocab_size_base=101, make_ngram_vocab_size_divisible_by=8,
                           split_ngram_parts=2, output_gate_type="sigmoid"),
    # block_types is a pattern repeated over the layers (3 entries for 8 layers), not one entry per layer
    "recurrent_gemma": dict(block_types=["recurrent", "recurrent", "attention"], attention_window_size=8),
    # hybrid layers (a shared transformer block, two of them alternating, with per-hybrid-layer adapters) among
    # Mamba2 layers; the pure-torch Mamba path
    "zamba2": dict(layers_block_type=["mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba", "hybrid", "mamba"],
                   n_mamba_heads=4, use_mamba_kernels=False, chunk_size=8, num_mem_blocks=2,
                   use_shared_attention_adapter=True, adapter_rank=4, num_key_value_heads=4),
    # one expert per token is all ZAYA supports; sliding and full hybrid layers mixed
    "zaya": dict(num_experts_per_tok=1, router_hidden_size=16,
                 layer_types=["hybrid_sliding", "hybrid_sliding", "hybrid", "hybrid_sliding", "hybrid_sliding",
                              "hybrid", "hybrid_sliding", "hybrid"]),
}


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
    kwargs.update(FAMILY_SIZES.get(model_type, {}))
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
