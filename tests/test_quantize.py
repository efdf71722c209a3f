"""Weight-only int8/int4 quantization (torchao): the weights really are 8/4-bit, and the saved checkpoint reloads."""

from __future__ import annotations

import pytest
import torch

from tiny import batch, tiny_model

pytest.importorskip("torchao")

from depthprune.errors import DepthpruneError
from depthprune.quantization.weights import quantize_model


def _linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")}


@pytest.mark.parametrize("method,levels,group", [("int8", 256, None), ("int4", 16, 32)])
def test_weights_are_quantized_to_the_grid(method, levels, group):
    model = tiny_model("llama")
    original = {n: m.weight.detach().clone() for n, m in _linears(model).items()}
    quantized = quantize_model(model, method, group_size=32)
    assert torch.equal(_linears(model)["model.layers.0.mlp.down_proj"].weight, original["model.layers.0.mlp.down_proj"])
    for name, module in _linears(quantized).items():
        w = original[name]
        assert "torchao" in type(module.weight).__module__, name
        deq = module.weight.dequantize().float()
        # independent check: at most `levels` distinct values per scale group, and error <= half a step
        groups_w = w.reshape(w.shape[0], -1, group or w.shape[1])
        groups_d = deq.reshape(groups_w.shape)
        step = groups_w.abs().amax(-1, keepdim=True) * 2 / (levels - 1)
        assert (groups_d - groups_w).abs().le(step * 0.5 + 1e-6).all(), name
        for row in groups_d.reshape(-1, groups_d.shape[-1])[:8]:
            assert row.unique().numel() <= levels
        assert not torch.equal(deq, w)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_saved_checkpoint_reloads_with_plain_from_pretrained(tmp_path, method):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama")
    ids, mask = batch()
    quantized = quantize_model(model, method, group_size=32)
    with torch.no_grad():
        want = quantized(input_ids=ids, attention_mask=mask).logits
        dense = model(input_ids=ids, attention_mask=mask).logits
    quantized.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert "torchao" in type(reloaded.model.layers[0].mlp.up_proj.weight).__module__
    with torch.no_grad():
        got = reloaded(input_ids=ids, attention_mask=mask).logits
    assert (got - want).abs().max().item() <= 1e-5
    # quantization changed the function, but not wildly
    assert 0 < (want - dense).abs().max().item() < 0.5 * dense.abs().max().item()


def test_bad_requests_are_one_sentence_errors():
    model = tiny_model("llama")
    with pytest.raises(DepthpruneError, match="unknown quantization"):
        quantize_model(model, "int3")
    with pytest.raises(DepthpruneError, match="group size"):
        quantize_model(model, "int4", group_size=128)


def test_the_cli_keeps_the_source_dtype_for_the_tensors_it_does_not_quantize(tmp_path):
    """A bfloat16 checkpoint quantized to int8: embeddings and norms stay bfloat16 (read from the safetensors header,
    not from depthprune's record), as an unquantized save would keep them, not the float32 compute dtype."""
    import json
    import struct

    import transformers as tf

    from test_hostile import run_cli
    from tiny import tiny_checkpoint

    source = tmp_path / "bf16"
    tiny_checkpoint(tmp_path / "f32", num_layers=4)
    tf.AutoModelForCausalLM.from_pretrained(tmp_path / "f32", dtype=torch.bfloat16).save_pretrained(source)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (source / name).write_bytes((tmp_path / "f32" / name).read_bytes())
    out = tmp_path / "q8"
    result = run_cli("prune", source, "--layers", "1", "--quantize", "int8", "--out", out)
    assert result.returncode == 0, result.stderr
    raw = (out / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    dtypes = {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes["model.embed_tokens.weight"] == "BF16" and dtypes["model.norm.weight"] == "BF16", dtypes
    assert "I8" in dtypes.values()
    assert json.loads((out / "depthprune.json").read_text())["save_dtype"] == "bfloat16"
