"""`prune --format gguf` and `prune --quantize`: recipe fields, CLI flags, the saved files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import depthprune as dp
from depthprune.recipe.schema import OutputRecipe, QuantizationRecipe, Recipe, SelectionRecipe
from tiny import tiny_checkpoint


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "depthprune", "-q", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return root, tiny_checkpoint(root / "tiny", num_layers=6)


IDS = torch.tensor([[1, 5, 9, 33, 7, 2, 40, 41]])


def test_cli_gguf_file_equals_surgery(work):
    root, model = work
    out = root / "pruned.gguf"
    r = cli("prune", model, "--layers", "1,4", "--format", "gguf", "--gguf-type", "f32", "--out", out)
    assert r.returncode == 0, r.stderr
    reference = dp.pruned_copy(AutoModelForCausalLM.from_pretrained(model), [1, 4])
    back = AutoModelForCausalLM.from_pretrained(root, gguf_file=out.name, dtype=torch.float32)
    with torch.no_grad():
        assert (back(IDS).logits - reference(IDS).logits).abs().max().item() <= 1e-5
    r = cli("prune", model, "--layers", "1", "--format", "gguf", "--out", out)
    assert r.returncode == 2 and "already exists" in r.stderr


def test_api_gguf_directory_has_report_and_recipe(work):
    root, model = work
    recipe = Recipe(model=model, selection=SelectionRecipe(layers=[2]),
                    output=OutputRecipe(path=str(root / "gdir"), format="gguf", gguf_type="q8_0"))
    dp.run(recipe)
    files = sorted(p.name for p in (root / "gdir").iterdir())
    assert files == ["README.md", "depthprune.json", "model.gguf"]
    report = json.loads((root / "gdir" / "depthprune.json").read_text())
    assert report["recipe"]["output"]["gguf_type"] == "q8_0" and report["removed_layers"] == [2]
    assert report["gguf"]["block_count"] == 5 and report["readback"]["blocks"] == 5


def test_cli_quantize_saves_a_reloadable_torchao_checkpoint(work):
    pytest.importorskip("torchao")
    root, model = work
    out = root / "q8"
    r = cli("prune", model, "--layers", "0,3", "--quantize", "int8", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "int8 weights" in r.stdout
    from depthprune.quantization.weights import quantize_model

    want_model = quantize_model(dp.pruned_copy(AutoModelForCausalLM.from_pretrained(model), [0, 3]), "int8")
    back = AutoModelForCausalLM.from_pretrained(out)
    assert "torchao" in type(back.model.layers[0].mlp.up_proj.weight).__module__
    with torch.no_grad():
        assert (back(IDS).logits - want_model(IDS).logits).abs().max().item() <= 1e-5
    recorded = json.loads((out / "depthprune.json").read_text())["recipe"]
    assert recorded["quantization"] == {"method": "int8", "group_size": 32}


def test_bad_combinations_fail_before_loading():
    with pytest.raises(dp.DepthpruneError, match="gguf-type q8_0 instead"):
        Recipe(model="m", selection=SelectionRecipe(layers=[1]), quantization=QuantizationRecipe(method="int8"),
               output=OutputRecipe(format="gguf")).validate()
    with pytest.raises(dp.DepthpruneError, match="unknown quantization"):
        Recipe(model="m", selection=SelectionRecipe(layers=[1]), quantization=QuantizationRecipe(method="int2")).validate()
    with pytest.raises(dp.DepthpruneError, match="gguf-type"):
        Recipe(model="m", selection=SelectionRecipe(layers=[1]), output=OutputRecipe(format="gguf", gguf_type="q2")).validate()
    r = cli("prune", "nonexistent-dir/", "--layers", "1", "--quantize", "int3", "--out", "x")
    assert r.returncode == 2 and "unknown quantization 'int3'" in r.stderr
