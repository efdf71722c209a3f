"""The read-back check of written outputs: it passes on correct outputs and catches the structural errors it exists
for (each case breaks the written files or the code that writes them, independently of the check)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from depthprune.arch import layout as arch_layout
from depthprune.io.formats.hf import save_checkpoint
from depthprune.io.readback import ReadbackError, check_checkpoint, check_gguf, probe_ids
from depthprune.surgery.in_memory import pruned_copy, structure_refusal

from gguf_tiny import write_tiny_gguf
from tiny import ARCHS, tiny_model


def _moe():
    config = tf.Qwen2MoeConfig(vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                               shared_expert_intermediate_size=16, num_hidden_layers=6, num_attention_heads=4,
                               num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=2,
                               max_position_embeddings=256)
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(config).eval()


def _reference_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "mixtral"])
def test_a_correct_checkpoint_reads_back_in_float32(tmp_path, family):
    pruned = pruned_copy(tiny_model(family), [1])
    save_checkpoint(pruned, None, tmp_path, "float32")
    result = check_checkpoint(tmp_path, model=pruned, saved_dtype="float32")
    assert result["structure"] == "ok" and result["logits_max_abs_diff"] <= 1e-4
    assert result["save_dtype_effect"] == result["logits_max_abs_diff"]


def test_bfloat16_is_compared_with_the_same_rounded_weights_and_its_effect_recorded(tmp_path):
    pruned = pruned_copy(tiny_model("llama"), [2])
    save_checkpoint(pruned, None, tmp_path, "bfloat16")
    result = check_checkpoint(tmp_path, model=pruned, saved_dtype="bfloat16")
    assert result["logits_max_abs_diff"] <= 1e-4
    # independent reference: the in-memory model with its weights rounded to bfloat16 by hand
    ids = probe_ids(pruned.config, 128)
    rounded = pruned_copy(tiny_model("llama"), [2])
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.allclose(_reference_logits(reloaded, ids), _reference_logits(rounded, ids), atol=1e-4)
    assert result["save_dtype_effect"] > 1e-4  # the dtype itself moves logits, and is reported, not tolerated


def test_a_layer_kind_changed_by_an_index_rule_is_caught(tmp_path, monkeypatch):
    """Qwen2-MoE: sparse iff (i + 1) % decoder_sparse_step == 0. Without rewriting the rule, the saved config builds
    an MoE block where a dense layer was kept (and the reverse)."""
    model = _moe()
    assert structure_refusal(model, [1]) is None  # with the rule made explicit the removal is exact
    monkeypatch.setattr(arch_layout, "RULE_REWRITES", ())
    assert "Qwen2MoeSparseMoeBlock" in structure_refusal(model, [1])
    pruned = pruned_copy(model, [1])
    save_checkpoint(pruned, None, tmp_path, "float32")
    with pytest.raises(ReadbackError, match="does not hold|does not build"):
        check_checkpoint(tmp_path, model=pruned, saved_dtype="float32")


def test_the_rewritten_moe_rule_reads_back_exactly(tmp_path):
    model = _moe()
    pruned = pruned_copy(model, [1])
    assert pruned.config.decoder_sparse_step == 1
    save_checkpoint(pruned, None, tmp_path, "float32")
    assert check_checkpoint(tmp_path, model=pruned, saved_dtype="float32")["logits_max_abs_diff"] <= 1e-4


def test_a_sliding_window_pattern_that_moved_is_caught_by_the_logits_probe(tmp_path):
    """Same parameters, different attention: only the logits (on a probe longer than the window) can tell."""
    pruned = pruned_copy(tiny_model("gemma3"), [0])
    save_checkpoint(pruned, None, tmp_path, "float32")
    config = json.loads((tmp_path / "config.json").read_text())
    config["layer_types"] = ["full_attention" if t == "sliding_attention" else "sliding_attention"
                             for t in config["layer_types"]]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert probe_ids(pruned.config, 128).shape[1] > pruned.config.sliding_window
    with pytest.raises(ReadbackError, match="different logits"):
        check_checkpoint(tmp_path, model=pruned, saved_dtype="float32")


def test_a_checkpoint_missing_a_tensor_is_caught_without_reading_data(tmp_path):
    pruned = pruned_copy(tiny_model("llama"), [1])
    state = {k: v for k, v in pruned.state_dict().items() if "layers.1.mlp.up_proj" not in k}
    pruned.save_pretrained(tmp_path, state_dict=state)
    with pytest.raises(ReadbackError, match="randomly initialised"):
        check_checkpoint(tmp_path)


def test_a_gguf_whose_block_count_lies_is_caught(tmp_path):
    good = write_tiny_gguf(tmp_path / "good.gguf", n_layers=4)
    assert check_gguf(good, expected_blocks=4)["structure"] == "ok"
    with pytest.raises(ReadbackError, match="expected 3"):
        check_gguf(good, expected_blocks=3)
    data = bytearray(good.read_bytes())
    key = b"llama.block_count"
    at = data.index(key) + len(key) + 4  # the uint32 value type, then the value
    data[at:at + 4] = (5).to_bytes(4, "little")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ReadbackError, match="block_count is 5"):
        check_gguf(bad, expected_blocks=5)


def test_every_tiny_family_reads_back(tmp_path):
    for family in ARCHS:
        pruned = pruned_copy(tiny_model(family), [1])
        folder = tmp_path / family
        folder.mkdir()
        save_checkpoint(pruned, None, folder, "float32")
        assert check_checkpoint(folder, model=pruned, saved_dtype="float32")["logits_max_abs_diff"] <= 1e-4, family
