"""Held-out perplexity of 25%-pruned models under each repair: none / linear lstsq / linear cosine / lora /
linear+lora, for BI one-shot, the best contiguous block and greedy-ppl removal sets; repair wall time and peak
memory (RSS above the level at the start of the repair). Results are written to a JSON file after every row.

    PYTHONPATH=src python bench/repair_table.py smollm2-135m --remove 7 --json bench/results/repair_smollm2-135m.json

Texts: calibration (selection + linear fit) and LoRA repair data are Project Gutenberg books
(/work/shared/data/gutenberg, different seeds), or with --texts wikitext-tail the WikiText-2 raw test text from
character 200,000 on; perplexity is on the first tokens of WikiText-2 raw test (disjoint from both).
The greedy-ppl removal set is read from the strategies sweep (bench/results/MODEL/sweep.json) because
re-running greedy selection does not fit this machine's CPU budget; its calibration is stated there.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _memory import PeakMemory  # noqa: E402

from depthprune.arch.layout import num_layers
from depthprune.io.data import build_calibration, iter_texts, sequential_windows
from depthprune.evaluation.perplexity import perplexity_on
from depthprune.io.models import load_model
from depthprune.repair import collect_statistics, fold_linear_maps, lora_repair, repair_data, solve_maps
from depthprune.selection.strategies import compute_scores, select
from depthprune.surgery.in_memory import pruned_copy

DATA = Path(os.environ.get("DEPTHPRUNE_DATA_DIR", "/work/shared/data"))
WIKI_TAIL_START = 200_000  # characters; the evaluated slice (a few thousand tokens) ends far before it


def training_text(kind: str, tokenizer, ppl_tokens: int) -> str:
    """The text SPEC for calibration and LoRA data."""
    if kind == "books":
        return str(DATA / "gutenberg")
    raw = (DATA / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    head = len(tokenizer(raw[:WIKI_TAIL_START], add_special_tokens=False)["input_ids"])
    if head < 2 * ppl_tokens:
        raise SystemExit(f"the evaluated slice ({ppl_tokens} tokens) would reach the calibration text")
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "depthprune-bench" / "wikitext-2-raw-test-tail.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(raw[WIKI_TAIL_START:], encoding="utf-8")
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--remove", type=int, required=True)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--ppl-tokens", type=int, default=2048)
    p.add_argument("--ppl-seq-len", type=int, default=512)
    p.add_argument("--lora-tokens", type=int, default=4096)
    p.add_argument("--lora-seq-len", type=int, default=256)
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-on", default="block", help="comma list of strategies that also get lora rows")
    p.add_argument("--lora-linear", default="lstsq", help="which linear objective precedes lora in linear+lora")
    p.add_argument("--strategies", default="block,one-shot,greedy-ppl",
                   help="removal sets; 'dense' adds the unpruned model as a LoRA reference (with --lora-on dense)")
    p.add_argument("--cosine-steps", type=int, default=30)
    p.add_argument("--ridge", default="auto", help="float, or auto (2-fold cross-validation)")
    p.add_argument("--objectives", default="lstsq,cosine")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--given", default=None, help="STRATEGY:L1,L2,... use this removal set instead of selecting")
    p.add_argument("--skip-none", action="store_true", help="no unrepaired row (measured by another run)")
    p.add_argument("--lora-only", action="store_true", help="only the lora rows (linear maps fitted, not evaluated)")
    p.add_argument("--texts", default="books", choices=["books", "wikitext-tail"],
                   help="calibration + LoRA text: the Gutenberg books (other domain than the evaluation), or "
                        f"WikiText-2 raw test from character {WIKI_TAIL_START:,} on (same domain, disjoint from the "
                        "evaluated first tokens; checked)")
    p.add_argument("--tasks", default="", help="lm-eval tasks for every row's model, e.g. piqa,arc_easy (offline data)")
    p.add_argument("--limit", type=int, default=50, help="documents per lm-eval task")
    p.add_argument("--repairs", default=None,
                   help="rows to measure, comma list of none,lstsq,cosine,lora,linear+lora,distill (distill: LoRA "
                        "trained on the dense model's next-token distribution); default: none, --objectives, and "
                        "lora,linear+lora for the --lora-on strategies")
    p.add_argument("--json", required=True)
    a = p.parse_args()
    if a.repairs is None:
        repairs = ([] if (a.skip_none or a.lora_only) else ["none"]) + \
            ([] if a.lora_only else a.objectives.split(",")) + ["lora", "linear+lora"]
    else:
        repairs = a.repairs.split(",")
        unknown = set(repairs) - {"none", "lstsq", "cosine", "lora", "linear+lora", "distill"}
        if unknown:
            p.error(f"unknown repairs: {', '.join(sorted(unknown))}")
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)
    out = Path(a.json)
    result: dict = {"model": a.model, "remove": a.remove, "settings": vars(a), "rows": []}

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    lm = load_model(a.model)
    model, tok = lm.model, lm.tokenizer
    text = training_text(a.texts, tok, a.ppl_tokens)
    cal = build_calibration(text, tok, samples=a.samples, seq_len=a.seq_len, seed=0)
    windows = sequential_windows(tok, iter_texts(str(DATA / "wikitext-2-raw" / "wiki.test.raw")),
                                 seq_len=a.ppl_seq_len, max_tokens=a.ppl_tokens, source="wikitext-2-raw test")
    result["calibration"] = dict(cal.settings)
    result["evaluation"] = dict(windows.settings)

    def ppl(m) -> float:
        return perplexity_on(m, windows, progress=False).ppl

    def tasks_of(m, name: str) -> dict:
        """lm-eval metrics per task of --tasks, with the number of documents evaluated."""
        from depthprune.evaluation.lmeval import evaluate_tasks

        res = evaluate_tasks(m, tok, a.tasks, data_dir=str(DATA), limit=a.limit, model_name=name, bootstrap_iters=100)
        return {t: {**v["metrics"], "n": v["n_samples"]["effective"]} for t, v in res["tasks"].items()}

    t = time.perf_counter()
    result["dense_ppl"] = None if (a.lora_only or a.skip_none) else ppl(model)
    if a.tasks and not (a.lora_only or a.skip_none):
        result["dense_tasks"] = tasks_of(model, "dense")
    result["dense_eval_s"] = time.perf_counter() - t
    save()
    total = num_layers(model.config)

    selections: dict[str, list[int]] = {}
    wanted = a.strategies.split(",")
    if a.given:
        name, _, layers = a.given.partition(":")
        selections[name] = [int(v) for v in layers.split(",")]
        wanted = [name]
    elif "one-shot" in wanted or "block" in wanted:
        scores = compute_scores(model, cal, ["bi", "angular"], block_sizes=(a.remove,), progress=False)
        for strategy, metric in (("one-shot", "bi"), ("block", "angular")):
            if strategy in wanted:
                chosen, _ = select(model, cal, a.remove, metric=metric, strategy=strategy, precomputed=scores,
                                   progress=False)
                selections[strategy] = chosen.removed
    if "greedy-ppl" in wanted and not a.given:
        sweep = json.loads((Path(__file__).parent / "results" / a.model / "sweep.json").read_text())
        point = [q for q in sweep["points"] if q["strategy"] == "greedy-ppl" and q["n_removed"] == a.remove]
        if point:
            selections["greedy-ppl"] = point[0]["removed_layers"]
            result["greedy_source"] = {"file": f"bench/results/{a.model}/sweep.json",
                                       "calibration": sweep.get("calibration")}
    if "dense" in wanted:  # reference: LoRA on the unpruned model with the same data and budget
        selections["dense"] = []
    result["selections"] = selections
    save()

    def row(strategy, repair, m, seconds, peak, extra=None):
        r = {"strategy": strategy, "removed": selections[strategy], "repair": repair, "ppl": ppl(m),
             "repair_s": seconds, "repair_peak_mb": peak / 2**20 if peak is not None else None, **(extra or {})}
        if a.tasks:
            r["tasks"] = tasks_of(m, f"{strategy}/{repair}")
        result["rows"].append(r)
        save()
        print(json.dumps({k: r[k] for k in ("strategy", "repair", "ppl", "repair_s")}), flush=True)

    order = [s for s in wanted if s in selections]
    repaired_linear: dict[tuple[str, str], torch.nn.Module] = {}
    for strategy in order:
        removed = selections[strategy]
        if not removed:  # the dense reference gets LoRA rows only
            continue
        if "none" in repairs:
            row(strategy, "none", pruned_copy(model, removed), 0.0, None)
        objectives = [o for o in ("lstsq", "cosine") if o in repairs]
        fit_for_lora = "linear+lora" in repairs and strategy in a.lora_on.split(",")
        if fit_for_lora and a.lora_linear not in objectives:
            objectives.append(a.lora_linear)
        if not objectives:
            continue
        try:
            with PeakMemory() as mem:
                t = time.perf_counter()
                stats = collect_statistics(model, cal, removed, keep_tokens=cal.num_tokens, progress=False)
                collect_s = time.perf_counter() - t
        except Exception as exc:  # e.g. a run starting at layer 0
            result.setdefault("refused", []).append({"strategy": strategy, "reason": str(exc)})
            save()
            continue
        ridge = None if a.ridge == "auto" else float(a.ridge)
        for objective in objectives:
            with PeakMemory() as mem2:
                t = time.perf_counter()
                maps, rep = solve_maps(stats, objective=objective, ridge=ridge, cosine_steps=a.cosine_steps)
                pruned = pruned_copy(model, removed)
                fold_linear_maps(pruned, maps, removed, total)
                solve_s = time.perf_counter() - t
            repaired_linear[(strategy, objective)] = pruned
            if objective in repairs:
                row(strategy, f"linear-{objective}" + ("" if a.ridge == "auto" else f" (ridge {a.ridge})"), pruned, collect_s + solve_s, max(mem.peak_bytes, mem2.peak_bytes),
                    {"fit": rep.to_json()})
        del stats
    for strategy in order:
        if strategy not in a.lora_on.split(","):
            continue
        removed = selections[strategy]
        train, held = repair_data(tok, text, tokens=a.lora_tokens, seq_len=a.lora_seq_len, seed=1)
        fresh = lambda: pruned_copy(model, removed) if removed else copy.deepcopy(model)  # noqa: E731
        starts = [("lora", fresh, None)] if "lora" in repairs else []
        if "linear+lora" in repairs and (strategy, a.lora_linear) in repaired_linear:
            starts.append((f"linear-{a.lora_linear}+lora", lambda: repaired_linear[(strategy, a.lora_linear)], None))
        if "distill" in repairs:  # KL to the dense model's next-token distribution, teacher logits on the fly
            starts.append(("lora-distill", fresh, model))
        for name, start, teacher in starts:
            with PeakMemory() as mem:
                t = time.perf_counter()
                merged, rep = lora_repair(start(), train, held, teacher=teacher, rank=a.lora_rank, lr=a.lora_lr,
                                          batch_size=4, eval_every=2, seed=0, progress=False)
                seconds = time.perf_counter() - t
            row(strategy, name, merged, seconds, mem.peak_bytes, {"lora": rep.to_json()})


STRATEGY_ORDER = ("block", "one-shot", "greedy-ppl", "dense")
REPAIR_ORDER = ("none", "linear-lstsq", "linear-cosine", "lora", "linear-lstsq+lora", "linear-cosine+lora",
                "lora-distill")


def render(paths: list[str]) -> str:
    """One markdown table per model from one or more result JSONs: perplexity, lm-eval accuracy (where the run had
    --tasks), repair time and memory; rows of the same model are merged and sorted by strategy and repair, the
    dense figures come from the first file that has them."""
    by_model: dict[str, dict] = {}
    for path in paths:
        d = json.loads(Path(path).read_text())
        m = by_model.setdefault(d["model"], {"dense": None, "rows": [], "meta": []})
        if d.get("dense_tasks") and not m.get("dense_tasks"):
            m["dense_tasks"] = d["dense_tasks"]
        if d.get("dense_ppl") is not None and m["dense"] is None:
            m["dense"] = d["dense_ppl"]
        m["rows"] += d["rows"]
        m["meta"].append((path, d))
    lines = []
    for model, m in by_model.items():
        _, first = m["meta"][0]
        cal, ev = first.get("calibration", {}), first.get("evaluation", {})
        names = sorted({t for r in m["rows"] for t in r.get("tasks", {})} | set(m.get("dense_tasks", {})))
        rank = lambda order, v: order.index(v) if v in order else len(order)  # noqa: E731
        rows = sorted(m["rows"], key=lambda r: (rank(STRATEGY_ORDER, r["strategy"]),
                                                rank(REPAIR_ORDER, r["repair"].split(" (")[0])))

        def cell(tasks, name):
            t = (tasks or {}).get(name)
            if not t:
                return "-"
            return f"{100 * t['acc']:.0f} ± {100 * (t.get('acc_stderr') or float('nan')):.0f}"

        ns = sorted({t.get("n") for r in rows for t in r.get("tasks", {}).values()})
        lines += [f"### {model}, {first['remove']} layers removed", "",
                  f"Dense perplexity {m['dense']:.2f} on {ev.get('stream_tokens')} tokens of WikiText-2 raw test "
                  f"(windows of {ev.get('seq_len')}). Calibration: {cal.get('samples')} x {cal.get('seq_len')} tokens "
                  f"of {cal.get('source')} (seed {cal.get('seed')})."
                  + (f" Accuracy: lm-eval zero-shot acc in % ± standard error, n = {', '.join(map(str, ns))} "
                     "documents per task." if names else ""), "",
                  "| strategy | removed (0-based) | repair | PPL | x dense | "
                  + "".join(f"{n} | " for n in names) + "repair time (s) | repair peak RSS (MB) |",
                  "|---|---|---|---|---|" + "---|" * len(names) + "---|---|"]
        if names and m.get("dense_tasks"):
            lines.append(f"| dense | [] | none | {m['dense']:.2f} | 1.00 | "
                         + "".join(f"{cell(m['dense_tasks'], n)} | " for n in names) + "- | - |")
        for r in rows:
            peak = f"{r['repair_peak_mb']:.0f}" if r.get("repair_peak_mb") is not None else "-"
            ratio = f"{r['ppl'] / m['dense']:.2f}" if m["dense"] else "-"
            label = r["repair"]
            if "fit" in r:
                ridge = r["fit"].get("ridge")
                chosen = sorted({run.get("ridge") for run in r["fit"]["runs"] if run.get("ridge") is not None})
                label += f" (ridge {ridge:g})" if ridge is not None else f" (ridge by CV: {', '.join(f'{c:g}' for c in chosen)})"
            lines.append(f"| {r['strategy']} | {r['removed']} | {label} | {r['ppl']:.2f} | {ratio} | "
                         + "".join(f"{cell(r.get('tasks'), n)} | " for n in names)
                         + f"{r['repair_s']:.0f} | {peak} |")
        for path, d in m["meta"]:
            for ref in d.get("refused", []):
                lines.append(f"\nRefused ({ref['strategy']}): {ref['reason']}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        print(render(sys.argv[2:]))
    else:
        main()
