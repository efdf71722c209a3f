"""Results tables (quality and speed, dense vs pruned) from plain JSON dicts, rendered as Markdown or HTML.

Shared by the model card (:func:`depthprune.reporting.card.model_card`) and ``depthprune report``
so both always show the same numbers. Inputs are the dicts found on disk:
``depthprune.json`` (a :class:`~depthprune.reports.PruneReport`), the task results read
by :func:`eval_tasks` from ``eval/*.json`` and ``bench.json``
(a :class:`~depthprune.speed.BenchComparison`).
"""

from __future__ import annotations

import html
import math
import re
from depthprune.evaluation.speed import ratio_noise
from dataclasses import dataclass, field

# metrics shown per task, in this order, when present; other tasks fall back to the first numeric metric
PRIMARY_METRICS = ("acc", "acc_norm", "exact_match", "f1", "mcc", "word_perplexity")


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> list[str]:
        """Markdown table lines; a cell cannot add a column or a line, nor open HTML."""
        lines = [f"| {' | '.join(map(_md_cell, self.header))} |", "|" + "---|" * len(self.header)]
        lines += [f"| {' | '.join(_md_cell(cell) for cell in row)} |" for row in self.rows]
        return lines + ([""] + [_md_note(n) for n in self.notes] if self.notes else [])

    def to_html(self) -> str:
        """An HTML table; every header, cell and note is HTML-escaped."""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                       for row in self.rows)
        notes = "".join(f"<p class='note'>{html.escape(str(n))}</p>" for n in self.notes)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def _md_inline(text) -> str:
    """One line of Markdown showing ``text`` literally: whitespace (newlines included) folded to one space,
    ``&<>`` as entities (no HTML tag or entity can form), backslashes and backticks escaped (no escape or code
    span can swallow what follows), ``*~[]`` escaped (no emphasis, strikethrough, link or image) and ``_`` where it
    could start or end emphasis (not inside a word, so ``arc_easy`` stays as it is)."""
    text = " ".join(str(text).split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"([\\`*~\[\]])", r"\\\1", text)
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)


def _md_cell(cell) -> str:
    """A table cell: also ``|`` escaped, so a cell cannot add a column."""
    return _md_inline(cell).replace("|", "\\|")


def _md_note(note) -> str:
    """A note paragraph under a table: also the character that would make it a heading, list or table row
    escaped."""
    text = _md_inline(note)
    if text[:1] in ("#", "-", "+", "*", "|", "="):
        return "\\" + text
    return re.sub(r"^(\d+)([.)])", r"\1\\\2", text)


