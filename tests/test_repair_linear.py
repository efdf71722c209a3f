"""Linear repair: the fitted maps against direct least squares, and exact folding for every family it accepts."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from depthprune.arch.layout import layout
from depthprune.io.data import from_tensors
from depthprune.errors import DepthpruneError
from depthprune.repair import fit_linear_maps, fold_spec, linear_repair, removed_runs
from depthprune.repair.folding import capture_module
from depthprune.importance.streamed import StreamedModel
from depthprune.io.safetensors import stored_names
from depthprune.repair.linear import fit_linear_maps_streamed, fold_into_streamed_layers, unstored_fold_target
from depthprune.surgery.in_memory import pruned_copy
from tiny import ARCHS, LLAMA_LIKE, batch, tiny_model

FAMILIES = [f for f in ARCHS]  # llama mistral qwen2 qwen3 gemma2 gemma3 phi3 gpt2 gpt_neox opt falcon mixtral
REMOVED = [1, 2]   # one run, source layer 0, target = input of layer 3 (not the last layer)


EXTRA = {  # families the repair accepts that tests/tiny.py does not build
    "olmo2": lambda: tf.Olmo2Config(**LLAMA_LIKE),
    "gemma": lambda: tf.GemmaConfig(**LLAMA_LIKE, head_dim=8),
    "qwen2_moe": lambda: tf.Qwen2MoeConfig(**LLAMA_LIKE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                           shared_expert_intermediate_size=32),
}


def _model(family: str):
    if family in EXTRA:
        torch.manual_seed(0)
        m = tf.AutoModelForCausalLM.from_config(EXTRA[family]())
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() > 1:
                    p.mul_(3.0)
        return m.eval()
    return tiny_model(family)


def _calibration(n: int = 6):
    ids, mask = batch(seed=1, n=n, t=16, pad_last=5)
    return from_tensors(ids, mask), ids, mask


def _reference_activations(model, ids, mask, source: int, last: int):
    """M (MLP output of `source`), R = y - h on real tokens, from output_hidden_states + one plain hook."""
    spec = fold_spec(model.config)
    layers = layout(model).layers(model)
    got = {}
    handle = capture_module(layers[source], spec).register_forward_hook(
        lambda mod, a, out: got.__setitem__("m", (out[0] if isinstance(out, tuple) else out).detach().clone()))
    try:
        with torch.no_grad():
            hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    keep = mask.bool()
    m = got["m"].reshape(*mask.shape, -1)[keep].double()
    h = hs[source + 1][keep].double() - m
    y = hs[last + 1][keep].double()
    return m, y - h


def _unfolded_reference(dense, removed, maps):
    """Dense minus the layers, with T applied to the source layer's MLP output by a hook (no weight edits)."""
    spec = fold_spec(dense.config)
    ref = pruned_copy(dense, removed)
    kept = [i for i in range(len(layout(dense).layers(dense))) if i not in set(removed)]
    layers = layout(ref).layers(ref)
    for source, T in maps.items():
        def hook(mod, a, out, T=T.float()):
            t = out[0] if isinstance(out, tuple) else out
            new = (t * T if T.dim() == 1 else t @ T).reshape(t.shape)
            return (new, *out[1:]) if isinstance(out, tuple) else new
        capture_module(layers[kept.index(source)], spec).register_forward_hook(hook)
    return ref


