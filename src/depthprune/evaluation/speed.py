"""Speed and memory of a model, alone or side by side with a baseline.

What is measured (``benchmark`` / ``compare``):

* **prefill**: one forward pass over ``batch_size x seq_len`` random token ids, logits of
  the last position only (as ``generate`` does for a prompt); tokens/s = B*T / seconds.
* **decode**: after a ``prompt_len`` prefill (not timed), ``decode_tokens`` greedy steps
  with the KV cache, one token per sequence per step, no early stop at EOS; tokens/s =
  B*N / seconds.
* **memory**: parameter bytes, plus the peak working memory of each workload above the
  memory in use before it. On CUDA: ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``. On CPU (Linux): the process's peak resident set size
  (``VmHWM``), reset through ``/proc/self/clear_refs`` before each workload after a
  ``malloc_trim``; where that is not available, a background thread samples RSS
  (psutil) every millisecond.
* **FLOPs**: analytic, from the config (:mod:`depthprune.flops`).

``compare`` runs warmups, then repetitions interleaved baseline/candidate, alternating
which goes first (A B, B A, A B, ...) so slow drifts of a noisy machine hit both alike,
and reports medians. Ratios are candidate / baseline: for time and FLOPs lower is
better; ``speedup`` is the inverse of the time ratio. The time ratio is the median of
the *paired* ratios (repetition i of the candidate over repetition i of the baseline,
run back to back), which cancels load changes on a shared machine that would skew a
ratio of two medians (that one is kept too, as ``ratio_of_median_times``).
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import logging
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from depthprune.evaluation import flops as flops_mod
from depthprune.arch.layout import num_layers
from depthprune.errors import DepthpruneError
from depthprune.io.loading import as_loaded
from depthprune._version import library_versions
from depthprune.arch.layout import input_device
from depthprune.arch.layout import parameter_count, weight_bytes

log = logging.getLogger(__name__)

DEFAULT_SEQ_LENS = (128, 512)


@dataclass
class Workload:
    """One timed workload of one model."""

    kind: str                 # "prefill" or "decode"
    seq_len: int              # prefill length, or the prompt length before decoding
    new_tokens: int           # decode steps (0 for prefill)
    batch_size: int
    tokens: int               # tokens processed per repetition (B*T or B*N)
    times_s: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None   # working memory above what was in use before
    flops: int = 0            # analytic FLOPs per repetition (all sequences of the batch)

    @property
    def key(self) -> str:
        return f"prefill@{self.seq_len}" if self.kind == "prefill" else f"decode@{self.seq_len}+{self.new_tokens}"

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s) if self.times_s else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.median_s if self.times_s else float("nan")

    def to_json(self) -> dict:
        return {"key": self.key, **asdict(self), "median_s": self.median_s, "tokens_per_s": self.tokens_per_s}


@dataclass
class BenchResult:
    """Speed, memory and size of one model."""

    model: str
    model_type: str | None
    num_layers: int
    params: int
    weights_bytes: int
    device: str
    dtype: str
    workloads: list[Workload]
    settings: dict
    memory_method: str
    environment: dict = field(default_factory=dict)
    versions: dict = field(default_factory=library_versions)

    @property
    def peak_memory_bytes(self) -> int | None:
        """Weights plus the largest working memory of any workload."""
        peaks = [w.peak_memory_bytes for w in self.workloads if w.peak_memory_bytes is not None]
        return self.weights_bytes + max(peaks) if peaks else None

    def workload(self, key: str) -> Workload:
        return next(w for w in self.workloads if w.key == key)

    def to_json(self) -> dict:
        out = asdict(self)
        out["workloads"] = [w.to_json() for w in self.workloads]
        out["peak_memory_bytes"] = self.peak_memory_bytes
        out["kind"] = "depthprune.bench"
        return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or a != a or b != b:
        return None
    return a / b


# --- noise: is a paired ratio believable? -------------------------------------------------------------

MAX_RELATIVE_SPREAD = 0.10  # interquartile range of the paired ratios, relative to their median
IDEAL_MARGIN = 0.03  # a measured ratio may beat the ideal FLOP ratio by this much (caches, fixed costs) plus the noise
MIN_PAIRS = 3


def ratio_noise(paired: list[float], ideal: float | None) -> dict:
    """Spread of the paired time ratios and whether the median is believable.

    ``noisy`` is true (with a one-sentence ``reason``) when there are fewer than 3 pairs, when the interquartile
    range of the pairs exceeds 10% of their median, or when the median beats the ideal FLOP ratio by more than
    the noise (the spread below the median) plus a 3% margin: removing layers cannot make the rest run faster
    than their share of the work, so such a figure measures a busy machine, not the model.
    """
    out: dict = {"pairs": len(paired), "min": None, "q25": None, "q75": None, "max": None, "relative_iqr": None,
                 "noisy": False, "reason": None}
    if not paired:
        return {**out, "noisy": True, "reason": "no paired runs"}
    ordered = sorted(paired)
    median = statistics.median(ordered)
    if len(ordered) >= 2:
        q25, _, q75 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q25 = q75 = ordered[0]
    relative = (q75 - q25) / median if median > 0 else float("inf")
    out.update(min=ordered[0], q25=q25, q75=q75, max=ordered[-1], relative_iqr=relative)
    if len(ordered) < MIN_PAIRS:
        out.update(noisy=True, reason=f"only {len(ordered)} paired run(s); use --repeats 5 or more")
    elif relative > MAX_RELATIVE_SPREAD:
        out.update(noisy=True, reason=f"paired ratios spread {q25:.2f}-{q75:.2f} (interquartile, "
                                      f"{relative:.0%} of the median); measure on an idle machine")
    elif ideal is not None and median < ideal * (1 - IDEAL_MARGIN) - (median - q25):
        out.update(noisy=True, reason=f"ratio {median:.2f} beats the ideal {ideal:.2f} by more than the noise "
                                      f"(interquartile {q25:.2f}-{q75:.2f}); the machine was busy")
    return out


@dataclass
class BenchComparison:
    """A candidate (e.g. pruned) model measured side by side with a baseline (e.g. dense). Ratios are candidate/baseline."""

    baseline: BenchResult
    candidate: BenchResult
    labels: tuple[str, str] = ("dense", "pruned")
    command: str | None = None

    def ratios(self) -> dict:
        b, c = self.baseline, self.candidate
        rows = {}
        for wb in b.workloads:
            wc = c.workload(wb.key)
            paired = [c_s / b_s for b_s, c_s in zip(wb.times_s, wc.times_s) if b_s > 0]
            time_ratio = statistics.median(paired) if paired else None
            flop_ratio = _ratio(wc.flops, wb.flops)
            noise = ratio_noise(paired, flop_ratio)
            rows[wb.key] = {
                "kind": wb.kind, "seq_len": wb.seq_len, "new_tokens": wb.new_tokens,
                "baseline_tokens_per_s": wb.tokens_per_s, "candidate_tokens_per_s": wc.tokens_per_s,
                "time_ratio": time_ratio, "paired_time_ratios": paired,
                "ratio_of_median_times": _ratio(wc.median_s, wb.median_s), "ideal_flop_ratio": flop_ratio,
                "speedup": _ratio(1.0, time_ratio), "ideal_speedup": _ratio(1.0, flop_ratio),
                "memory_ratio": _ratio(wc.peak_memory_bytes, wb.peak_memory_bytes),
                "spread": {k: noise[k] for k in ("pairs", "min", "q25", "q75", "max", "relative_iqr")},
                "noisy": noise["noisy"], "reason": noise["reason"],
            }
        return {
            "workloads": rows,
            "params_ratio": _ratio(c.params, b.params),
            "layers_ratio": _ratio(c.num_layers, b.num_layers),
            "weights_bytes_ratio": _ratio(c.weights_bytes, b.weights_bytes),
            "peak_memory_ratio": _ratio(c.peak_memory_bytes, b.peak_memory_bytes),
        }

    def to_json(self) -> dict:
        return {"kind": "depthprune.bench-comparison", "labels": list(self.labels),
                "ratio_definition": "candidate / baseline (time and FLOPs: lower is better; speedup = 1/time_ratio; "
                                    "time_ratio = median of paired back-to-back repetition ratios)",
                "command": self.command, "baseline": self.baseline.to_json(), "candidate": self.candidate.to_json(),
                "ratios": self.ratios()}


# --- memory ---------------------------------------------------------------------------------------

def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda max_memory_allocated"
    if _can_reset_hwm():
        return "cpu peak RSS (VmHWM reset via /proc/self/clear_refs)"
    return "cpu RSS sampled every 1 ms (psutil)"


@contextlib.contextmanager
def _peak_memory(device: torch.device, method: str) -> Iterator[Callable[[], int]]:
    """Yield a function that returns the peak memory above the level at entry."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        result = {}
        yield lambda: result["peak"]
        torch.cuda.synchronize(device)
        result["peak"] = max(0, torch.cuda.max_memory_allocated(device) - start)
        return
    _malloc_trim()
    if method.startswith("cpu peak RSS"):
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        start = _status_kb("VmRSS") or 0
        result = {}
        yield lambda: result["peak"]
        result["peak"] = max(0, (_status_kb("VmHWM") or 0) - start)
        return
    import psutil

    proc = psutil.Process()
    start = proc.memory_info().rss
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    result = {}
    try:
        yield lambda: result["peak"]
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], proc.memory_info().rss)
        result["peak"] = max(0, peak[0] - start)


