"""Analytic forward-pass FLOPs of a decoder-only model, from its config alone.

The count is the usual "2 x multiply-accumulates of the matrix products":

* per layer, attention projections: ``2 * d * head_dim * (2 * n_heads + 2 * n_kv_heads)``
  (q and o are ``d x n_heads*head_dim``, k and v are ``d x n_kv_heads*head_dim``);
* per layer, attention itself at context length ``c`` (the keys the token attends to):
  ``4 * n_heads * head_dim * c_eff`` (``q.k`` plus ``weights.v``), where ``c_eff = min(c, window)``
  on sliding-window layers;
* per layer, MLP: gated (SwiGLU/GeGLU: gate, up, down) ``6 * d * ff``, plain (GPT-2, NeoX, OPT,
  Falcon) ``4 * d * ff``; mixture of experts: ``experts_per_token`` experts of size ``ff_expert``
  plus shared experts plus the router ``2 * d * n_experts``;
* LM head: ``2 * d * vocab`` for every position whose logits are computed; the embedding is a
  lookup (0 FLOPs).

Norms, activations, rotary embeddings, residual adds and softmax are O(d) per token
and left out. Prefill of ``T`` tokens is the sum over positions ``t = 1..T`` (causal:
position t attends to t keys), i.e. the ideal causal cost, not the T x T a dense
attention kernel may actually compute. Decode of ``N`` tokens after a prompt of ``P``
tokens is the sum over contexts ``P+1 .. P+N``, each with the LM head.

Layer numbers are 0-based. These numbers give the *ideal* speed ratio of a pruned
model: what one would see if time were proportional to FLOPs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from depthprune.arch.layout import num_layers

# model types whose MLP is a plain two-matrix MLP (no gate projection)
PLAIN_MLP = {"gpt2", "gpt_neox", "opt", "falcon", "gptj", "bloom", "phi", "gpt_bigcode", "starcoder2", "mpt"}


def _first(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


@dataclass(frozen=True)
class Shape:
    """The numbers of a config that the FLOP count needs."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ff: int
    gated: bool
    vocab: int
    layers: int
    experts: int = 0
    experts_per_token: int = 0
    ff_expert: int = 0
    ff_shared: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def shape(config) -> Shape:
    config = getattr(config, "text_config", None) or config
    model_type = getattr(config, "model_type", "")
    hidden = int(_first(config, "hidden_size", "n_embd", "d_model"))
    heads = int(_first(config, "num_attention_heads", "n_head"))
    kv = _first(config, "num_key_value_heads", "num_kv_heads")
    if model_type == "falcon" and kv is None:
        kv = 1 if getattr(config, "multi_query", False) else heads
    head_dim = _first(config, "head_dim", default=None) or hidden // heads
    ff = _first(config, "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", default=None) or 4 * hidden
    experts = int(_first(config, "num_local_experts", "num_experts", "n_routed_experts", default=0) or 0)
    per_token = int(_first(config, "num_experts_per_tok", "moe_topk", default=0) or 0)
    ff_expert = int(_first(config, "moe_intermediate_size", default=ff))
    shared = int(_first(config, "shared_expert_intermediate_size", default=0) or 0)
    if not shared and getattr(config, "n_shared_experts", None):
        shared = int(config.n_shared_experts) * ff_expert
    return Shape(hidden=hidden, heads=heads, kv_heads=int(kv or heads), head_dim=int(head_dim), ff=int(ff),
                 gated=model_type not in PLAIN_MLP, vocab=int(config.vocab_size), layers=num_layers(config),
                 experts=experts, experts_per_token=per_token, ff_expert=ff_expert, ff_shared=shared)


def _is_moe_layer(config, index: int, s: Shape) -> bool:
    if not s.experts or not s.experts_per_token:
        return False
    if index in (getattr(config, "mlp_only_layers", None) or []):
        return False
    step = getattr(config, "decoder_sparse_step", None) or 1
    first_dense = getattr(config, "first_k_dense_replace", None) or 0
    return index >= first_dense and (index + 1) % step == 0


def attention_windows(config) -> list[int | None]:
    """Per layer: the sliding window (keys a token can see), or None for full attention."""
    config = getattr(config, "text_config", None) or config
    n = num_layers(config)
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None and len(types) == n:
        return [window if (window and "sliding" in str(t)) else None for t in types]
    if window and getattr(config, "use_sliding_window", True) and getattr(config, "model_type", "") in (
            "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "starcoder2"):
        return [window] * n
    return [None] * n


def layer_costs(config) -> list[tuple[int, int, int | None]]:
    """Per layer: (FLOPs independent of context, FLOPs per attended key, sliding window or None)."""
    config = getattr(config, "text_config", None) or config
    s = shape(config)
    d = s.hidden
    projections = 2 * d * s.head_dim * (2 * s.heads + 2 * s.kv_heads)
    per_key = 4 * s.heads * s.head_dim
    mats = 3 if s.gated else 2
    costs = []
    for index, window in enumerate(attention_windows(config)):
        if _is_moe_layer(config, index, s):
            mlp = 2 * mats * d * (s.experts_per_token * s.ff_expert + s.ff_shared) + 2 * d * s.experts
        else:
            mlp = 2 * mats * d * s.ff
        costs.append((projections + mlp, per_key, window))
    return costs


def _keys(context: int, window: int | None) -> int:
    return min(context, window) if window else context


def _keys_sum(first: int, last: int, window: int | None) -> int:
    """sum of min(c, window) for c = first..last."""
    if last < first:
        return 0
    if not window or last <= window:
        return (first + last) * (last - first + 1) // 2
    if first > window:
        return window * (last - first + 1)
    return (first + window) * (window - first + 1) // 2 + window * (last - window)


def layer_flops(config, index: int, context: int) -> int:
    """FLOPs of decoder layer ``index`` for one token that attends to ``context`` keys (itself included)."""
    fixed, per_key, window = layer_costs(config)[index]
    return fixed + per_key * _keys(context, window)


def lm_head_flops(config) -> int:
    s = shape(config)
    return 2 * s.hidden * s.vocab


def token_flops(config, context: int, *, lm_head: bool = True) -> int:
    """FLOPs of the whole model for one token attending to ``context`` keys."""
    body = sum(fixed + per_key * _keys(context, window) for fixed, per_key, window in layer_costs(config))
    return body + (lm_head_flops(config) if lm_head else 0)


def _span_flops(config, first: int, last: int) -> int:
    """Decoder-layer FLOPs of the tokens at contexts first..last."""
    count = last - first + 1
    return sum(fixed * count + per_key * _keys_sum(first, last, window)
               for fixed, per_key, window in layer_costs(config))


def prefill_flops(config, seq_len: int, *, logits: str = "last") -> int:
    """FLOPs of one causal forward pass over ``seq_len`` tokens.

    ``logits="last"`` counts the LM head once (as ``generate`` does for the prompt),
    ``"all"`` once per position (as a perplexity pass does).
    """
    heads = seq_len if logits == "all" else 1
    return _span_flops(config, 1, seq_len) + heads * lm_head_flops(config)


def decode_flops(config, prompt_len: int, new_tokens: int) -> int:
    """FLOPs of ``new_tokens`` cached decoding steps after a ``prompt_len`` prompt (LM head every step)."""
    return _span_flops(config, prompt_len + 1, prompt_len + new_tokens) + new_tokens * lm_head_flops(config)
