"""Pruning a safetensors checkpoint on disk against in-memory surgery + save_pretrained."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import depthprune as dp
from depthprune.errors import DepthpruneError
from depthprune.surgery.on_disk import prune_checkpoint

from tiny import ARCHS, batch, tiny_model


def removal_for(family):
    n = ARCHS[family][0]().num_hidden_layers
    return [1, 2] if n == 4 else [2, 4]  # gemma3 (6 layers): one full and one sliding layer


def all_tensors(directory):
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(load_file(path))
    return out


def config_dict(directory):
    data = json.loads((directory / "config.json").read_text())
    data.pop("transformers_version", None)
    return data


@pytest.mark.parametrize("family", sorted(ARCHS))
def test_checkpoint_pruning_equals_in_memory_surgery(family, tmp_path):
    model = tiny_model(family)
    removed = removal_for(family)
    src, ref, out = tmp_path / "src", tmp_path / "ref", tmp_path / "out"
    model.save_pretrained(src, max_shard_size="40KB")  # several shards, layers split across them
    (src / "tokenizer_config.json").write_text("{}")
    assert len(list(src.glob("*.safetensors"))) > 1
    dp.pruned_copy(model, removed).save_pretrained(ref)

    result = prune_checkpoint(src, removed, out)

    got, expected = all_tensors(out), all_tensors(ref)
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert config_dict(out) == config_dict(ref)
    assert (out / "tokenizer_config.json").is_file() and (out / "generation_config.json").is_file()
    assert result.kept_layers == [i for i in range(result.num_layers_before) if i not in removed]
    if len(result.shards) > 1:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(got)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in got.values())
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    pruned = dp.pruned_copy(model, removed)
    ids, mask = batch()
    with torch.no_grad():
        a = pruned(input_ids=ids, attention_mask=mask).logits
        b = reloaded(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(b, a, atol=0, rtol=0)


def test_single_file_checkpoint_and_refusals(tmp_path):
    model = tiny_model("llama")
    src = tmp_path / "src"
    model.save_pretrained(src)
    out = tmp_path / "out"
    result = prune_checkpoint(src, [3], out)
    assert result.shards == ["model.safetensors"] and result.num_layers_after == 3
    assert result.params_after < result.params_before
    with pytest.raises(DepthpruneError, match="already exists"):
        prune_checkpoint(src, [3], out)
    with pytest.raises(DepthpruneError, match="out of range"):
        prune_checkpoint(src, [4], tmp_path / "other")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(DepthpruneError, match="no safetensors weights"):
        prune_checkpoint(tmp_path / "empty", [1], tmp_path / "other")
    assert not (tmp_path / "other").exists()
