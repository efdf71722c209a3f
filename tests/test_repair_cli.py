"""Repair through the CLI and the API: prune --repair, depthprune repair on an existing output, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune.api import repair as repair_api
from depthprune.api import run as run_recipe
from depthprune.io.data import build_calibration
from depthprune.errors import DepthpruneError
from depthprune.recipe.schema import CalibrationRecipe, Recipe, RepairRecipe, SelectionRecipe, OutputRecipe
from depthprune.repair import linear_repair
from test_cli import CALIB, TEXT, run
from tiny import tiny_checkpoint, tiny_tokenizer

pytest.importorskip("peft")
IDS = torch.tensor([[5, 17, 33, 60, 81, 99, 120, 140, 7, 9, 11, 250]])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("repair-cli")
    model = tiny_checkpoint(root / "tiny", num_layers=6)
    (root / "calib.txt").write_text(TEXT, encoding="utf-8")
    return root, model


def _logits(path_or_model):
    m = path_or_model
    if not isinstance(m, torch.nn.Module):
        m = AutoModelForCausalLM.from_pretrained(m).eval()
    with torch.no_grad():
        return m(input_ids=IDS).logits


def test_prune_repair_linear_matches_the_api_and_repair_command_matches_prune(work, tmp_path):
    root, model = work
    out = tmp_path / "linear"
    result = run("prune", model, "--layers", "2,3", "--repair", "linear", "--data", root / "calib.txt", *CALIB,
                 "--out", out)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "depthprune.json").read_text())
    assert report["repair"]["methods"] == ["linear"] and report["recipe"]["repair"]["methods"] == ["linear"]
    assert report["repair"]["linear"]["runs"][0]["source"] == 1

    # independent path: the Python functions on the same calibration windows
    dense = AutoModelForCausalLM.from_pretrained(model).eval()
    cal = build_calibration(str(root / "calib.txt"), tiny_tokenizer(), samples=4, seq_len=32, seed=0)
    expected, _ = linear_repair(dense, cal, [2, 3], progress=False)
    assert (_logits(out) - _logits(expected)).abs().max() <= 1e-4

    # `depthprune repair` on a plain pruned output of the same removal gives the same model
    plain = tmp_path / "plain"
    run_recipe(Recipe(model=model, calibration=CalibrationRecipe(data=str(root / "calib.txt"), samples=4, seq_len=32,
                                                                  batch_size=2),
                      selection=SelectionRecipe(layers=[2, 3]), output=OutputRecipe(path=str(plain))), progress=False)
    again = tmp_path / "again"
    result = run("repair", plain, "--method", "linear", "--out", again)
    assert result.returncode == 0, result.stderr
    assert (_logits(again) - _logits(out)).abs().max() <= 1e-4
    rep = json.loads((again / "depthprune.json").read_text())["repair"]
    assert rep["repaired_from"] == str(plain) and rep["linear"]["calibration_tokens"] == 4 * 32

    # linear then lora composes, the result is plain and generates with a KV cache
    both = tmp_path / "both"
    res = repair_api(plain, RepairRecipe(methods=["linear", "lora"], data=str(root / "calib.txt"), tokens=128,
                                         seq_len=32, batch_size=2, eval_every=1), out=both, progress=False)
    assert res.report.repair["lora"]["steps_done"] >= 1
    reloaded = AutoModelForCausalLM.from_pretrained(both).eval()
    assert (_logits(reloaded) - _logits(res.model)).abs().max() <= 1e-4
    kw = dict(max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(reloaded.generate(IDS[:, :5], **kw), res.model.generate(IDS[:, :5], **kw))


def test_bad_repair_requests(work, tmp_path):
    root, model = work
    result = run("prune", model, "--layers", "0,1", "--repair", "linear", "--data", root / "calib.txt", *CALIB,
                 "--out", tmp_path / "x")
    # the refusal comes after loading the model, so library warnings (e.g. a broken torchao) may precede it
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "layer 0" in last, result.stderr
    assert not (tmp_path / "x").exists()
    with pytest.raises(DepthpruneError, match="unknown repair method"):
        RepairRecipe(methods=["magic"]).validate()
    with pytest.raises(DepthpruneError, match="--repair-data"):
        RepairRecipe(methods=["lora"]).validate()
    with pytest.raises(DepthpruneError, match="linear,lora"):
        RepairRecipe(methods=["lora", "linear"], data=str(root / "calib.txt")).validate()
    with pytest.raises(DepthpruneError, match="not a depthprune output"):
        repair_api(tmp_path, RepairRecipe(methods=["linear"]), progress=False)


def test_a_repair_that_raises_heldout_perplexity_is_reported_and_warned(work, tmp_path, monkeypatch, caplog):
    import logging

    from depthprune.pipeline.stages import prune as stage

    root, model = work
    plain = tmp_path / "plain"
    run_recipe(Recipe(model=model, calibration=CalibrationRecipe(data=str(root / "calib.txt"), samples=4, seq_len=32,
                                                                  batch_size=2),
                      selection=SelectionRecipe(layers=[2, 3]), output=OutputRecipe(path=str(plain))), progress=False)
    real = stage.fold_linear_maps

    def harmful(model, *args, **kwargs):  # the real repair, then a change that makes every prediction worse
        real(model, *args, **kwargs)
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(-1.0)

    monkeypatch.setattr(stage, "fold_linear_maps", harmful)
    spec = RepairRecipe(methods=["linear"])
    with caplog.at_level(logging.WARNING):
        res = repair_api(plain, spec, eval_ppl=str(root / "calib.txt"), ppl_max_tokens=256, ppl_seq_len=32,
                         progress=False)
    verdict = res.report.repair["heldout"]
    # independent reference: the perplexities the report recorded, compared here
    assert verdict["unrepaired_ppl"] == res.report.perplexity["unrepaired"]["ppl"]
    assert verdict["repaired_ppl"] == res.report.perplexity["pruned"]["ppl"] > verdict["unrepaired_ppl"]
    assert verdict["improved"] is False and "did not lower held-out perplexity" in caplog.text
