"""Perplexity on held-out text (non-overlapping windows, padding masked)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from depthprune.io.data import CalibrationSet, iter_texts, sequential_windows
from depthprune.arch.layout import input_device


@dataclass
class PerplexityResult:
    ppl: float
    nll: float
    tokens: int
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def perplexity_on(model, windows: CalibrationSet, *, batch_size: int = 1, progress: bool = True,
                  desc: str = "perplexity") -> PerplexityResult:
    """exp(mean NLL) of every real token after the first in each window, given the ones before it."""
    device = input_device(model)
    total_nll = 0.0
    total = 0
    with torch.inference_mode():
        for input_ids, mask in tqdm(windows.batches(batch_size), total=windows.num_batches(batch_size),
                                    desc=desc, disable=not progress, unit="window"):
            input_ids, mask = input_ids.to(device), mask.to(device)
            logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            targets = input_ids[:, 1:]
            keep = mask[:, 1:].bool() & mask[:, :-1].bool()
            logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)
            nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            total_nll += float(nll[keep].sum(dtype=torch.float64))
            total += int(keep.sum())
    mean = total_nll / total
    return PerplexityResult(ppl=math.exp(mean), nll=mean, tokens=total, settings=dict(windows.settings))


def perplexity(model, tokenizer, spec: str, *, seq_len: int = 512, max_tokens: int = 40_000,
               batch_size: int = 1, text_field: str = "text", progress: bool = True) -> PerplexityResult:
    """Perplexity of ``model`` on the text SPEC (see :mod:`depthprune.data`)."""
    windows = sequential_windows(tokenizer, iter_texts(spec, text_field=text_field), seq_len=seq_len,
                                 max_tokens=max_tokens, source=spec)
    return perplexity_on(model, windows, batch_size=batch_size, progress=progress)


__all__ = ["PerplexityResult", "perplexity", "perplexity_on"]
