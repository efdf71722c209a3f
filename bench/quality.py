"""Quality of 25%-shallower models: every selection x repair row with held-out-domain perplexity, in-domain
perplexity (beside the dense model given the same adaptation), lm-eval accuracy with standard errors, repair time
and peak memory. Results go to a JSON file after every row; --resume skips rows it already holds.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/quality.py smollm2-135m --remove 7 \
        --json bench/results/quality_smollm2-135m.json
    python bench/quality.py --render bench/results/quality_*.json      # the tables of docs/quality.md

Texts (no fit sees an evaluated token):
- fits (scores, linear maps, LoRA): WikiText-2 raw test from character 200,000 on (bench/repair_table.py's
  wikitext-tail; calibration windows seed 0, LoRA windows seed 1);
- in-domain perplexity: the first --wiki-tokens tokens of the same file (checked to end before character 200,000);
- held-out domain: a Project Gutenberg novel (--book, default 84-0: Frankenstein), used by no fit;
- accuracy: lm-eval zero-shot on the offline copies of PIQA, ARC-Easy, WinoGrande, HellaSwag and LAMBADA.

Rows are SELECTION/REPAIR: selections dense (no removal), block (best angular block), one-shot (BI); repairs none,
lstsq (the least-squares linear map folded into the weights), cosine, lora, lstsq+lora. --checkpoint LABEL=DIR adds
a row for a saved depthprune output (e.g. `prune --auto`), read with its own depthprune.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _memory import PeakMemory  # noqa: E402
from repair_table import DATA, WIKI_TAIL_START, training_text  # noqa: E402

from depthprune.arch.layout import num_layers  # noqa: E402
from depthprune.evaluation.lmeval import evaluate_tasks  # noqa: E402
from depthprune.evaluation.perplexity import perplexity_on  # noqa: E402
from depthprune.io.data import build_calibration, iter_texts, sequential_windows  # noqa: E402
from depthprune.io.models import load_model  # noqa: E402
from depthprune.repair import collect_statistics, fold_linear_maps, lora_repair, repair_data, solve_maps  # noqa: E402
from depthprune.selection.strategies import compute_scores, select  # noqa: E402
from depthprune.surgery.in_memory import pruned_copy  # noqa: E402

TASKS = "piqa,arc_easy,winogrande,hellaswag,lambada_openai"
CHANCE = {"piqa": 0.5, "arc_easy": 0.25, "winogrande": 0.5, "hellaswag": 0.25, "lambada_openai": 0.0}
SELECTIONS = ("dense", "block", "one-shot")
REPAIRS = ("none", "lstsq", "cosine", "lora", "lstsq+lora")
DEFAULT_ROWS = "dense/none,block/none,block/lstsq,block/cosine,block/lstsq+lora,one-shot/none,one-shot/lstsq,dense/lora"
# settings that do not change a row's numbers (a --resume run may differ in them)
# (each row records its own task documents, so rows with and without tasks can share one file)
NOT_SETTINGS = ("rows", "resume", "json", "checkpoint", "threads", "tasks", "limit", "eval_batch_size")


def book_prose(path: Path) -> str:
    """The book's text from its first paragraph of prose (over 200 characters) to the end marker: the licence
    header, title page and table of contents are not the domain being measured (and are easy to predict)."""
    text = path.read_text(encoding="utf-8-sig")
    start, end = text.find("*** START OF"), text.find("*** END OF")
    body = text[text.index("\n", start) + 1 if start >= 0 else 0: end if end >= 0 else len(text)]
    paragraphs = [q for q in body.split("\n\n") if q.strip()]
    first = next(i for i, q in enumerate(paragraphs) if len(q.strip()) > 200)
    return "\n\n".join(paragraphs[first:])


def parse_rows(text: str) -> list[tuple[str, str]]:
    rows = []
    for item in filter(None, text.split(",")):
        selection, _, repair = item.partition("/")
        if selection not in SELECTIONS or repair not in REPAIRS:
            raise SystemExit(f"row '{item}': SELECTION/REPAIR with SELECTION in {SELECTIONS} and REPAIR in {REPAIRS}")
        rows.append((selection, repair))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--remove", type=int, required=True)
    p.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma list of SELECTION/REPAIR (default {DEFAULT_ROWS})")
    p.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=DIR",
                   help="also measure a saved depthprune output (repeatable)")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lora-tokens", type=int, default=16384)
    p.add_argument("--lora-seq-len", type=int, default=256)
    p.add_argument("--lora-lr", type=float, default=2e-3)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--book", default="84-0", help="Gutenberg book id for the held-out domain")
    p.add_argument("--book-tokens", type=int, default=8192)
    p.add_argument("--wiki-tokens", type=int, default=4096)
    p.add_argument("--ppl-seq-len", type=int, default=512)
    p.add_argument("--tasks", default=TASKS, help="lm-eval tasks ('' for perplexity only)")
    p.add_argument("--limit", type=int, default=None, help="documents per task (default: the full sets)")
    p.add_argument("--eval-batch-size", type=int, default=16, help="lm-eval batch size")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="keep the rows the JSON already holds")
    p.add_argument("--json", required=True)
    a = p.parse_args()
    wanted = parse_rows(a.rows)
    checkpoints = []
    for item in a.checkpoint:
        label, _, path = item.partition("=")
        if not label or not Path(path, "depthprune.json").is_file():
            raise SystemExit(f"--checkpoint {item}: LABEL=DIR of a depthprune output (with depthprune.json)")
        checkpoints.append((label, Path(path)))
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)
    out = Path(a.json)
    settings = {k: v for k, v in vars(a).items() if k not in NOT_SETTINGS}
    result: dict = {"model": a.model, "remove": a.remove, "settings": settings, "rows": []}
    if a.resume and out.is_file():
        old = json.loads(out.read_text())
        if old.get("settings") != settings:
            raise SystemExit(f"--resume: {out} was measured with other settings: {old.get('settings')}")
        result = old

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)

    def have(name: str) -> bool:
        return any(r["row"] == name for r in result["rows"])

    lm = load_model(a.model)
    model, tok = lm.model, lm.tokenizer
    fit_text = training_text("wikitext-tail", tok, a.wiki_tokens)
    wiki = sequential_windows(tok, iter_texts(str(DATA / "wikitext-2-raw" / "wiki.test.raw")),
                              seq_len=a.ppl_seq_len, max_tokens=a.wiki_tokens, source="wikitext-2-raw test head")
    book = sequential_windows(tok, [book_prose(DATA / "gutenberg" / f"{a.book}.txt")], seq_len=a.ppl_seq_len,
                              max_tokens=a.book_tokens, source=f"gutenberg {a.book}, from its first prose paragraph")
    result["texts"] = {"fit": f"wikitext-2-raw test from character {WIKI_TAIL_START:,}",
                       "in_domain": dict(wiki.settings), "held_out": dict(book.settings)}
    cal = build_calibration(fit_text, tok, samples=a.samples, seq_len=a.seq_len, seed=0, progress=False)
    total = num_layers(model.config)

    def measure(m, name: str, extra: dict) -> None:
        r = {"row": name, **extra,
             "held_out_ppl": perplexity_on(m, book, progress=False).ppl,
             "in_domain_ppl": perplexity_on(m, wiki, progress=False).ppl}
        if a.tasks:
            t = time.perf_counter()
            res = evaluate_tasks(m, tok, a.tasks, data_dir=str(DATA), limit=a.limit, model_name=name,
                                 batch_size=a.eval_batch_size, bootstrap_iters=100)
            r["tasks"] = {k: {"acc": v["metrics"]["acc"], "acc_stderr": v["metrics"].get("acc_stderr"),
                              "n": v["n_samples"]["effective"]} for k, v in res["tasks"].items()}
            r["tasks_s"] = time.perf_counter() - t
        result["rows"].append(r)
        save()
        print(json.dumps({k: r[k] for k in ("row", "held_out_ppl", "in_domain_ppl")}), flush=True)

    selections: dict[str, list[int]] = {"dense": []}
    if any(s != "dense" and not have(f"{s}/{r}") for s, r in wanted):
        scores = compute_scores(model, cal, ["bi", "angular"], block_sizes=(a.remove,), progress=False)
        for strategy, metric in (("one-shot", "bi"), ("block", "angular")):
            chosen, _ = select(model, cal, a.remove, metric=metric, strategy=strategy, precomputed=scores,
                               progress=False)
            selections[strategy] = chosen.removed
    linear_cache: dict[tuple[str, str], torch.nn.Module] = {}
    stats_cache: dict[str, tuple] = {}

    def linear(selection: str, objective: str):
        """The pruned model with the fitted map folded in, its fit time and peak memory."""
        if (selection, objective) not in linear_cache:
            removed = selections[selection]
            with PeakMemory() as mem:
                t = time.perf_counter()
                if selection not in stats_cache:
                    stats = collect_statistics(model, cal, removed, keep_tokens=cal.num_tokens, progress=False)
                    stats_cache.clear()
                    stats_cache[selection] = (stats, time.perf_counter() - t)
                stats, collect_s = stats_cache[selection]
                t = time.perf_counter()
                maps, _ = solve_maps(stats, objective=objective, ridge=None)
                pruned = pruned_copy(model, removed)
                fold_linear_maps(pruned, maps, removed, total)
                seconds = collect_s + time.perf_counter() - t
            linear_cache[(selection, objective)] = (pruned, seconds, mem.peak_bytes)
        return linear_cache[(selection, objective)]

    train = held = None
    for selection, repair in wanted:
        name = f"{selection}/{repair}"
        if have(name):
            continue
        removed = selections[selection]
        extra = {"selection": selection, "removed": removed, "repair": repair}
        if repair == "none":
            measure(pruned_copy(model, removed) if removed else model, name,
                    {**extra, "repair_s": 0.0, "repair_peak_mb": None})
            continue
        if repair in ("lstsq", "cosine"):
            if not removed:
                raise SystemExit(f"row {name}: a linear map needs removed layers")
            pruned, seconds, peak = linear(selection, repair)
            measure(pruned, name, {**extra, "repair_s": seconds, "repair_peak_mb": peak / 2**20})
            continue
        if train is None:
            train, held = repair_data(tok, fit_text, tokens=a.lora_tokens, seq_len=a.lora_seq_len, seed=1)
        seconds, peak = 0.0, 0
        if repair == "lstsq+lora":
            start, seconds, peak = linear(selection, "lstsq")
            start = copy.deepcopy(start)
        else:
            start = pruned_copy(model, removed) if removed else copy.deepcopy(model)
        with PeakMemory() as mem:
            t = time.perf_counter()
            merged, rep = lora_repair(start, train, held, rank=a.lora_rank, lr=a.lora_lr, batch_size=4,
                                      eval_every=2, seed=0, progress=False)
            seconds += time.perf_counter() - t
        measure(merged, name, {**extra, "repair_s": seconds, "repair_peak_mb": max(peak, mem.peak_bytes) / 2**20,
                               "lora_tokens": a.lora_tokens})
        del merged

    for label, path in checkpoints:
        name = f"saved/{label}"
        if have(name):
            continue
        record = json.loads((path / "depthprune.json").read_text())
        saved = load_model(str(path)).model
        search = record.get("search") or {}
        chosen = (search.get("candidates") or [{}])[search.get("chosen", 0)] if search else {}
        measure(saved, name, {"selection": record.get("strategy"), "removed": record.get("removed_layers"),
                              "repair": chosen.get("repair") or (record.get("repair") or {}).get("method", "none"),
                              "repair_s": (record.get("timings") or {}).get("search"),
                              "repair_peak_mb": None, "command": record.get("command"), "label": label,
                              "chosen": chosen})
        del saved


# --- rendering ---------------------------------------------------------------------------------------------

def above_chance(tasks: dict, dense: dict) -> tuple[float, float] | None:
    """Macro accuracy above chance as a share of the dense model's: mean(acc - chance) / mean(dense - chance)
    over the tasks both have (a ratio of means, because a per-task ratio explodes where dense is near chance), with
    its standard error from the row's per-task standard errors (the dense figures taken as exact)."""
    names = [t for t in tasks if t in dense and t in CHANCE]
    if not names:
        return None
    num = sum(tasks[t]["acc"] - CHANCE[t] for t in names) / len(names)
    den = sum(dense[t]["acc"] - CHANCE[t] for t in names) / len(names)
    if den <= 0:
        return None
    se = math.sqrt(sum((tasks[t].get("acc_stderr") or 0.0) ** 2 for t in names)) / len(names)
    return num / den, se / den