# --- workloads ------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _token_ids(vocab: int, batch_size: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = min(3, vocab - 1)  # keep clear of the usual pad/bos/eos ids
    return torch.randint(low, vocab, (batch_size, length), generator=g)


class _Runner:
    """Runs the workloads of one model; each call returns seconds (and memory when asked)."""

    def __init__(self, model, device: torch.device, method: str, seed: int) -> None:
        self.model = model
        self.device = device
        self.method = method
        self.seed = seed
        self.vocab = int(model.get_input_embeddings().weight.shape[0])
        self.last_only = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
        # transformers >= 5.2x names the KV cache argument/output `cache`; older versions `past_key_values`
        self.cache_arg = "cache" if _accepts(model, "cache") else "past_key_values"

    def inputs(self, batch_size: int, length: int) -> torch.Tensor:
        return _token_ids(self.vocab, batch_size, length, self.seed).to(self.device)

    def prefill(self, ids: torch.Tensor) -> None:
        self.model(input_ids=ids, use_cache=False, **self.last_only)

    def decode(self, prompt: torch.Tensor, new_tokens: int) -> float:
        out = self.model(input_ids=prompt, use_cache=True, **self.last_only)
        past = getattr(out, self.cache_arg)
        token = out.logits[:, -1:].argmax(-1)
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = self.model(input_ids=token, use_cache=True, **{self.cache_arg: past})
            past = getattr(out, self.cache_arg)
            token = out.logits[:, -1:].argmax(-1)  # greedy; EOS is just another token here
        _sync(self.device)
        return time.perf_counter() - start

    def run(self, w: Workload, measure_memory: bool) -> tuple[float, int | None]:
        ids = self.inputs(w.batch_size, w.seq_len)
        with torch.inference_mode():
            if measure_memory:
                with _peak_memory(self.device, self.method) as peak:
                    seconds = self._timed(w, ids)
                return seconds, peak()
            return self._timed(w, ids), None

    def _timed(self, w: Workload, ids: torch.Tensor) -> float:
        if w.kind == "decode":
            return self.decode(ids, w.new_tokens)
        _sync(self.device)
        start = time.perf_counter()
        self.prefill(ids)
        _sync(self.device)
        return time.perf_counter() - start


