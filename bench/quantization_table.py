"""Layer removal stacked with weight-only quantization (docs/quantization.md).

For one bundled model: dense and 25%-pruned (BI one-shot; for Gemma-3 also with --protect-last 1)
x float32 / int8 / int4 (torchao weight-only, depthprune.formats.quantize): checkpoint size,
held-out perplexity (calibration: Gutenberg books; perplexity: WikiText-2-raw test, disjoint),
lm-eval tasks (stated limit, standard errors) and prefill/decode speed ratios against dense
float32, each measured side by side with it in one run (depthprune.speed.compare).

    PYTHONPATH=src python bench/quantization_table.py smollm2-135m --json bench/results/quantization-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from depthprune.api import prune
from depthprune.evaluation.lmeval import evaluate_tasks
from depthprune.evaluation.perplexity import perplexity
from depthprune.quantization.weights import quantize_model
from depthprune.io.models import DEMO_MODELS, load_model
from depthprune.evaluation.speed import compare

log = logging.getLogger("quantization_table")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def checkpoint_bytes(model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        return sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors"))


def sizes(model) -> dict:
    """Checkpoint bytes of the bf16 float model and of int8/int4 quantized from bf16 (what a user saves)."""
    bf16 = type(model)(model.config).to(torch.bfloat16)  # fresh module, then copy weights
    bf16.load_state_dict(model.state_dict())
    bf16.eval()
    out = {"float": checkpoint_bytes(bf16)}
    for method in ("int8", "int4"):
        out[method] = checkpoint_bytes(quantize_model(bf16, method))
    return out


def measure_ppl(model, tokenizer, args, name: str) -> dict:
    t0 = time.time()
    ppl = perplexity(model, tokenizer, str(args.data / "wikitext-2-raw" / "wiki.test.raw"), seq_len=args.ppl_seq_len,
                     max_tokens=args.ppl_max_tokens, progress=False)
    log.info("%s: ppl %.2f (%.0fs)", name, ppl.ppl, time.time() - t0)
    return {"ppl": ppl.ppl, "nll": ppl.nll, "ppl_tokens": ppl.tokens}


def measure_tasks(model, tokenizer, args, name: str) -> dict:
    t0 = time.time()
    res = evaluate_tasks(model, tokenizer, args.tasks, data_dir=str(args.data), limit=args.limit,
                         model_name=name, bootstrap_iters=100)  # acc stderr is analytic; no bootstrap needed
    log.info("%s: tasks done (%.0fs)", name, time.time() - t0)
    return {t: {**v["metrics"], "n": v["n_samples"]["effective"]} for t, v in res["tasks"].items()}


def speed(baseline, candidate, tokenizer, args, name: str) -> dict:
    comp = compare(baseline, candidate, tokenizer, labels=("dense-float32", name), seq_lens=[args.speed_seq_len],
                   prompt_len=args.prompt_len, decode_tokens=args.decode_tokens, repeats=args.repeats, threads=1)
    r = comp.ratios()["workloads"]
    return {k: {"speedup": v["speedup"], "time_ratio": v["time_ratio"], "kind": v["kind"]} for k, v in r.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", choices=sorted(DEMO_MODELS))
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--render", action="store_true", help="print the markdown tables of an existing --json and exit")
    ap.add_argument("--merge", type=Path, nargs="*", default=[], help="with --render: more result files to add")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--ppl-seq-len", type=int, default=512)
    ap.add_argument("--ppl-max-tokens", type=int, default=4096)
    ap.add_argument("--tasks", default="piqa,arc_easy")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--speed-seq-len", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", help="remove these 0-based layers (comma-separated) instead of scoring: "
                                     "one 'pruned-given' variant")
    ap.add_argument("--cells", help="only these cells, e.g. pruned-given/float,pruned-given/int8 (default: all)")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed comparison")
    ap.add_argument("--add", help="complete an existing --json: 'tasks' and/or 'speed' (comma-separated) for every "
                                  "row that lacks them, rebuilding each variant from the recorded removed layers")
    args = ap.parse_args(argv)
    if args.render:
        out = json.loads(args.json.read_text())
        for extra in args.merge:
            more = json.loads(extra.read_text())
            out["rows"].update(more["rows"])
            out["removed"].update(more["removed"])
        print(render(out))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.add:
        return complete(args, set(args.add.split(",")))

    loaded = load_model(args.model, dtype="float32")
    tok = loaded.tokenizer
    variants = {"dense": loaded.model}
    removed = {}
    protects = [0, 1] if args.model.startswith("gemma") else [0]
    if args.layers:
        from depthprune.surgery.in_memory import pruned_copy

        removed["pruned-given"] = sorted(int(x) for x in args.layers.split(","))
        variants = {"pruned-given": pruned_copy(loaded.model, removed["pruned-given"])}
        if not args.no_speed:
            variants["dense"] = loaded.model
        protects = []
    for protect in protects:
        result = prune(loaded.model, tok, ratio=args.ratio, data=str(args.data / "gutenberg"), metric="bi",
                       strategy="one-shot", samples=args.samples, seq_len=args.seq_len, batch_size=4,
                       protect_last=protect, progress=False)
        name = "pruned-bi" + (f"-protect-last-{protect}" if protect else "")
        variants[name] = result.model
        removed[name] = result.report.removed_layers
        log.info("%s removes %s", name, result.report.removed_layers)

    out: dict = {"model": args.model, "settings": {k: str(v) for k, v in vars(args).items()}, "removed": removed,
                 "torch": torch.__version__, "rows": {}}
    baseline = variants.get("dense")
    wanted = set(args.cells.split(",")) if args.cells else None

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")

    def model_of(key: str):
        vname, method = key.split("/")
        return variants[vname] if method == "float" else quantize_model(variants[vname], method)

    # pass 1 (cheap): size, perplexity, speed for every cell; pass 2: lm-eval tasks for every cell
    for vname, model in variants.items():
        size = sizes(model)
        for method in ("float", "int8", "int4"):
            key = f"{vname}/{method}"
            if wanted is not None and key not in wanted:
                continue
            m = model_of(key)
            row = {"variant": vname, "precision": "float32" if method == "float" else method,
                   "checkpoint_bytes_bf16_base": size[method]}
            row.update(measure_ppl(m, tok, args, key))
            if key != "dense/float" and not args.no_speed:
                row["speed"] = speed(baseline, m, tok, args, key)
            out["rows"][key] = row
            save()
    if "dense/float" in out["rows"] and wanted is None:
        finish(out, variants)
    save()
    if args.tasks:
        for key in list(out["rows"]):
            out["rows"][key]["tasks"] = measure_tasks(model_of(key), tok, args, key)
            save()
    return 0


def complete(args, what: set[str]) -> int:
    """Add lm-eval tasks and/or speed to the rows of an existing result file. The pruned variants are rebuilt with
    depthprune's surgery from the recorded removed layers (deterministic: the same model the first pass measured);
    variants that removed the same layers share one measurement."""
    from depthprune.surgery.in_memory import pruned_copy

    if not what <= {"tasks", "speed"}:
        raise SystemExit(f"--add takes tasks and/or speed, not {sorted(what - {'tasks', 'speed'})}")
    out = json.loads(args.json.read_text())
    loaded = load_model(out["model"], dtype="float32")
    tok = loaded.tokenizer
    variants = {"dense": loaded.model}
    for vname, layers in out["removed"].items():
        variants[vname] = pruned_copy(loaded.model, layers)
    done: dict = {}
    for key, row in out["rows"].items():
        vname, method = key.split("/")
        same = (tuple(out["removed"].get(vname, [])), method)
        model = variants[vname] if method == "float" else quantize_model(variants[vname], method)
        if "speed" in what and key != "dense/float" and "speed" not in row:
            row["speed"] = speed(loaded.model, model, tok, args, key)
        if "tasks" in what and "tasks" not in row:
            if same in done:
                row["tasks"] = done[same]
                log.info("%s: tasks as measured for the same layers and precision", key)
            else:
                row["tasks"] = measure_tasks(model, tok, args, key)
        if "tasks" in row:
            done[same] = row["tasks"]
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


def finish(out: dict, variants: dict) -> None:
    dense_nll = out["rows"]["dense/float"]["nll"]
    for key, row in out["rows"].items():
        row["delta_nll"] = row["nll"] - dense_nll
    for vname in variants:
        if vname == "dense":
            continue
        for method in ("int8", "int4"):
            d_p = out["rows"][f"{vname}/float"]["delta_nll"]
            d_q = out["rows"][f"dense/{method}"]["delta_nll"]
            d_pq = out["rows"][f"{vname}/{method}"]["delta_nll"]
            out.setdefault("additivity", {})[f"{vname}+{method}"] = {
                "delta_pruned": d_p, "delta_quant": d_q, "sum": d_p + d_q, "delta_both": d_pq,
                "excess": d_pq - (d_p + d_q), "ppl_ratio_both_vs_product": math.exp(d_pq - (d_p + d_q))}


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f}"


def render(out: dict) -> str:
    """Markdown: one row per (variant, precision) cell, then the additivity of log-perplexity increases."""
    if "dense/float" in out["rows"]:
        for row in out["rows"].values():
            row.setdefault("delta_nll", row["nll"] - out["rows"]["dense/float"]["nll"])
    lines = [f"Model `{out['model']}`; removed layers (0-based): "
             + "; ".join(f"{k}: {v}" for k, v in out["removed"].items()), "",
             "| variant | weights | checkpoint MB (bf16 base) | WikiText-2 ppl | Δ log-ppl | prefill speed-up | decode speed-up |"
             " tasks (acc % ± stderr, n) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for key, row in out["rows"].items():
        sp = row.get("speed", {})
        pre = next((v["speedup"] for v in sp.values() if v["kind"] == "prefill"), None)
        dec = next((v["speedup"] for v in sp.values() if v["kind"] == "decode"), None)
        tasks = "; ".join(f"{t} {100 * m.get('acc', float('nan')):.0f} ± {100 * (m.get('acc_stderr') or float('nan')):.0f}"
                          f" (n={m.get('n')})"
                          for t, m in row.get("tasks", {}).items()) or "not measured"
        fmt = lambda x: "1 (baseline)" if key == "dense/float" else (f"x{x:.2f}" if x else "-")
        lines.append(f"| {row['variant']} | {row['precision']} | {_mb(row['checkpoint_bytes_bf16_base'])} | "
                     f"{row['ppl']:.2f} | {row.get('delta_nll', float('nan')):+.4f} | {fmt(pre)} | {fmt(dec)} | {tasks} |")
    if "dense/float" in out["rows"]:
        rows = out["rows"]
        variants = sorted({k.split("/")[0] for k in rows} - {"dense"})
        out["additivity"] = {}
        for vname in variants:
            for method in ("int8", "int4"):
                keys = (f"{vname}/float", f"dense/{method}", f"{vname}/{method}")
                if all(k in rows for k in keys):
                    d_p, d_q, d_pq = (rows[k]["delta_nll"] for k in keys)
                    out["additivity"][f"{vname}+{method}"] = {"delta_pruned": d_p, "delta_quant": d_q, "sum": d_p + d_q,
                                                              "delta_both": d_pq, "excess": d_pq - (d_p + d_q)}
    if out.get("additivity"):
        lines += ["", "| combination | Δ pruned | Δ quant | sum | Δ both | both − sum |", "|---|---:|---:|---:|---:|---:|"]
        for k, a in out["additivity"].items():
            lines.append(f"| {k} | {a['delta_pruned']:+.4f} | {a['delta_quant']:+.4f} | {a['sum']:+.4f} | "
                         f"{a['delta_both']:+.4f} | {a['excess']:+.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