def _num(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        return None
    return float(x)


def normalise_metrics(metrics: dict) -> dict[str, float]:
    """lm-eval style keys (``acc,none``) to plain ones (``acc``); keep finite numbers only."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        name = key.split(",")[0] if key.endswith(",none") or "," not in key else key
        if _num(value) is not None:
            out[name] = float(value)
    return out


def eval_tasks(data: dict) -> dict[str, dict[str, float]]:
    """Per-task metrics of one eval file: ``tasks.{task}.metrics`` (lm-eval bridge) or ``results.{task}``."""
    tasks = data.get("tasks")
    if isinstance(tasks, dict) and tasks:
        return {name: normalise_metrics(entry.get("metrics", entry) if isinstance(entry, dict) else {})
                for name, entry in tasks.items()}
    results = data.get("results")
    if isinstance(results, dict):
        return {name: normalise_metrics(entry) for name, entry in results.items() if isinstance(entry, dict)}
    return {}


def _shown_metrics(dense: dict, pruned: dict) -> list[str]:
    names = [m for m in PRIMARY_METRICS if m in dense or m in pruned]
    if names:
        return names
    others = sorted(k for k in {**dense, **pruned} if "stderr" not in k)
    return others[:1]


def _pct(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} ± {100 * stderr:.1f}" if stderr is not None else f"{100 * value:.1f}"


def _fmt_params(n) -> str:
    n = _num(n)
    if n is None:
        return "-"
    return f"{n / 1e6:.1f}M" if n < 1e9 else f"{n / 1e9:.2f}B"


def _times(new: float | None, old: float | None) -> str:
    return f"×{new / old:.3f}" if new is not None and old else "-"


def task_rows(evals: dict | None) -> list[tuple[str, str, float | None, float | None, float | None, float | None]]:
    """(task, metric, dense, dense_stderr, pruned, pruned_stderr) for every task and shown metric."""
    if not evals:
        return []
    dense, pruned = evals.get("dense", {}), evals.get("pruned", {})
    rows = []
    for task in sorted(set(dense) | set(pruned)):
        d, p = dense.get(task, {}), pruned.get(task, {})
        for metric in _shown_metrics(d, p):
            rows.append((task, metric, d.get(metric), d.get(f"{metric}_stderr"), p.get(metric),
                         p.get(f"{metric}_stderr")))
    return rows


def quality_table(report: dict, evals: dict | None = None) -> Table:
    """Layers, parameters, perplexity and task accuracy, dense vs pruned."""
    rows = [
        ["layers", str(report.get("num_layers_before", "-")), str(report.get("num_layers_after", "-")),
         _times(_num(report.get("num_layers_after")), _num(report.get("num_layers_before")))],
        ["parameters", _fmt_params(report.get("params_before")), _fmt_params(report.get("params_after")),
         _times(_num(report.get("params_after")), _num(report.get("params_before")))],
    ]
    ppl = report.get("perplexity") or {}
    if ppl.get("dense") and ppl.get("pruned"):
        source = (ppl["dense"].get("settings") or {}).get("source", "?")
        d, p = _num(ppl["dense"].get("ppl")), _num(ppl["pruned"].get("ppl"))
        rows.append([f"perplexity ({source}, lower is better)", f"{d:.2f}" if d else "-",
                     f"{p:.2f}" if p else "-", _times(p, d)])
    for task, metric, d, ds, p, ps in task_rows(evals):
        change = f"{100 * (p - d):+.1f} pts" if d is not None and p is not None else "-"
        rows.append([f"{task} {metric} (%)", _pct(d, ds), _pct(p, ps), change])
    notes = []
    if evals and evals.get("meta"):
        meta = evals["meta"]
        bits = [f"{k} {v}" for k, v in meta.items() if v is not None and k in ("lm_eval_version", "num_fewshot", "limit")]
        if bits:
            notes.append("Task accuracy: lm-evaluation-harness, " + ", ".join(bits) + "; ± is the standard error.")
    return Table("Quality", ["", "dense", "pruned", "change"], rows, notes)


def _tok_s(x) -> str:
    x = _num(x)
    return "-" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.1f}")


def _ratio(x) -> str:
    x = _num(x)
    return "-" if x is None else f"{x:.3f}"


def _mib(x) -> str:
    x = _num(x)
    return "-" if x is None else f"{x / 2**20:,.1f} MiB"


def workload_noise(r: dict) -> tuple[bool, str | None]:
    """(noisy, reason) of one workload's ratios; bench.json files written before the noise check get it here."""
    if "noisy" in r:
        return bool(r["noisy"]), r.get("reason")
    if r.get("paired_time_ratios") is None:
        return False, None
    noise = ratio_noise(r["paired_time_ratios"], r.get("ideal_flop_ratio"))
    return noise["noisy"], noise["reason"]


def speed_table(bench: dict | None) -> Table | None:
    """Throughput per workload, measured time ratio vs the ideal FLOP ratio (pruned/dense)."""
    if not bench or "ratios" not in bench:
        return None
    ratios = bench["ratios"]
    base, cand = bench["baseline"], bench["candidate"]
    rows = []
    for r in ratios["workloads"].values():
        if r["kind"] == "prefill":
            label = f"prefill {r['seq_len']} tokens"
        else:
            label = f"decode {r['new_tokens']} tokens after {r['seq_len']}"
        noisy, reason = workload_noise(r)
        measured = f"unreliable: {reason}" if noisy else _ratio(r["time_ratio"])
        rows.append([label, _tok_s(r["baseline_tokens_per_s"]), _tok_s(r["candidate_tokens_per_s"]),
                     measured, _ratio(r["ideal_flop_ratio"])])
    rows.append(["peak memory (weights + working)", _mib(base.get("peak_memory_bytes")),
                 _mib(cand.get("peak_memory_bytes")), _ratio(ratios.get("peak_memory_ratio")),
                 _ratio(ratios.get("params_ratio"))])
    settings = base.get("settings", {})
    env = base.get("environment", {})
    where = env.get("gpu") or f"{env.get('cpu_count', '?')} CPU cores, {env.get('torch_threads', '?')} torch threads"
    notes = [f"Tokens/s (median of {settings.get('repeats', '?')} interleaved runs, batch {settings.get('batch_size', '?')}, "
             f"{base.get('dtype', '?')} on {base.get('device', '?')}, {where}). Time ratio = pruned/dense seconds, "
             "median over back-to-back pairs of runs (lower is faster); "
             "ideal = pruned/dense analytic FLOPs (for memory: the parameter ratio). "
             "A ratio is shown as unreliable when its paired runs spread more than 10% (interquartile) or it "
             "beats the ideal by more than that spread: removing layers cannot beat its share of the work. "
             f"Memory: {base.get('memory_method', '?')}."]
    a, b = (bench.get("labels") or ["dense", "pruned"])[:2]
    return Table("Speed", ["workload", f"{a} tok/s", f"{b} tok/s", "time ratio", "ideal (FLOPs)"], rows, notes)


def search_table(search: dict) -> Table:
    """``prune --auto``: every candidate the search measured or skipped, in the order it ran; the chosen one marked."""
    dense = (search.get("dense") or {}).get("val_ppl")
    chosen = search.get("chosen")
    rows = []
    for i, cand in enumerate(search.get("candidates") or []):
        ppl = cand.get("val_ppl")
        ratio = f"{ppl / dense:.2f}" if isinstance(ppl, (int, float)) and dense else "-"
        status = "chosen" if i == chosen else cand.get("status", "")
        rows.append([cand.get("selection", "?"), ",".join(str(x) for x in cand.get("removed") or []),
                     cand.get("repair", "?"), f"{ppl:.3f}" if isinstance(ppl, (int, float)) else "-", ratio,
                     f"{cand['seconds']:.1f}" if cand.get("seconds") else "-", status])
    val, fit = search.get("validation") or {}, search.get("fit") or {}
    notes = [f"Validation: {val.get('windows', '?')} calibration windows ({val.get('tokens', '?')} tokens) that no fit "
             f"saw; fits used the other {fit.get('windows', '?')} ({fit.get('tokens', '?')} tokens). Dense validation "
             f"perplexity {dense if dense is not None else '?'}.",
             f"Budget {search.get('budget', '?')}: the search took {search.get('search_seconds', '?')} s."]
    notes += [f"Not tried: {s}" for s in search.get("skipped") or []]
    return Table("search (--auto)", ["selection", "removed", "repair", "validation ppl", "x dense", "seconds",
                                     "status"], rows, notes)