def _workloads(config, seq_lens: Sequence[int], prompt_len: int, decode_tokens: int,
               batch_size: int, logits: str = "last") -> list[Workload]:
    out = [Workload("prefill", t, 0, batch_size, batch_size * t,
                    flops=batch_size * flops_mod.prefill_flops(config, t, logits=logits)) for t in seq_lens]
    if decode_tokens > 0:
        out.append(Workload("decode", prompt_len, decode_tokens, batch_size, batch_size * decode_tokens,
                            flops=batch_size * flops_mod.decode_flops(config, prompt_len, decode_tokens)))
    return out


def _check_settings(seq_lens: Sequence[int], prompt_len: int, decode_tokens: int, batch_size: int,
                    repeats: int, warmup: int) -> None:
    if not seq_lens and decode_tokens <= 0:
        raise DepthpruneError("nothing to measure: give at least one prefill length or --decode-tokens > 0")
    if any(t < 1 for t in seq_lens) or prompt_len < 1 or batch_size < 1:
        raise DepthpruneError("sequence lengths, prompt length and batch size must be at least 1")
    if repeats < 1 or warmup < 0 or decode_tokens < 0:
        raise DepthpruneError("--repeats must be at least 1 and --warmup / --decode-tokens not negative")


def _limit(model) -> int | None:
    cfg = getattr(model.config, "text_config", None) or model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def _environment(device: torch.device) -> dict:
    env = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "processor": platform.processor() or platform.machine()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