def _cell(t: dict | None) -> str:
    if not t:
        return "-"
    se = t.get("acc_stderr")
    return f"{100 * t['acc']:.1f} ± {100 * se:.1f}" if se is not None and not math.isnan(se) else f"{100 * t['acc']:.1f}"


def merged(paths: list[str]) -> list[dict]:
    """Result files grouped by model and settings, rows merged by name (a row measured with tasks wins over the same
    row without them): perplexity-only rows and task rows of one setting may come from separate runs."""
    groups: dict[str, dict] = {}
    for path in paths:
        d = json.loads(Path(path).read_text())
        key = json.dumps([d["model"], d["settings"]], sort_keys=True)
        g = groups.setdefault(key, {**d, "rows": []})
        names = [r["row"] for r in g["rows"]]
        for r in d["rows"]:
            if r["row"] not in names:
                g["rows"].append(r)
            elif "tasks" in r:
                g["rows"][names.index(r["row"])] = r
    for g in groups.values():
        order = ["dense/none"] + [f"{s}/{r}" for s in ("block", "one-shot", "dense") for r in REPAIRS]
        g["rows"].sort(key=lambda r: order.index(r["row"]) if r["row"] in order else len(order))
    return list(groups.values())


def render(paths: list[str]) -> str:
    out = []
    for d in merged(paths):
        rows = {r["row"]: r for r in d["rows"]}
        dense = rows.get("dense/none")
        adapted = rows.get("dense/lora")
        s, texts = d["settings"], d.get("texts", {})
        names = [t for t in TASKS.split(",") if any(t in r.get("tasks", {}) for r in d["rows"])]
        ns = sorted({t["n"] for r in d["rows"] for t in r.get("tasks", {}).values()})
        out += [f"### {d['model']}, {d['remove']} layers removed", "",
                f"Fits: {s['samples']} x {s['seq_len']} calibration tokens of {texts.get('fit')}; LoRA "
                f"{s['lora_tokens']:,} tokens (rank {s['lora_rank']}, lr {s['lora_lr']:g}) of the same text. Held-out "
                f"domain: {s['book_tokens']:,} tokens of Gutenberg {s['book']} (from its first prose paragraph); "
                f"in-domain: the first {s['wiki_tokens']:,} tokens of WikiText-2 raw test; windows of "
                f"{s['ppl_seq_len']}."
                + (f" Accuracy: lm-eval zero-shot acc in % ± standard error, n = {', '.join(map(str, ns))} "
                   f"documents per task ('-': not measured); 'kept' = macro accuracy above chance as a share of "
                   "dense's." if names else ""),
                "",
                "| row | removed (0-based) | held-out PPL (x dense) | in-domain PPL (x dense, x adapted dense) | "
                + "".join(f"{n} | " for n in names) + ("kept | " if names else "") + "repair s | repair peak MB |",
                "|---|---|---|---|" + "---|" * len(names) + ("---|" if names else "") + "---|---|"]
        for r in d["rows"]:
            ho = r["held_out_ppl"] / dense["held_out_ppl"] if dense else None
            ind = r["in_domain_ppl"] / dense["in_domain_ppl"] if dense else None
            # the in-domain reference: the dense model given the same kind of adaptation (LoRA on the fit text)
            reference = adapted if ("lora" in r["repair"] and adapted) else dense
            adj = r["in_domain_ppl"] / reference["in_domain_ppl"] if reference else None
            label = f"saved `{r['label']}` ({r['chosen'].get('selection', '')} + {r['repair']})" \
                if r["row"].startswith("saved/") else r["row"]
            kept = above_chance(r.get("tasks", {}), dense.get("tasks", {})) if (names and dense) else None
            peak = f"{r['repair_peak_mb']:.0f}" if r.get("repair_peak_mb") else "-"
            secs = f"{r['repair_s']:.0f}" if r.get("repair_s") is not None else "-"
            out.append(f"| {label} | {r['removed']} | {r['held_out_ppl']:.2f} ({ho:.2f}) | "
                       f"{r['in_domain_ppl']:.2f} ({ind:.2f}, {adj:.2f}) | "
                       + "".join(f"{_cell(r.get('tasks', {}).get(n))} | " for n in names)
                       + (f"{100 * kept[0]:.0f}% ± {100 * kept[1]:.0f} | " if kept is not None else ("- | " if names else ""))
                       + f"{secs} | {peak} |")
        for r in d["rows"]:
            if r["row"].startswith("saved/"):
                out += ["", f"`{r['row']}`: `{r['command']}`"]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        print(render(sys.argv[2:]))
    else:
        main()
