"""The pruned model against the original model run with the removed layers skipped."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import depthprune as dp
from depthprune.arch.layout import layout
from depthprune.errors import DepthpruneError

from tiny import ARCHS, batch, tiny_model


def skip_layers(model, removed):
    """Reference: the *original* model, with the removed layers turned into identities by hooks."""
    layers = layout(model).layers(model)
    handles = []
    for i in removed:
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            return (x,) + tuple(output[1:]) if isinstance(output, tuple) else x
        handles.append(layers[i].register_forward_hook(hook, with_kwargs=True))
    return handles


def removal_for(family):
    n = ARCHS[family][0]().num_hidden_layers
    return [1, 2] if n == 4 else [2, 4]  # gemma3 (6 layers): remove one full and one sliding layer


@pytest.mark.parametrize("family", sorted(ARCHS))
def test_pruned_logits_equal_original_with_layers_skipped(family):
    model = tiny_model(family)
    removed = removal_for(family)
    ids, mask = batch(t=14)
    pruned = dp.pruned_copy(model, removed)
    handles = skip_layers(model, removed)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        got = pruned(input_ids=ids, attention_mask=mask).logits
    for h in handles:
        h.remove()
    m = mask.bool()
    torch.testing.assert_close(got[m], expected[m], atol=1e-4, rtol=1e-4)
    assert pruned.config.num_hidden_layers == model.config.num_hidden_layers - len(removed)
    # the original is untouched
    assert len(layout(model).layers(model)) == model.config.num_hidden_layers


@pytest.mark.parametrize("family", sorted(ARCHS))
def test_generate_with_kv_cache_matches_reference(family):
    model = tiny_model(family)
    removed = removal_for(family)
    prompt = batch(n=1, t=6, pad_last=0)[0]
    pruned = dp.pruned_copy(model, removed)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    handles = skip_layers(model, removed)
    with torch.no_grad():
        expected = model.generate(prompt, use_cache=False, **kwargs)
    for h in handles:
        h.remove()
    with torch.no_grad():
        got = pruned.generate(prompt, use_cache=True, **kwargs)
    assert got.tolist() == expected.tolist()
    attn_idx = sorted({m.layer_idx for m in pruned.modules() if isinstance(getattr(m, "layer_idx", None), int)})
    assert attn_idx == list(range(pruned.config.num_hidden_layers))


@pytest.mark.parametrize("family", ["gemma3", "gpt2", "mixtral", "qwen3"])
def test_save_reload_gives_same_logits(family, tmp_path):
    model = tiny_model(family)
    pruned = dp.pruned_copy(model, removal_for(family))
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = batch()
    with torch.no_grad():
        a = pruned(input_ids=ids, attention_mask=mask).logits
        b = reloaded(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_gemma3_layer_types_shrink_consistently(tmp_path):
    model = tiny_model("gemma3")
    original = list(model.config.layer_types)
    pruned = dp.pruned_copy(model, [2, 4])
    assert pruned.config.layer_types == [t for i, t in enumerate(original) if i not in (2, 4)]
    for layer, kind in zip(pruned.model.layers, pruned.config.layer_types):
        assert layer.self_attn.layer_type == kind
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.layer_types == pruned.config.layer_types
    assert reloaded.config.num_hidden_layers == 4


def test_layer_index_lists_are_renumbered():
    from transformers import Qwen2MoeConfig

    config = Qwen2MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            shared_expert_intermediate_size=16, num_hidden_layers=5, num_attention_heads=4,
                            num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, mlp_only_layers=[1, 3, 4])
    model = AutoModelForCausalLM.from_config(config)
    pruned = dp.pruned_copy(model, [0, 3])
    assert pruned.config.mlp_only_layers == [0, 2]  # old 1 -> 0, old 3 removed, old 4 -> 2


def test_bad_layer_indices_are_clear_errors():
    model = tiny_model("llama")
    with pytest.raises(DepthpruneError, match="out of range"):
        dp.pruned_copy(model, [4])
    with pytest.raises(DepthpruneError, match="cannot remove all"):
        dp.pruned_copy(model, [0, 1, 2, 3])


def test_unsupported_architecture_names_what_was_missing():
    from transformers import T5Config, T5ForConditionalGeneration

    with pytest.raises(DepthpruneError, match="encoder-decoder"):
        layout(T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, num_layers=2, num_heads=2, vocab_size=32)))

    class Weird(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "weird", "num_hidden_layers": 3})()
            self.blocks = torch.nn.Sequential(torch.nn.Linear(2, 2))

    with pytest.raises(DepthpruneError, match="found no ModuleList of 3 decoder layers"):
        layout(Weird())


def test_gpt2_inverse_layer_idx_scaling_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=3, n_head=2, vocab_size=32,
                                       scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(DepthpruneError, match="scale_attn_by_inverse_layer_idx"):
        dp.pruned_copy(model, [1])