@dataclass
class _Model:
    name: str
    model: object
    runner: _Runner
    workloads: list[Workload]


def _prepare(name: str, model, seq_lens, prompt_len, decode_tokens, batch_size, method, seed) -> _Model:
    device = input_device(model)
    limit = _limit(model)
    longest = max([*seq_lens, prompt_len + decode_tokens])
    if limit and longest > limit:
        raise DepthpruneError(f"{name} handles at most {limit} positions but the benchmark needs {longest}; "
                              "use shorter --seq-lens / --decode-tokens")
    model.eval()
    runner = _Runner(model, device, method, seed)
    logits = "last" if runner.last_only else "all"  # models without logits_to_keep compute every position's
    return _Model(name, model, runner, _workloads(model.config, seq_lens, prompt_len, decode_tokens, batch_size,
                                                  logits))


def _result(m: _Model, settings: dict, method: str) -> BenchResult:
    model = m.model
    device = input_device(model)
    weights = weight_bytes(model, buffers=True)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return BenchResult(model=m.name, model_type=getattr(model.config, "model_type", None),
                       num_layers=num_layers(getattr(model.config, "text_config", None) or model.config),
                       params=parameter_count(model), weights_bytes=weights, device=str(device), dtype=dtype,
                       workloads=m.workloads, settings=settings, memory_method=method,
                       environment=_environment(device))


def _measure(models: list[_Model], *, repeats: int, warmup: int, progress: bool) -> None:
    """Warm up every model, then time each workload ``repeats`` times, interleaving the models."""
    from tqdm.auto import tqdm

    keys = [w.key for w in models[0].workloads]
    total = len(keys) * len(models) * (warmup + repeats + 1)
    bar = tqdm(total=total, desc="bench", unit="run", disable=not progress)
    for key in keys:
        for m in models:
            w = next(x for x in m.workloads if x.key == key)
            for _ in range(warmup):
                m.runner.run(w, measure_memory=False)
                bar.update()
        for rep in range(repeats):
            order = models if rep % 2 == 0 else models[::-1]
            for m in order:
                w = next(x for x in m.workloads if x.key == key)
                seconds, _ = m.runner.run(w, measure_memory=False)
                w.times_s.append(seconds)
                bar.update()
        for m in models:  # memory in a separate, untimed run: the bookkeeping must not touch the timings
            w = next(x for x in m.workloads if x.key == key)
            _, peak = m.runner.run(w, measure_memory=True)
            w.peak_memory_bytes = peak
            bar.update()
            log.info("%s %s: median %.4fs, %.1f tok/s", m.name, key, w.median_s, w.tokens_per_s)
    bar.close()


