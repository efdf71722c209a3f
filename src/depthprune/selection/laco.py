"""LaCo (Layer Collapse, Yang et al. 2024, arXiv 2402.11187): merge runs of consecutive layers into
their first layer instead of deleting layers.

Reserving-Differences-while-Seeking-Common (RDSC): layers ``l, l+1, .., l+m`` become one layer with
parameters ``theta_l + sum_{k=1..m} (theta_{l+k} - theta_l)``; layers ``l+1..l+m`` are removed. As in
the authors' reference notebook, the formula is applied to every ``nn.Linear`` weight and bias of the
layer (attention and MLP projections); normalisation weights stay those of layer ``l``.

The search (the paper's Algorithm 1, with its hyper-parameters): ``C`` layers are merged per step
(the base plus ``C-1`` after it), the base ``l`` starts at ``H - C`` and moves down to ``L``. A merge
is kept if the mean cosine similarity between the final hidden states (the output of the final norm)
of the merged and of the dense model, each sequence's real tokens flattened into one vector, is above
``T``; then ``l`` moves down by the interval ``I`` (clamped to the shrunk model), otherwise by one.
Unlike the paper, which runs to ``L``, the search stops as soon as ``n`` layers are gone (the last
merge takes only as many layers as are still needed). All layer numbers in results are 0-based,
original numbering. If the search reaches ``L`` with fewer than ``n`` layers gone, that is an error
(lower ``T`` or ``L``).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn

from depthprune.arch.layout import layout
from depthprune.io.data import CalibrationSet
from depthprune.errors import DepthpruneError
from depthprune.arch.layout import input_device
from depthprune.surgery.in_memory import pruned_view, remove_layers

log = logging.getLogger(__name__)


@dataclass
class LacoSettings:
    """LaCo's hyper-parameters (paper names). ``highest`` None = the last layer."""

    merge: int = 3            # C: layers collapsed into one per merge (base + C-1)
    lowest: int = 1           # L: lowest base layer
    highest: int | None = None  # H: the search starts at base H - C
    interval: int = 1         # I: how far the base moves down after an accepted merge
    threshold: float = 0.5    # T: minimum mean cosine similarity of final hidden states

    def to_json(self) -> dict:
        return asdict(self)

    def to_text(self) -> str:
        """The ``C=..,L=..,H=..,I=..,T=..`` form that :meth:`parse` reads."""
        h = "" if self.highest is None else f",H={self.highest}"
        return f"C={self.merge},L={self.lowest}{h},I={self.interval},T={self.threshold}"

    @classmethod
    def parse(cls, text: str | None) -> "LacoSettings":
        """From ``"C=3,L=1,H=29,I=1,T=0.5"`` (any subset; paper letters or field names)."""
        names = {"c": "merge", "l": "lowest", "h": "highest", "i": "interval", "t": "threshold"}
        values: dict = {}
        for part in (text or "").split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key = names.get(key.strip().lower(), key.strip().lower())
            if not sep or key not in cls.__dataclass_fields__:
                raise DepthpruneError(f"bad LaCo setting '{part.strip()}': use C=..,L=..,H=..,I=..,T=.. "
                                      "(merge, lowest, highest, interval, threshold)")
            try:
                values[key] = float(value) if key == "threshold" else int(value)
            except ValueError:
                raise DepthpruneError(f"LaCo setting {key} needs a number, got '{value.strip()}'") from None
        return cls(**values)

    def check(self, total: int) -> None:
        if self.merge < 2:
            raise DepthpruneError(f"LaCo merge size C must be at least 2 (base + one layer), got {self.merge}")
        if self.interval < 1:
            raise DepthpruneError(f"LaCo interval I must be at least 1, got {self.interval}")
        highest = total - 1 if self.highest is None else self.highest
        if not 0 <= self.lowest <= highest < total:
            raise DepthpruneError(f"LaCo needs 0 <= L <= H <= {total - 1}, got L={self.lowest}, H={highest}")


@dataclass
class LacoResult:
    """The accepted merges, in the order they were applied, and every trial of the search."""

    merges: list[dict]       # {"base": orig index, "merged": [orig indices], "similarity": float}
    removed: list[int]       # orig indices of the layers merged away, sorted
    trials: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def rdsc_merge(base: nn.Module, others: Sequence[nn.Module]) -> None:
    """In place: every Linear parameter p of ``base`` becomes p + sum_k (p_k - p), p_k the matching
    parameter of ``others[k]`` (same module path)."""
    with torch.no_grad():
        for name, module in base.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            targets = [o.get_submodule(name) for o in others]
            for pname in ("weight", "bias"):
                p = getattr(module, pname)
                if p is None:
                    continue
                original = p.detach().clone()
                for t in targets:
                    p.add_(getattr(t, pname) - original)


