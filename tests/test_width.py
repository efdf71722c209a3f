"""Width (attention heads) against plainly written references: head removal vs zeroing o_proj input
columns by hand, saved checkpoint vs reload, loss-increase scores vs deep-copy-and-mask full
forwards, o_proj norms vs single-head o_proj outputs, Spearman vs scipy."""

import copy

import pytest
import torch
import torch.nn.functional as F
import transformers as tf

import depthprune as dp
from depthprune.errors import DepthpruneError
from depthprune.surgery.heads import geometry, heads_removed_copy, masked_heads, removable
from depthprune.importance.heads import head_pattern, loss_increase, lowest_units, oproj_norms, spearman

from tiny import batch, tiny_model


def zero_heads_by_hand(model, heads):
    """Independent reference: a deep copy whose o_proj weight columns of the given heads are zero."""
    ref = copy.deepcopy(model)
    d = ref.config.head_dim if getattr(ref.config, "head_dim", None) else \
        ref.config.hidden_size // ref.config.num_attention_heads
    with torch.no_grad():
        for layer, hs in heads.items():
            w = ref.model.layers[layer].self_attn.o_proj.weight
            for h in hs:
                w[:, h * d:(h + 1) * d] = 0
    return ref


def logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def mean_nll(model, ids, mask):
    out = logits(model, ids, mask)
    keep = mask[:, 1:].bool() & mask[:, :-1].bool()
    return float(F.cross_entropy(out[:, :-1][keep].double(), ids[:, 1:][keep]))


# llama tiny: 4 query heads, 2 KV groups of 2; gemma3 tiny: same, explicit head_dim 8
@pytest.mark.parametrize("family,heads", [
    ("llama", {i: [2, 3] for i in range(4)}),                       # KV group 1 in every layer
    ("llama", {0: [0, 1], 1: [2, 3], 2: [0, 1], 3: [2, 3]}),        # one (different) group per layer
    ("llama", {i: [0, 3] for i in range(4)}),                       # one query head from each group
    ("gemma3", {i: [1, 2] for i in range(6)}),                      # one query head per group, gemma3
    ("qwen3", {0: [0, 1], 1: [0, 1], 2: [2, 3], 3: [0, 1]}),
])
def test_removed_heads_equal_masked_reference_and_reload(tmp_path, family, heads):
    model = tiny_model(family)
    ids, mask = batch(n=3, pad_last=4)
    ref = logits(zero_heads_by_hand(model, heads), ids, mask)
    with masked_heads(model, heads):
        masked = logits(model, ids, mask)
    torch.testing.assert_close(masked, ref, atol=1e-4, rtol=1e-4)
    pruned = heads_removed_copy(model, heads)
    removed = logits(pruned, ids, mask)
    torch.testing.assert_close(removed, ref, atol=1e-4, rtol=1e-4)
    assert pruned.model.layers[0].self_attn.q_proj.out_features == (4 - len(heads[0])) * geometry(model).head_dim
    # the original is untouched
    torch.testing.assert_close(logits(model, ids, mask), logits(copy.deepcopy(model), ids, mask))
    pruned.save_pretrained(tmp_path)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_attention_heads == 4 - len(heads[0])
    assert reloaded.config.head_dim == geometry(model).head_dim
    torch.testing.assert_close(logits(reloaded, ids, mask), removed, atol=1e-5, rtol=1e-5)
    # generation with a KV cache works on the reloaded model
    reloaded.generate(ids[:1, :5], max_new_tokens=3, do_sample=False)


@pytest.mark.parametrize("heads,fragment", [
    ({0: [2, 3], 1: [2, 3], 2: [2, 3]}, "some layers lose no heads"),
    ({0: [2, 3], 1: [2, 3], 2: [2, 3], 3: [1, 3]}, "different numbers"),
    ({0: [2, 3], 1: [2, 3], 2: [2, 3], 3: [2]}, "unequal query heads"),
    ({0: [1, 2, 3], 1: [1, 2, 3], 2: [1, 2, 3], 3: [1, 2, 3]}, "mixed"),
    ({i: [0, 1, 2, 3] for i in range(4)}, "remove the layer instead"),
])
def test_removal_that_config_cannot_express_is_refused(heads, fragment):
    model = tiny_model("llama")
    assert fragment in removable(heads, geometry(model))
    with pytest.raises(DepthpruneError, match="masked"):
        heads_removed_copy(model, heads)