def _settings(seq_lens, prompt_len, decode_tokens, batch_size, repeats, warmup, seed, logits_last) -> dict:
    return {"seq_lens": list(seq_lens), "prompt_len": prompt_len, "decode_tokens": decode_tokens,
            "batch_size": batch_size, "repeats": repeats, "warmup": warmup, "seed": seed,
            "statistic": "median", "prefill_logits": "last position" if logits_last else "all positions",
            "decode": "greedy, KV cache, fixed number of steps (no EOS stop)"}


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` CPU threads (None: leave torch's setting), restoring it afterwards."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise DepthpruneError("--threads must be at least 1")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def benchmark(model, tokenizer=None, *, name: str | None = None, seq_lens: Sequence[int] = DEFAULT_SEQ_LENS,
              prompt_len: int = 128, decode_tokens: int = 32, batch_size: int = 1, repeats: int = 5,
              warmup: int = 1, seed: int = 0, dtype: str = "float32", device: str = "cpu",
              threads: int | None = None, progress: bool = False, trust_remote_code: bool = False) -> BenchResult:
    """Prefill and decode throughput, peak memory and size of one model (see the module docstring).

    ``threads`` sets torch's CPU thread count for the run (on a loaded machine, fewer threads
    than cores give far steadier numbers).
    """
    _check_settings(seq_lens, prompt_len, decode_tokens, batch_size, repeats, warmup)
    loaded = as_loaded(model, tokenizer, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    dev = input_device(loaded.model)
    method = memory_method(dev)
    m = _prepare(name or loaded.source, loaded.model, seq_lens, prompt_len, decode_tokens, batch_size, method, seed)
    with _threads(threads):
        _measure([m], repeats=repeats, warmup=warmup, progress=progress)
        settings = _settings(seq_lens, prompt_len, decode_tokens, batch_size, repeats, warmup, seed,
                             bool(m.runner.last_only))
        return _result(m, settings, method)


def compare(baseline, candidate, tokenizer=None, *, labels: tuple[str, str] = ("dense", "pruned"),
            names: tuple[str | None, str | None] = (None, None), seq_lens: Sequence[int] = DEFAULT_SEQ_LENS,
            prompt_len: int = 128, decode_tokens: int = 32, batch_size: int = 1, repeats: int = 5,
            warmup: int = 1, seed: int = 0, dtype: str = "float32", device: str = "cpu",
            threads: int | None = None, progress: bool = False, trust_remote_code: bool = False) -> BenchComparison:
    """Measure ``candidate`` and ``baseline`` side by side in one run (interleaved); ratios are candidate/baseline.

    Both may be spec strings, :class:`~depthprune.models.LoadedModel` or in-memory models;
    they must live on the same device.
    """
    _check_settings(seq_lens, prompt_len, decode_tokens, batch_size, repeats, warmup)
    a = as_loaded(baseline, tokenizer, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    b = as_loaded(candidate, tokenizer, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    dev_a, dev_b = input_device(a.model), input_device(b.model)
    if dev_a.type != dev_b.type:
        raise DepthpruneError(f"the two models are on different devices ({dev_a} and {dev_b}); put them on one")
    method = memory_method(dev_a)
    ma = _prepare(names[0] or a.source, a.model, seq_lens, prompt_len, decode_tokens, batch_size, method, seed)
    mb = _prepare(names[1] or b.source, b.model, seq_lens, prompt_len, decode_tokens, batch_size, method, seed)
    if ma.runner.vocab != mb.runner.vocab:
        log.warning("the two models have different vocabularies (%d vs %d)", ma.runner.vocab, mb.runner.vocab)
    with _threads(threads):
        _measure([ma, mb], repeats=repeats, warmup=warmup, progress=progress)
        settings = _settings(seq_lens, prompt_len, decode_tokens, batch_size, repeats, warmup, seed,
                             bool(ma.runner.last_only))
        return BenchComparison(_result(ma, settings, method), _result(mb, settings, method), labels=tuple(labels))


def parse_seq_lens(text: str) -> list[int]:
    """'128,512' -> [128, 512]; an empty string means no prefill workloads."""
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise DepthpruneError(f"--seq-lens must be comma-separated integers like 128,512, not '{text}'") from None
    return values