@pytest.mark.parametrize("family", FAMILIES + sorted(EXTRA))
def test_lstsq_map_matches_direct_lstsq_and_folds_exactly(family, tmp_path):
    dense = _model(family)
    cal, ids, mask = _calibration()
    maps, report = fit_linear_maps(dense, cal, REMOVED, ridge=0.0, progress=False)
    T = maps[0]
    M, R = _reference_activations(dense, ids, mask, 0, 2)
    if fold_spec(dense.config).diagonal:
        ref = (M * R).sum(0) / (M * M).sum(0)
        assert T.shape == ref.shape
    else:
        ref = torch.linalg.lstsq(M, R, driver="gelsd").solution
    assert torch.allclose(T, ref, atol=1e-6, rtol=1e-5), (T - ref).abs().max()
    assert report.runs[0].mse_lstsq <= report.runs[0].mse_identity + 1e-9

    repaired, _ = linear_repair(dense, cal, REMOVED, ridge=0.0, progress=False)
    reference = _unfolded_reference(dense, REMOVED, maps)
    with torch.no_grad():
        got = repaired(input_ids=ids, attention_mask=mask).logits
        want = reference(input_ids=ids, attention_mask=mask).logits
        plain = pruned_copy(dense, REMOVED)(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    assert (got[keep] - want[keep]).abs().max() <= 1e-4
    assert (got[keep] - plain[keep]).abs().max() > 1e-3  # the map did something

    repaired.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(repaired)
    with torch.no_grad():
        again = reloaded(input_ids=ids, attention_mask=mask).logits
    assert (again[keep] - got[keep]).abs().max() <= 1e-4
    prompt = ids[:1, :5]
    kw = dict(max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(reloaded.generate(prompt, **kw), repaired.generate(prompt, **kw))


@pytest.mark.parametrize("family", FAMILIES + sorted(EXTRA))
def test_streamed_fit_equals_direct_lstsq_with_spilled_activations(family, tmp_path):
    """The map fitted one layer at a time from a checkpoint on disk, with every activation past a 1 KB budget
    spilled to disk and read back, equals the map fitted on the model in memory (the hooked whole-model pass,
    itself checked against a direct least-squares solution above), ridge chosen by cross-validation included;
    the folded tensors are those of the source layer only."""
    dense = _model(family)
    dense.save_pretrained(tmp_path, max_shard_size="60KB")
    cal, ids, mask = _calibration()
    streamed = StreamedModel(tmp_path)
    maps, report = fit_linear_maps_streamed(streamed, cal, [2, 3], batch_size=2, activation_budget_bytes=1024,
                                            progress=False)
    want, memory = fit_linear_maps(dense, cal, [2, 3], batch_size=2, progress=False)
    torch.testing.assert_close(maps[1].double(), want[1].double(), atol=1e-6, rtol=1e-6)
    assert report.runs[0].ridge == memory.runs[0].ridge
    info = report.streamed
    assert info["activation_spilled_bytes"] > 0 and info["source_outputs_spilled_bytes"] > 0
    assert info["layers_read"] == 4 and report.calibration_tokens == int(mask.sum())
    if unstored_fold_target(streamed.model, stored_names(tmp_path)) is not None:
        # fused experts built from per-expert tensors on load: the fold has no stored tensor to replace
        with pytest.raises(DepthpruneError, match="stored under other names"):
            fold_into_streamed_layers(streamed, maps)
        return
    changed = fold_into_streamed_layers(streamed, maps)
    assert changed and all(".1." in k or "layers.1" in k or ".h.1." in k for k in changed), sorted(changed)
    assert all(p.device.type == "meta" for p in streamed.layers[1].parameters())


def test_ridge_map_matches_augmented_lstsq():
    dense = _model("llama")
    cal, ids, mask = _calibration()
    ridge = 0.05
    maps, _ = fit_linear_maps(dense, cal, REMOVED, ridge=ridge, progress=False)
    M, R = _reference_activations(dense, ids, mask, 0, 2)
    d = M.shape[1]
    lam = ridge * float((M * M).sum()) / d
    eye = torch.eye(d, dtype=torch.float64)
    ref = torch.linalg.lstsq(torch.cat([M, lam ** 0.5 * eye]), torch.cat([R, lam ** 0.5 * eye])).solution
    assert torch.allclose(maps[0], ref, atol=1e-7)


def test_streaming_accumulation_equals_one_shot():
    dense = _model("qwen2")
    cal, *_ = _calibration()
    one, _ = fit_linear_maps(dense, cal, [1, 3], batch_size=len(cal), progress=False)
    streamed, rep = fit_linear_maps(dense, cal, [1, 3], batch_size=1, progress=False)
    assert sorted(one) == [0, 2] and [r.removed for r in rep.runs] == [[1], [3]]
    for k in one:
        assert torch.allclose(one[k], streamed[k], atol=1e-9)


def test_two_runs_including_the_last_layer_fold_exactly():
    dense = _model("llama")
    cal, ids, mask = _calibration()
    maps, _ = fit_linear_maps(dense, cal, [1, 3], progress=False)
    repaired, _ = linear_repair(dense, cal, [1, 3], progress=False)
    ref = _unfolded_reference(dense, [1, 3], maps)
    with torch.no_grad():
        a = repaired(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        b = ref(input_ids=ids, attention_mask=mask).logits[mask.bool()]
    assert (a - b).abs().max() <= 1e-4


def test_cosine_objective_lowers_the_cosine_loss():
    dense = _model("llama")
    cal, *_ = _calibration()
    maps, report = fit_linear_maps(dense, cal, REMOVED, objective="cosine", cosine_steps=20, progress=False)
    run = report.runs[0]
    assert run.cos_loss_final < run.cos_loss_lstsq - 1e-6
    assert run.cos_loss_final < run.cos_loss_identity


def test_refusals():
    cal, *_ = _calibration()
    with pytest.raises(DepthpruneError, match="layer 0"):
        removed_runs([0, 1], 4)
    with pytest.raises(DepthpruneError, match="do_layer_norm_before"):
        cfg = ARCHS["opt"][0]()
        cfg.do_layer_norm_before = False
        fit_linear_maps(tf.AutoModelForCausalLM.from_config(cfg).eval(), cal, [2], progress=False)
    with pytest.raises(DepthpruneError, match="objective"):
        fit_linear_maps(_model("llama"), cal, [2], objective="l1", progress=False)
    from depthprune.repair import fold_map
    g = _model("gemma3")
    with pytest.raises(DepthpruneError, match="diagonal"):
        fold_map(layout(g).layers(g)[0], fold_spec(g.config), torch.eye(32))


def test_auto_ridge_is_the_two_fold_cross_validated_choice():
    from depthprune.repair.linear import RIDGE_GRID

    dense = _model("llama")
    cal, ids, mask = _calibration(n=6)
    maps, report = fit_linear_maps(dense, cal, REMOVED, batch_size=4, progress=False)   # ridge=None: auto
    M, R = _reference_activations(dense, ids, mask, 0, 2)
    rows = mask.bool().nonzero()[:, 0]
    folds = [rows % 2 == 0, rows % 2 == 1]   # sequences 0, 2, 4 vs 1, 3, 5 (global row numbers)
    d = M.shape[1]

    def fit(Mf, Rf, ridge):
        lam = ridge * float((Mf * Mf).sum()) / d
        eye = torch.eye(d, dtype=torch.float64)
        return torch.linalg.lstsq(torch.cat([Mf, lam ** 0.5 * eye]), torch.cat([Rf, lam ** 0.5 * eye])).solution

    errors = {r: sum(float(((R[h] - M[h] @ fit(M[f], R[f], r)) ** 2).sum()) for f, h in (folds, folds[::-1]))
              for r in RIDGE_GRID}
    best = min(RIDGE_GRID, key=lambda r: (errors[r], RIDGE_GRID.index(r)))
    assert report.runs[0].ridge == best
    assert torch.allclose(maps[0], fit(M, R, best), atol=1e-7)


def test_every_block_in_one_pass_equals_its_own_pass_and_its_repaired_error_is_the_cv_residual():
    from depthprune.repair.linear import RIDGE_GRID, block_runs, collect_statistics, repaired_error

    dense = _model("llama")
    cal, ids, mask = _calibration(n=6)
    layers = layout(dense).layers(dense)
    total = len(layers)
    runs = block_runs(total, 2)
    assert [(r.source, r.first, r.last) for r in runs] == [(s - 1, s, s + 1) for s in range(1, total - 1)]
    together = collect_statistics(dense, cal, runs=runs, batch_size=4, progress=False)
    # every layer's output and every MLP output by plain hooks (the last layer's output is before the final norm)
    outputs, mlp = {}, {}
    spec = fold_spec(dense.config)
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, (o[0] if isinstance(o, tuple)
                                                                                      else o).detach()))
               for i, layer in enumerate(layers)]
    handles += [capture_module(layer, spec).register_forward_hook(
        lambda m, a, o, i=i: mlp.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach().clone()))
        for i, layer in enumerate(layers)]
    with torch.no_grad():
        dense(input_ids=ids, attention_mask=mask)
    for h in handles:
        h.remove()
    keep = mask.bool()
    rows = keep.nonzero()[:, 0]
    folds = [rows % 2 == 0, rows % 2 == 1]
    for run in runs:
        alone = collect_statistics(dense, cal, list(range(run.first, run.last + 1)), batch_size=4, progress=False)
        acc, ref = together.accumulators[run], alone.accumulators[alone.runs[0]]
        assert torch.allclose(acc.A, ref.A) and torch.allclose(acc.B, ref.B)   # overlapping runs do not interfere
        M = mlp[run.source].reshape(*keep.shape, -1)[keep].double()
        H = outputs[run.source][keep].double() - M
        Y = outputs[run.last][keep].double()
        R = Y - H
        d = M.shape[1]

        def fit(Mf, Rf, ridge):
            lam = ridge * float((Mf * Mf).sum()) / d
            eye = torch.eye(d, dtype=torch.float64)
            return torch.linalg.lstsq(torch.cat([Mf, lam ** 0.5 * eye]), torch.cat([Rf, lam ** 0.5 * eye])).solution

        cv = min(sum(float(((R[h] - M[h] @ fit(M[f], R[f], r)) ** 2).sum()) for f, h in (folds, folds[::-1]))
                 for r in RIDGE_GRID)
        assert repaired_error(acc) == pytest.approx(cv / float((Y * Y).sum()), rel=1e-6)
