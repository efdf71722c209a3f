"""LoRA healing: learns, is deterministic, early-stops to the best state, merges to the plain architecture."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from depthprune.io.data import from_tensors
from depthprune.repair.lora import lora_repair
from depthprune.surgery.in_memory import pruned_copy
from tiny import tiny_model

pytest.importorskip("peft")


def _sets():
    g = torch.Generator().manual_seed(0)
    base = torch.randint(3, 40, (8,), generator=g)
    rows = torch.stack([torch.roll(base, k).repeat(3) for k in range(10)])  # periodic text: learnable
    mask = torch.ones_like(rows)
    return from_tensors(rows[:8], mask[:8]), from_tensors(rows[8:], mask[8:])


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lora_learns_merges_plain_and_is_deterministic(tmp_path):
    train, held = _sets()
    dense = tiny_model("llama")
    a, rep = lora_repair(pruned_copy(dense, [1, 2]), train, held, lr=1e-2, batch_size=2, eval_every=1, seed=3,
                         progress=False)
    assert type(a) is tf.LlamaForCausalLM
    assert not any("lora" in n for n, _ in a.named_modules())
    assert rep.heldout[-1]["loss"] < rep.heldout[0]["loss"]
    assert rep.trainable_params > 0 and rep.steps_done >= 1
    b, _ = lora_repair(pruned_copy(dense, [1, 2]), train, held, lr=1e-2, batch_size=2, eval_every=1, seed=3,
                       progress=False)
    c, _ = lora_repair(pruned_copy(dense, [1, 2]), train, held, lr=1e-2, batch_size=2, eval_every=1, seed=4,
                       progress=False)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)

    ids = held.input_ids
    a.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert (reloaded(input_ids=ids).logits - a(input_ids=ids).logits).abs().max() <= 1e-4
    kw = dict(max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(reloaded.generate(ids[:1, :6], **kw), a.generate(ids[:1, :6], **kw))


def test_early_stop_keeps_the_best_state():
    train, held = _sets()
    dense = tiny_model("qwen2")
    before = pruned_copy(dense, [2])
    with torch.no_grad():
        want = before(input_ids=held.input_ids).logits
    # a destructive learning rate: held-out loss rises at the first evaluation, so step 0 (no change) is kept
    out, rep = lora_repair(pruned_copy(dense, [2]), train, held, lr=5.0, batch_size=2, eval_every=1,
                           progress=False)
    assert rep.stopped_early and rep.best_step == 0 and rep.steps_done == 1
    with torch.no_grad():
        assert (out(input_ids=held.input_ids).logits - want).abs().max() <= 1e-5


def test_distillation_moves_towards_the_teacher():
    train, held = _sets()
    dense = tiny_model("llama")
    student = pruned_copy(dense, [1, 2])

    def kl(model):
        with torch.no_grad():
            t = torch.log_softmax(dense(input_ids=held.input_ids).logits, -1)
            s = torch.log_softmax(model(input_ids=held.input_ids).logits, -1)
        return float((t.exp() * (t - s)).sum(-1).mean())

    start = kl(student)
    out, rep = lora_repair(student, train, None, teacher=dense, lr=1e-2, batch_size=2, progress=False)
    assert rep.objective == "distill" and rep.steps_done == 4
    assert kl(out) < start
