"""LaCo against plainly written references: the RDSC formula from the original state dict, the search
order of the paper's Algorithm 1 worked by hand, the similarity recomputed from output_hidden_states,
checkpoint reload == in-memory merged model, errors."""

import copy

import pytest
import torch
import transformers as tf

import depthprune as dp
from depthprune.errors import DepthpruneError
from depthprune.selection.laco import LacoSettings, laco, merged_copy
from depthprune.selection.strategies import select

from tiny import batch, tiny_model


def linear_names(model, layer):
    prefix = f"model.layers.{layer}."
    return {n[len(prefix):] for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, torch.nn.Linear)}


def test_rdsc_formula_from_original_weights():
    model = tiny_model("llama")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    merges = [{"base": 1, "merged": [2, 3]}]
    merged = merged_copy(model, merges)
    assert merged.config.num_hidden_layers == 2
    got = merged.state_dict()
    lin = linear_names(model, 1)
    assert {"self_attn.q_proj", "mlp.down_proj"} <= lin
    for key in sd:
        if not key.startswith("model.layers.1."):
            continue
        name = key[len("model.layers.1."):]
        module = name.rsplit(".", 1)[0]
        if module in lin:
            w = [sd[f"model.layers.{i}.{name}"] for i in (1, 2, 3)]
            expected = w[0] + (w[1] - w[0]) + (w[2] - w[0])
        else:  # norms stay the base layer's
            expected = sd[key]
        torch.testing.assert_close(got[key], expected)
    # layer 0 untouched; the original model untouched
    torch.testing.assert_close(got["model.layers.0.self_attn.q_proj.weight"], sd["model.layers.0.self_attn.q_proj.weight"])
    torch.testing.assert_close(model.state_dict()["model.layers.1.mlp.up_proj.weight"], sd["model.layers.1.mlp.up_proj.weight"])


def final_hidden(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]


def test_search_follows_algorithm_and_similarity_is_cosine_of_final_hidden_states():
    model = tiny_model("llama")  # 4 layers
    ids, mask = batch(n=3, pad_last=4)
    calib = dp.from_tensors(ids, mask)
    # T=-1 accepts every merge: C=2 from base H-C = 1 (merge 2 into 1), then base 0 (merge current layer 1 = orig 1)
    r = laco(model, calib, 2, LacoSettings(merge=2, lowest=0, interval=1, threshold=-1.0), batch_size=2,
             progress=False)
    assert [(m["base"], m["merged"]) for m in r.merges] == [(1, [2]), (0, [1])]
    assert r.removed == [1, 2]
    # recompute the first trial's similarity by hand
    one = merged_copy(model, r.merges[:1])
    dense, other = final_hidden(model, ids, mask), final_hidden(one, ids, mask)
    sims = [torch.nn.functional.cosine_similarity(dense[i][mask[i].bool()].flatten().double(),
                                                  other[i][mask[i].bool()].flatten().double(), dim=0)
            for i in range(len(ids))]
    assert r.trials[0]["similarity"] == pytest.approx(float(sum(sims) / len(sims)), abs=1e-6)
    # a threshold above every trial: each base is tried once, moving down by one, then a clear error
    with pytest.raises(DepthpruneError, match="lower T"):
        laco(model, calib, 1, LacoSettings(merge=2, lowest=0, threshold=1.01), progress=False)


def test_rejected_merge_is_undone_and_interval_moves_base():
    model = tiny_model("gemma3")  # 6 layers
    ids, mask = batch(n=3)
    calib = dp.from_tensors(ids, mask)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    r = laco(model, calib, 2, LacoSettings(merge=2, lowest=0, interval=2, threshold=-1.0), progress=False)
    # base H-C = 3 (merge 4), then base 3-2 = 1 (merge 2)
    assert [(m["base"], m["merged"]) for m in r.merges] == [(3, [4]), (1, [2])]
    for k, v in model.state_dict().items():  # the search never touches the given model
        torch.testing.assert_close(v, sd[k])


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_prune_laco_checkpoint_reloads_and_matches_in_memory(tmp_path, family):
    model = tiny_model(family)
    ids, mask = batch(n=4, pad_last=3)
    calib = dp.from_tensors(ids, mask)
    result = dp.prune(model, remove=2, data=calib, strategy="laco", laco="C=3,L=0,T=-1", progress=False)
    merges = result.report.selection["merges"]
    assert sorted(i for m in merges for i in m["merged"]) == result.report.removed_layers
    ref = merged_copy(model, merges)
    with torch.no_grad():
        mine = result.model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(mine, ref(input_ids=ids, attention_mask=mask).logits)
    result.model.save_pretrained(tmp_path)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == model.config.num_hidden_layers - 2
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask).logits, mine, atol=1e-5, rtol=1e-5)


def test_protect_last_is_never_merged():
    model = tiny_model("gemma3")
    calib = dp.from_tensors(*batch(n=2))
    chosen, _ = select(model, calib, 3, strategy="laco", protect_last=2, laco="C=4,L=0,T=-1", progress=False)
    touched = {m["base"] for m in chosen.details["merges"]} | set(chosen.removed)
    assert not touched & {4, 5}


@pytest.mark.parametrize("text,fragment", [("C=1", "at least 2"), ("X=3", "bad LaCo setting"),
                                           ("T=abc", "needs a number"), ("L=5,H=2", "L <= H")])
def test_bad_settings_are_clear_errors(text, fragment):
    model = tiny_model("llama")
    with pytest.raises(DepthpruneError, match=fragment):
        laco(model, dp.from_tensors(*batch(n=2)), 1, LacoSettings.parse(text), progress=False)


def test_laco_refuses_a_metric():
    with pytest.raises(DepthpruneError, match="drop --metric bi"):
        dp.prune(tiny_model("llama"), remove=1, data=dp.from_tensors(*batch(n=2)), metric="bi", strategy="laco")


def test_prune_cli_laco_saves_checkpoint(tmp_path):
    import json

    from depthprune.cli import main
    from tiny import tiny_checkpoint

    ck = tiny_checkpoint(tmp_path / "ck", family="llama", num_layers=6)
    out = tmp_path / "merged"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "prune", ck, "--remove", "2", "--strategy", "laco", "--laco", "C=3,L=0,T=-1", "--data", "builtin",
              "--samples", "2", "--seq-len", "32", "--out", str(out)])
    assert exc.value.code == 0
    report = json.loads((out / "depthprune.json").read_text())
    assert report["strategy"] == "laco" and len(report["removed_layers"]) == 2
    original = tf.AutoModelForCausalLM.from_pretrained(ck).eval()
    reloaded = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    ids, mask = batch(n=2)
    expected = merged_copy(original, report["selection"]["merges"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask).logits,
                                   expected(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)
