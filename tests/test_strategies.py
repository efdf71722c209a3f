"""Strategies against plainly written references: greedy-ppl vs the naive deep-copy loop, iterative vs
re-scoring pruned copies by hand, block contiguity/protection, the pruned view, API/CLI errors."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import depthprune as dp
from depthprune.errors import DepthpruneError
from depthprune.selection.greedy import greedy_ppl
from depthprune.importance.scoring import layer_scores
from depthprune.selection.strategies import compute_scores, plan, select
from depthprune.surgery.in_memory import pruned_view

from tiny import batch, tiny_model


def full_loss(model, ids, mask):
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    keep = mask[:, 1:].bool() & mask[:, :-1].bool()
    return float(F.cross_entropy(logits[:, :-1][keep].double(), ids[:, 1:][keep]))


def naive_greedy(model, ids, mask, n, protected=()):
    """SLEB greedy, the obvious slow way: deep-copy, remove, full forward for every candidate."""
    order = []
    for _ in range(n):
        total = model.config.num_hidden_layers
        trial = {}
        for c in range(total):
            if c in order or c in protected:
                continue
            pruned = dp.remove_layers(copy.deepcopy(model), sorted(order + [c]))
            trial[c] = full_loss(pruned, ids, mask)
        best = min(trial, key=lambda c: (trial[c], c))
        order.append(best)
    return order, trial[best]


@pytest.mark.parametrize("family,n,protect_last", [("llama", 3, 0), ("gemma3", 3, 1), ("falcon", 2, 0)])
def test_greedy_ppl_with_cache_equals_naive_loop(family, n, protect_last):
    model = tiny_model(family)
    ids, mask = batch(n=4, pad_last=3)
    total = model.config.num_hidden_layers
    got = greedy_ppl(model, dp.from_tensors(ids, mask), n, protect_last=protect_last, batch_size=3, progress=False)
    expected, last_loss = naive_greedy(model, ids, mask, n, protected=range(total - protect_last, total))
    assert got.order == expected
    assert got.losses[-1] == pytest.approx(last_loss, abs=1e-4)
    assert got.dense_loss == pytest.approx(full_loss(model, ids, mask), abs=1e-4)


@pytest.mark.parametrize("metric", ["bi", "angular", "relative-magnitude", "taylor", "ppl"])
def test_iterative_with_one_layer_equals_one_shot(metric):
    model = tiny_model("qwen3")
    calib = dp.from_tensors(*batch(n=4))
    a = dp.prune(model, remove=1, data=calib, metric=metric, strategy="iterative", progress=False).report
    b = dp.prune(model, remove=1, data=calib, metric=metric, strategy="one-shot", progress=False).report
    assert a.removed_layers == b.removed_layers
    assert a.strategy == "iterative" and b.strategy == "one-shot"


def test_iterative_rescores_the_pruned_model_and_reports_original_numbers():
    model = tiny_model("gemma3")  # 6 layers
    ids, mask = batch(n=4)
    calib = dp.from_tensors(ids, mask)
    # by hand: score, remove the lowest, score a pruned copy, map its numbering back, and so on
    kept, order = list(range(6)), []
    current = copy.deepcopy(model)
    for _ in range(3):
        scores = layer_scores(current, calib, ["bi"], progress=False)[0]["bi"]
        pos = min(range(len(scores)), key=lambda i: (scores[i], i))
        order.append(kept.pop(pos))
        current = dp.remove_layers(current, [pos])
    sel, _ = select(model, calib, 3, metric="bi", strategy="iterative", progress=False)
    assert sel.order == order and sel.removed == sorted(order)
    # and the model itself is untouched
    assert model.config.num_hidden_layers == 6 and len(model.model.layers) == 6


@pytest.mark.parametrize("metric", ["angular", "angular-all", "bi", "relative-magnitude"])
def test_block_is_contiguous_and_respects_protection(metric):
    model = tiny_model("gemma3")
    calib = dp.from_tensors(*batch(n=4))
    chosen, scores = plan(model, calib, [2, 3], metric=metric, strategy="block", protect_last=1, progress=False)
    for n, sel in chosen.items():
        start = sel.removed[0]
        assert sel.removed == list(range(start, start + n))
        assert 5 not in sel.removed
    # the chosen block is the lowest-scoring allowed one
    if metric.startswith("angular"):
        blocks = compute_scores(model, calib, [metric], block_sizes=[3])[metric].blocks[3]
    else:
        s = scores.scores
        blocks = [sum(s[i:i + 3]) for i in range(4)]
    assert chosen[3].removed[0] == min(range(3), key=lambda i: (blocks[i], i))


def test_protection_applies_to_every_strategy():
    model = tiny_model("gemma3")
    calib = dp.from_tensors(*batch(n=3))
    for strategy in ("one-shot", "iterative", "block", "greedy-ppl"):
        sel, _ = select(model, calib, 2, strategy=strategy, protect_first=1, protect_last=2, progress=False)
        assert not set(sel.removed) & {0, 4, 5}, strategy


def test_pruned_view_is_the_pruned_model_and_restores_everything():
    model = tiny_model("gemma3")
    ids, mask = batch()
    before = model.config.to_dict()
    with torch.no_grad():
        dense = model(input_ids=ids, attention_mask=mask).logits
        expected = dp.pruned_copy(model, [1, 2])(input_ids=ids, attention_mask=mask).logits
        with pruned_view(model, [1, 2]):
            inside = model(input_ids=ids, attention_mask=mask).logits
            assert model.config.num_hidden_layers == 4
        after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(inside, expected, atol=0, rtol=0)
    torch.testing.assert_close(after, dense, atol=0, rtol=0)
    assert model.config.to_dict() == before
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(6))


@pytest.mark.parametrize("metric,strategy,match", [
    ("taylor", "block", "strategy 'block' needs"),
    ("ppl", "block", "strategy 'block' needs"),
    ("bi", "greedy-ppl", "greedy-ppl' ranks layers by calibration loss"),
    ("bi", "sideways", "unknown strategy 'sideways'"),
])
def test_bad_combinations_are_clear_errors(metric, strategy, match):
    with pytest.raises(DepthpruneError, match=match):
        dp.prune(tiny_model("llama"), remove=1, data=dp.from_tensors(*batch()), metric=metric, strategy=strategy,
                 progress=False)


def test_prune_report_names_strategy_metric_and_order():
    model = tiny_model("llama")
    result = dp.prune(model, remove=2, data=dp.from_tensors(*batch()), strategy="greedy-ppl", progress=False)
    report = result.report
    assert report.strategy == "greedy-ppl" and report.metric == "ppl"
    assert sorted(report.selection["order"]) == report.removed_layers
    assert len(report.scores) == 4 and all(math.isfinite(s) for s in report.scores)
    assert result.model.config.num_hidden_layers == 2


def test_score_previews_a_selection_and_reports_block_scores():
    import json

    model = tiny_model("llama")
    calib = dp.from_tensors(*batch(n=3))
    rep = dp.score(model, data=calib, metric="angular", block_sizes=[1, 2, 3], strategy="block", remove=2,
                   progress=False)
    assert set(rep.block_scores) == {1, 2, 3} and len(rep.block_scores[2]) == 3
    start = rep.selection["removed_layers"][0]
    assert rep.selection["removed_layers"] == [start, start + 1]
    assert start == min(range(3), key=lambda s: (rep.block_scores[2][s], s))
    assert json.loads(json.dumps(rep.to_json()))["block_scores"]["2"] == rep.block_scores[2]
    with pytest.raises(DepthpruneError, match="block sizes must be between 1 and 4"):
        dp.score(model, data=calib, metric="angular", block_sizes=[9], progress=False)