def test_head_count_must_divide_hidden_size():
    """transformers' config validation refuses hidden_size % num_attention_heads != 0 (Gemma-3 640 / 3 heads)."""
    geo = geometry(tiny_model("llama"))  # 4 heads, 2 groups, hidden 32
    heads = {i: [0, 3] for i in range(4)}  # 2 heads left
    assert removable(heads, geo, 32) is None
    assert "multiple of num_attention_heads (2)" in removable(heads, geo, 33)


def test_bad_head_numbers_are_clear_errors():
    model = tiny_model("llama")
    with pytest.raises(DepthpruneError, match="head 4 is out of range"):
        with masked_heads(model, {0: [4]}):
            pass
    with pytest.raises(DepthpruneError, match="layer 9 is out of range"):
        removable({9: [0]}, geometry(model))
    with pytest.raises(DepthpruneError, match="Llama-style"):
        geometry(tiny_model("gpt2"))


@pytest.mark.parametrize("family,unit", [("llama", "group"), ("gemma3", "query"), ("qwen2", "query")])
def test_loss_increase_equals_deep_copy_and_mask(family, unit):
    model = tiny_model(family)
    ids, mask = batch(n=4, pad_last=3)
    geo = geometry(model)
    got = loss_increase(model, dp.from_tensors(ids, mask), unit, batch_size=3, progress=False)
    dense = mean_nll(model, ids, mask)
    n_units = geo.num_kv_heads if unit == "group" else geo.num_heads
    assert len(got) == geo.num_layers and all(len(r) == n_units for r in got)
    for layer in range(geo.num_layers):
        for u in range(n_units):
            hs = geo.group_heads(u) if unit == "group" else [u]
            expected = mean_nll(zero_heads_by_hand(model, {layer: hs}), ids, mask) - dense
            assert got[layer][u] == pytest.approx(expected, abs=2e-5)


def test_oproj_norm_equals_single_head_outputs():
    """Reference: the o_proj output (minus bias) with every other head of that layer zeroed, norm per real token."""
    model = tiny_model("llama")
    ids, mask = batch(n=3, pad_last=5)
    geo = geometry(model)
    got = oproj_norms(model, dp.from_tensors(ids, mask), ("query", "group"), batch_size=2, progress=False)
    keep = mask.bool()
    for layer in (0, 3):
        o_proj = model.model.layers[layer].self_attn.o_proj
        for unit, n_units in (("query", geo.num_heads), ("group", geo.num_kv_heads)):
            for u in range(n_units):
                mine = geo.group_heads(u) if unit == "group" else [u]
                others = [h for h in range(geo.num_heads) if h not in mine]
                seen = {}
                handle = o_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("y", out))
                try:
                    with masked_heads(model, {layer: others}):
                        logits(model, ids, mask)
                finally:
                    handle.remove()
                y = seen["y"] if o_proj.bias is None else seen["y"] - o_proj.bias
                expected = float(y.norm(dim=-1)[keep].double().mean())
                assert got[unit][layer][u] == pytest.approx(expected, rel=1e-4)


def test_spearman_matches_scipy_and_pattern_statistics():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, generator=g).tolist()
    b = [x + y for x, y in zip(a, torch.randn(40, generator=g).tolist())]
    b[3] = b[4]  # a tie
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
    # a matrix whose spread is all across layers, identical in both halves
    m = [[float(layer)] * 3 for layer in range(5)]
    stats = head_pattern(m, m)
    assert stats["between_layer_share"] == pytest.approx(1.0)
    assert stats["within_layer_std"] == pytest.approx(0.0)
    assert stats["depth_spearman"] == pytest.approx(1.0)
    assert stats["split_half_spearman"] == pytest.approx(1.0)


