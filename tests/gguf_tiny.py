"""Tiny random-weight GGUF files written with the gguf package (Llama architecture), for unit tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

VOCAB, HIDDEN, FFN, HEADS, KV_HEADS = 128, 64, 128, 4, 2


def write_tiny_gguf(path: Path, *, n_layers: int = 4, quant: GGMLQuantizationType = GGMLQuantizationType.Q8_0,
                    seed: int = 0, per_layer_ffn: list[int] | None = None, per_layer_kv: list[int] | None = None,
                    alignment: int | None = None, merges: list[str] | None = None) -> Path:
    """A Llama-architecture GGUF with random weights; matrices in ``quant`` (F32 or a quantized type), norms F32.

    ``per_layer_ffn`` / ``per_layer_kv`` write ``llama.feed_forward_length`` / ``llama.attention.head_count_kv``
    as per-layer arrays (llama.cpp's ``get_key_or_arr``), for metadata tests.
    """
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS
    w = GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_block_count(n_layers)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    if per_layer_ffn is None:
        w.add_feed_forward_length(FFN)
    else:
        w.add_array("llama.feed_forward_length", per_layer_ffn)
    w.add_head_count(HEADS)
    if per_layer_kv is None:
        w.add_head_count_kv(KV_HEADS)
    else:
        w.add_array("llama.attention.head_count_kv", per_layer_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(["<unk>", "<s>", "</s>", "a", "b", "ab"] + [f"t{i}" for i in range(6, VOCAB)])
    w.add_token_types([1] * VOCAB)
    w.add_token_merges(merges or ["a b"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_float64("general.test_float64", 0.1)
    w.add_bool("general.test_bool", True)

    def add(name: str, shape: tuple[int, ...], q: GGMLQuantizationType) -> None:
        a = (rng.standard_normal(shape) * 0.5).astype(np.float32)
        if q == GGMLQuantizationType.F32:
            w.add_tensor(name, a)
        else:
            w.add_tensor(name, quantize(a, q), raw_dtype=q)

    add("token_embd.weight", (VOCAB, HIDDEN), quant)
    for i in range(n_layers):
        ffn = FFN if per_layer_ffn is None else per_layer_ffn[i]
        kv = KV_HEADS if per_layer_kv is None else per_layer_kv[i]
        add(f"blk.{i}.attn_norm.weight", (HIDDEN,), GGMLQuantizationType.F32)
        add(f"blk.{i}.attn_q.weight", (HIDDEN, HIDDEN), quant)
        add(f"blk.{i}.attn_k.weight", (kv * head_dim, HIDDEN), quant)
        add(f"blk.{i}.attn_v.weight", (kv * head_dim, HIDDEN), quant)
        add(f"blk.{i}.attn_output.weight", (HIDDEN, HIDDEN), quant)
        add(f"blk.{i}.ffn_norm.weight", (HIDDEN,), GGMLQuantizationType.F32)
        add(f"blk.{i}.ffn_gate.weight", (ffn, HIDDEN), quant)
        add(f"blk.{i}.ffn_up.weight", (ffn, HIDDEN), quant)
        add(f"blk.{i}.ffn_down.weight", (HIDDEN, ffn), quant)
    add("output_norm.weight", (HIDDEN,), GGMLQuantizationType.F32)
    add("output.weight", (VOCAB, HIDDEN), quant)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
