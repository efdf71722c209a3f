"""Streaming metrics (angular, angular-all, relative-magnitude, baselines) and loss metrics (ppl, taylor)
against slow references computed directly from full hidden states / plain autograd."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import depthprune as dp
from depthprune.errors import DepthpruneError
from depthprune.importance.loss_metrics import ppl_scores, taylor_scores
from depthprune.selection.strategies import compute_scores
from depthprune.arch.layout import layout

from tiny import batch, final_norm, tiny_model


FAMILIES = ["llama", "gpt2", "gemma3", "opt"]


def raw_hidden_states(model, family, ids, mask):
    """Every layer boundary's raw hidden state: output_hidden_states with the final norm made an identity."""
    parent, name, _ = final_norm(model, family)
    norm = getattr(parent, name)
    setattr(parent, name, torch.nn.Identity())
    try:
        with torch.no_grad():
            hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    finally:
        setattr(parent, name, norm)
    return [h.double() for h in hs]


def nontrivial_norm(model, family):
    parent, name, _ = final_norm(model, family)
    with torch.no_grad():
        getattr(parent, name).weight.uniform_(0.2, 2.0)


def ref_angular(hs, mask, start, n, last_token):
    a, b = hs[start], hs[start + n]
    if last_token:
        rows = []
        for r in range(mask.shape[0]):
            t = int(mask[r].nonzero().max())
            cos = torch.dot(a[r, t], b[r, t]) / (a[r, t].norm() * b[r, t].norm())
            rows.append(math.acos(max(-1.0, min(1.0, float(cos)))) / math.pi)
        return sum(rows) / len(rows)
    m = mask.bool()
    cos = (a[m] * b[m]).sum(-1) / (a[m].norm(dim=-1) * b[m].norm(dim=-1))
    return float(torch.arccos(cos.clamp(-1, 1)).mean() / math.pi)


@pytest.mark.parametrize("family", FAMILIES)
def test_angular_and_relative_magnitude_match_hidden_state_reference(family):
    model = tiny_model(family)
    nontrivial_norm(model, family)
    ids, mask = batch(n=4, pad_last=5)
    hs = raw_hidden_states(model, family, ids, mask)
    L = len(hs) - 1
    got = compute_scores(model, dp.from_tensors(ids, mask),
                         ["angular", "angular-all", "relative-magnitude", "bi"], batch_size=3,
                         block_sizes=range(1, L + 1))
    for metric, last in (("angular", True), ("angular-all", False)):
        for n in range(1, L + 1):
            expected = [ref_angular(hs, mask, s, n, last) for s in range(L - n + 1)]
            assert got[metric].blocks[n] == pytest.approx(expected, abs=1e-5), (metric, n)
        assert got[metric].scores == pytest.approx(got[metric].blocks[1])
    m = mask.bool()
    rm = [float(((hs[i + 1][m] - hs[i][m]).norm(dim=-1) / hs[i + 1][m].norm(dim=-1)).mean()) for i in range(L)]
    assert got["relative-magnitude"].scores == pytest.approx(rm, abs=1e-5)
    # several metrics from one pass give the same as each alone
    alone = compute_scores(model, dp.from_tensors(ids, mask), ["angular"], batch_size=3)
    assert alone["angular"].scores == pytest.approx(got["angular"].scores, abs=1e-7)


def test_angular_last_token_handles_left_padding():
    model = tiny_model("llama")
    ids, mask = batch(n=3, pad_last=0)
    mask[0, :4] = 0  # left padding on row 0: its last real token is still at the end
    hs = raw_hidden_states(model, "llama", ids, mask)
    got = compute_scores(model, dp.from_tensors(ids, mask), ["angular"])["angular"].scores
    expected = [ref_angular(hs, mask, s, 1, True) for s in range(4)]
    assert got == pytest.approx(expected, abs=1e-5)


def test_angular_one_shot_ranks_like_direct_computation():
    model = tiny_model("qwen2")
    ids, mask = batch(n=4)
    hs = raw_hidden_states(model, "qwen2", ids, mask)
    direct = [ref_angular(hs, mask, s, 1, True) for s in range(4)]
    result = dp.prune(model, remove=2, data=dp.from_tensors(ids, mask), metric="angular", progress=False)
    assert result.report.removed_layers == sorted(sorted(range(4), key=lambda i: direct[i])[:2])


def test_baselines_reverse_order_and_random():
    model = tiny_model("llama")
    calib = dp.from_tensors(*batch())
    rev = dp.prune(model, remove=2, data=calib, metric="reverse-order", progress=False).report
    assert rev.removed_layers == [2, 3]
    a = dp.score(model, data=calib, metric="random", seed=1, progress=False).scores
    b = dp.score(model, data=calib, metric="random", seed=1, progress=False).scores
    assert a == b and sorted(a) == [0.0, 1.0, 2.0, 3.0]  # seeded permutation
    assert any(dp.score(model, data=calib, metric="random", seed=s, progress=False).scores != a for s in range(2, 6))


def calibration_loss(model, ids, mask):
    """Mean next-token NLL over real targets, written out plainly."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    keep = mask[:, 1:].bool() & mask[:, :-1].bool()
    logp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return float(nll[keep].mean())


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt_neox"])
def test_ppl_metric_matches_deepcopy_and_remove(family):
    model = tiny_model(family)
    ids, mask = batch(n=4, pad_last=3)
    got = ppl_scores(model, dp.from_tensors(ids, mask), batch_size=3, progress=False)
    n_layers = len(got)
    for i in range(n_layers):
        pruned = dp.remove_layers(copy.deepcopy(model), [i])
        assert math.log(got[i]) == pytest.approx(calibration_loss(pruned, ids, mask), abs=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_taylor_matches_direct_autograd(family):
    model = tiny_model(family)
    ids, mask = batch(n=3, pad_last=4)
    got = taylor_scores(model, dp.from_tensors(ids, mask), batch_size=1, progress=False)
    # reference: one batch, the mean NLL over all real targets, autograd.grad per layer
    ref_model = copy.deepcopy(model)
    logits = ref_model(input_ids=ids, attention_mask=mask).logits
    keep = mask[:, 1:].bool() & mask[:, :-1].bool()
    loss = F.cross_entropy(logits[:, :-1][keep], ids[:, 1:][keep])
    layers = layout(ref_model).layers(ref_model)
    expected = []
    grads = torch.autograd.grad(loss, [p for layer in layers for p in layer.parameters()])
    k = 0
    for layer in layers:
        total = 0.0
        for p in layer.parameters():
            total += float((p.detach() * grads[k]).abs().sum())
            k += 1
        expected.append(total)
    assert got == pytest.approx(expected, rel=1e-4)
    # the model is left as it was: no grads, parameters still trainable as before
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(DepthpruneError, match="unknown metric 'nope'"):
        dp.score(tiny_model("llama"), data=dp.from_tensors(*batch()), metric="nope", progress=False)
