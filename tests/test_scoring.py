"""Streaming Block Influence against a slow reference built from full hidden states."""

import pytest
import torch
from torch import nn

import depthprune as dp
from depthprune.errors import NonFiniteActivationError
from depthprune.importance.scoring import layer_scores

from tiny import ARCHS, batch, final_norm, tiny_model


def reference_bi(model, family, ids, mask):
    """BI from output_hidden_states, with the final norm replaced by identity so the last
    entry is the last layer's raw output (the trap: hidden_states[-1] is normally post-norm)."""
    parent, name, _ = final_norm(model, family)
    norm = getattr(parent, name)
    setattr(parent, name, nn.Identity())
    try:
        with torch.no_grad():
            hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    finally:
        setattr(parent, name, norm)
    m = mask.bool()
    scores = []
    for i in range(len(hs) - 1):
        a, b = hs[i][m].double(), hs[i + 1][m].double()
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        scores.append(float(1 - cos.sum() / m.sum()))
    return scores


@pytest.mark.parametrize("family", sorted(ARCHS))
def test_streaming_bi_matches_full_hidden_state_reference(family):
    model = tiny_model(family)
    parent, name, _ = final_norm(model, family)
    with torch.no_grad():  # a non-trivial final norm, so reading hidden_states[-1] would be visibly wrong
        getattr(parent, name).weight.uniform_(0.2, 2.0)
    ids, mask = batch()
    expected = reference_bi(model, family, ids, mask)
    calib = dp.from_tensors(ids, mask)
    got, tokens = layer_scores(model, calib, ["bi"], batch_size=2, progress=False)
    assert tokens == int(mask.sum())
    assert got["bi"] == pytest.approx(expected, abs=1e-5)
    # the reference is sensitive to the trap: the post-norm last entry gives a different last score
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    m = mask.bool()
    post_norm_last = 1 - torch.nn.functional.cosine_similarity(hs[-2][m], hs[-1][m], dim=-1).mean()
    assert abs(float(post_norm_last) - got["bi"][-1]) > 1e-4


def test_padding_is_ignored():
    model = tiny_model("llama")
    ids, mask = batch(pad_last=5)
    calib = dp.from_tensors(ids, mask)
    base, _ = layer_scores(model, calib, ["bi"], progress=False)
    ids2 = ids.clone()
    ids2[-1, -5:] = 77  # different junk under the padding
    changed, _ = layer_scores(model, dp.from_tensors(ids2, mask), ["bi"], progress=False)
    assert base["bi"] == pytest.approx(changed["bi"], abs=1e-6)


def test_bi_is_a_token_mean_not_a_sequence_mean():
    model = tiny_model("llama")
    ids, mask = batch(n=2, t=10, pad_last=7)
    got, _ = layer_scores(model, dp.from_tensors(ids, mask), ["bi"], batch_size=1, progress=False)
    expected = reference_bi(model, "llama", ids, mask)
    assert got["bi"] == pytest.approx(expected, abs=1e-5)


def test_batch_size_does_not_change_scores():
    model = tiny_model("qwen2")
    ids, mask = batch(n=5)
    calib = dp.from_tensors(ids, mask)
    a, _ = layer_scores(model, calib, ["bi"], batch_size=1, progress=False)
    b, _ = layer_scores(model, calib, ["bi"], batch_size=5, progress=False)
    assert a["bi"] == pytest.approx(b["bi"], abs=1e-5)


def test_lm_head_is_never_computed():
    model = tiny_model("llama")
    calls = []
    model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    model.model.norm.register_forward_hook(lambda *a: calls.append(2))
    layer_scores(model, dp.from_tensors(*batch()), ["bi"], progress=False)
    assert calls == []


def test_nan_activations_name_the_layer_and_dtype():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteActivationError, match=r"layer 2 .*torch.float32"):
        layer_scores(model, dp.from_tensors(*batch()), ["bi"], progress=False)


def test_score_api_accepts_pretokenized_batches():
    model = tiny_model("gpt2")
    ids, mask = batch()
    report = dp.score(model, data=dp.from_tensors(ids, mask), progress=False)
    assert report.num_layers == 4 and len(report.scores) == 4
    assert sorted(report.removal_order) == [0, 1, 2, 3]
    assert report.scores[report.removal_order[0]] == min(report.scores)
    assert report.tokens == int(mask.sum())
    assert report.to_json()["indexing"].startswith("0-based")
