"""The recipe: one serialisable description of a run, recorded in depthprune.json and replayable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import depthprune as dp
from depthprune.recipe.schema import Recipe, SelectionRecipe
from tiny import tiny_checkpoint

TEXT = " ".join(f"Line {i} of calibration text about pruning layers." for i in range(300))
CALIB = ["--samples", "4", "--seq-len", "32", "--batch-size", "2"]


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "depthprune", "-q", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    model = tiny_checkpoint(root / "tiny", num_layers=6)
    (root / "calib.txt").write_text(TEXT, encoding="utf-8")
    return root, model


def test_round_trip_and_typos_refused():
    recipe = Recipe(model="m", selection=SelectionRecipe(remove=2, strategy="block", protect_last=1))
    data = json.loads(json.dumps(recipe.to_json()))
    assert Recipe.from_json(data) == recipe
    data["selection"]["remuve"] = 3
    with pytest.raises(dp.DepthpruneError, match="remuve"):
        Recipe.from_json(data)
    with pytest.raises(dp.DepthpruneError, match="version"):
        Recipe.from_json({"model": "m", "version": 99})
    with pytest.raises(dp.DepthpruneError, match="either explicit layers or a count"):
        Recipe(model="m", selection=SelectionRecipe(remove=1, layers=[2])).validate()
    with pytest.raises(dp.DepthpruneError):
        Recipe(model="m", selection=SelectionRecipe(ratio=1.5)).validate()


def test_explicit_layers_equal_surgery(work):
    root, model = work
    result = dp.prune(str(model), layers=[4, 1])
    assert result.report.removed_layers == [1, 4] and result.report.strategy == "given"
    reference = dp.pruned_copy(AutoModelForCausalLM.from_pretrained(model), [1, 4])
    ids = torch.tensor([[1, 5, 9, 33, 7, 2]])
    torch.testing.assert_close(result.model(ids).logits, reference(ids).logits)
    with pytest.raises(dp.DepthpruneError, match="do not exist"):
        dp.prune(str(model), layers=[6])


def test_cli_records_recipe_and_replays_it(work):
    root, model = work
    first = root / "first"
    r = cli("prune", model, "--remove", "2", "--strategy", "iterative", "--data", root / "calib.txt", *CALIB,
            "--protect-first", "1", "--out", first)
    assert r.returncode == 0, r.stderr
    recorded = json.loads((first / "depthprune.json").read_text())
    recipe = recorded["recipe"]
    assert recipe["selection"]["strategy"] == "iterative" and recipe["selection"]["protect_first"] == 1
    assert recipe["calibration"]["samples"] == 4 and recipe["output"]["path"] == str(first)

    # Replay: same layers without repeating any flag; the API run of the same recipe agrees.
    second = root / "second"
    r = cli("prune", "--recipe", first, "--out", second)
    assert r.returncode == 0, r.stderr
    replayed = json.loads((second / "depthprune.json").read_text())
    assert replayed["removed_layers"] == recorded["removed_layers"]
    api = dp.run(Recipe.from_json(recipe).replace("output", path=None))
    assert api.report.removed_layers == recorded["removed_layers"]

    # An explicit flag overrides the replayed value; the rest stays.
    third = root / "third"
    r = cli("prune", "--recipe", first / "depthprune.json", "--remove", "3", "--out", third)
    assert r.returncode == 0, r.stderr
    over = json.loads((third / "depthprune.json").read_text())
    assert len(over["removed_layers"]) == 3 and over["recipe"]["selection"]["strategy"] == "iterative"

    # Replay without --out, or a broken recipe: one sentence, exit 2.
    r = cli("prune", "--recipe", first)
    assert r.returncode == 2 and "--out" in r.stderr and "Traceback" not in r.stderr
    bad = root / "bad.json"
    bad.write_text(json.dumps({"model": str(model), "selection": {"remove": 1, "metricc": "bi"}}))
    r = cli("prune", "--recipe", bad, "--out", root / "fourth")
    assert r.returncode == 2 and "metricc" in r.stderr and not (root / "fourth").exists()