def apply_merges(model: nn.Module, merges: Sequence[dict]) -> nn.Module:
    """In place: apply recorded merges (original numbering, in order) and remove the merged layers."""
    layers = layout(model).layers(model)
    gone: list[int] = []
    for m in merges:
        rdsc_merge(layers[m["base"]], [layers[i] for i in m["merged"]])
        gone.extend(m["merged"])
    return remove_layers(model, sorted(gone))


def merged_copy(model: nn.Module, merges: Sequence[dict]) -> nn.Module:
    """A deep copy of ``model`` with ``merges`` applied; the original is untouched."""
    return apply_merges(copy.deepcopy(model), merges)


def _final_hidden(model: nn.Module, calibration: CalibrationSet, batch_size: int) -> list[torch.Tensor]:
    """Per sequence: its real tokens' final hidden states (after the final norm), flattened."""
    device = input_device(model)
    out = []
    with torch.inference_mode():
        for ids, mask in calibration.batches(batch_size):
            h = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                      output_hidden_states=True).hidden_states[-1].float().cpu()
            for row in range(h.shape[0]):
                out.append(h[row][mask[row].bool()].flatten())
    return out


def similarity(dense: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> float:
    """Mean over sequences of cos(dense_i, other_i) of the flattened final hidden states."""
    sims = [float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0)) for a, b in zip(dense, other)]
    return sum(sims) / len(sims)


def laco(model: nn.Module, calibration: CalibrationSet, n: int, settings: LacoSettings | None = None, *,
         batch_size: int = 8, protect_last: int = 0, progress: bool = True) -> LacoResult:
    """Search which layers to collapse until ``n`` are gone; ``model`` is left untouched (the search
    works on a copy). Apply the result with :func:`merged_copy` / :func:`apply_merges`.
    ``protect_last``: the last K original layers are never merged (nor used as a base)."""
    settings = settings or LacoSettings()
    total = len(layout(model).layers(model))
    settings.check(total)
    if not 1 <= n < total:
        raise DepthpruneError(f"cannot remove {n} layers from a {total}-layer model: choose 1..{total - 1}")
    highest = total - 1 if settings.highest is None else settings.highest
    dense = _final_hidden(model, calibration, batch_size)
    work = copy.deepcopy(model)
    layers = layout(work).layers(work)
    alive = list(range(total))  # original index of each current layer
    merges: list[dict] = []
    trials: list[dict] = []
    pos = highest - settings.merge
    removed = 0
    while pos >= settings.lowest and removed < n:
        pos = min(pos, len(alive) - 2)
        count = min(settings.merge - 1, n - removed, len(alive) - pos - 1)
        if pos < settings.lowest or count < 1:
            break
        base, merged = alive[pos], [i for i in alive[pos + 1:pos + 1 + count] if i < total - protect_last]
        if not merged:
            pos -= 1
            continue
        count = len(merged)
        saved = [p.detach().clone() for p in _linear_params(layers[base])]
        rdsc_merge(layers[base], [layers[i] for i in merged])
        gone_now = sorted(set(range(total)) - set(alive) | set(merged))
        with pruned_view(work, gone_now):
            sim = similarity(dense, _final_hidden(work, calibration, batch_size))
        accepted = sim > settings.threshold
        trials.append({"base": base, "merged": merged, "similarity": sim, "accepted": accepted})
        log.info("laco: merge %s into %d: similarity %.4f %s", merged, base, sim, "kept" if accepted else "undone")
        if accepted:
            merges.append({"base": base, "merged": merged, "similarity": sim})
            alive = [i for i in alive if i not in merged]
            removed += count
            pos -= settings.interval
            if pos >= len(alive):
                pos = len(alive) - 1 - settings.merge
        else:
            with torch.no_grad():
                for p, s in zip(_linear_params(layers[base]), saved):
                    p.copy_(s)
            pos -= 1
    if removed < n:
        raise DepthpruneError(f"LaCo merged away only {removed} of {n} layers before reaching L={settings.lowest} "
                              f"at threshold T={settings.threshold}; lower T (e.g. T=0.3) or L, or remove fewer layers")
    return LacoResult(merges, sorted(i for m in merges for i in m["merged"]), trials,
                      {**settings.to_json(), "highest": highest})


def _linear_params(layer: nn.Module) -> list[torch.Tensor]:
    return [p for m in layer.modules() if isinstance(m, nn.Linear) for p in (m.weight, m.bias) if p is not None]


__all__ = ["LacoResult", "LacoSettings", "apply_merges", "laco", "merged_copy", "rdsc_merge", "similarity"]