def test_lowest_units_picks_per_layer_and_maps_groups_to_heads():
    geo = geometry(tiny_model("llama"))
    scores = [[0.5, 0.1], [0.2, 0.9], [0.3, 0.4], [0.8, 0.7]]
    assert lowest_units(scores, 1, "group", geo) == {0: [2, 3], 1: [0, 1], 2: [0, 1], 3: [2, 3]}
    assert lowest_units(scores, 0, "group", geo, total=2) == {0: [2, 3], 1: [0, 1]}


def test_heads_cli_writes_report_heatmap_and_reloadable_checkpoint(tmp_path):
    import json

    from depthprune.cli import main
    from tiny import tiny_checkpoint

    ck = tiny_checkpoint(tmp_path / "ck", family="llama", num_layers=4)
    out = tmp_path / "heads"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "heads", ck, "--data", "builtin", "--samples", "4", "--seq-len", "32", "--remove-per-layer", "1",
              "--ppl", "builtin:heldout", "--ppl-seq-len", "32", "--ppl-max-tokens", "128", "--out", str(out)])
    assert exc.value.code == 0
    data = json.loads((out / "heads.json").read_text())
    assert set(data["scores"]) == {"loss/group", "loss/query", "oproj-norm/group", "oproj-norm/query"}
    assert {"layer:bi", "layer:loss", "loss/group"} <= set(data["patterns"])
    assert (out / "heads.png").read_bytes()[:4] == b"\x89PNG"
    removal = data["removal"]
    assert removal["checkpoint"] and set(removal["perplexity"]) == {"dense", "heads_removed"}
    heads = {int(k): v for k, v in removal["heads"].items()}
    original = tf.AutoModelForCausalLM.from_pretrained(ck).eval()
    reloaded = tf.AutoModelForCausalLM.from_pretrained(out / "model").eval()
    ids, mask = batch(n=2, pad_last=2)
    torch.testing.assert_close(logits(reloaded, ids, mask), logits(zero_heads_by_hand(original, heads), ids, mask),
                               atol=1e-4, rtol=1e-4)
    # a second run replaces its own earlier output with --overwrite (and only with it)
    again = ["-q", "heads", ck, "--data", "builtin", "--samples", "4", "--seq-len", "32", "--metrics", "oproj-norm",
             "--units", "query", "--out", str(out)]
    with pytest.raises(SystemExit) as exc:
        main(again)
    assert exc.value.code == 2 and (out / "model").is_dir()
    with pytest.raises(SystemExit) as exc:
        main(again + ["--overwrite"])
    assert exc.value.code == 0 and not (out / "model").exists()
    assert set(json.loads((out / "heads.json").read_text())["scores"]) == {"oproj-norm/query"}


def test_heads_cli_rejects_bad_unit_before_loading(tmp_path, capsys):
    from depthprune.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["heads", "no-such-model", "--units", "neuron", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "unknown head unit 'neuron'" in capsys.readouterr().err


def test_the_announced_heads_cost_counts_the_layer_calls_the_scores_make():
    """The up-front estimate (full forward passes) against the decoder-layer calls the masked-loss scores really
    make, counted by the runner: layer skips plus every unit of both kinds, per half."""
    from depthprune.importance.heads import masked_loss_passes
    from depthprune.importance.loss_metrics import CachedLayerRunner

    model = tiny_model("llama")
    geo = geometry(model)
    runner = CachedLayerRunner(model, dp.from_tensors(*batch(n=2)), batch_size=2, progress=False)
    for i in range(geo.num_layers):
        runner.loss_without(i)
    for unit in ("group", "query"):
        loss_increase(model, runner.calibration, unit, runner=runner, progress=False)
    full_passes = 1 + runner.layer_runs / geo.num_layers  # the capture pass, then the re-runs
    estimate = masked_loss_passes(geo, ("group", "query"))
    assert abs(estimate - full_passes) / full_passes < 0.2, (estimate, full_passes)
