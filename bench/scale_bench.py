"""Peak RSS and time: in-memory vs layer-streamed scoring, pruning on disk vs load+surgery+save, torchrun 2 vs 1.

Random-weight Llama-shaped models (~0.1, ~0.5, ~1.5 B parameters, bf16 safetensors) are written to
--root once. Every measurement runs in a fresh child process (``ru_maxrss`` is then that measurement's
peak resident set, imports included; the RSS right after the imports is reported as the baseline).
Scoring: Block Influence on random token ids (--samples x --seq-len), one thread. Usage:

    python3 bench/scale_bench.py --out bench/results/scale.json            # everything
    python3 bench/scale_bench.py --sizes 0.1b --skip-prune --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # hidden, layers, intermediate, heads, vocab
    "0.1b": (768, 12, 2048, 12, 32000),
    "0.5b": (1024, 24, 4096, 16, 32000),
    "0.6b": (1024, 32, 4096, 16, 32000),
    "w1024-4l": (1024, 4, 4096, 16, 32000),  # the 0.6b's layer shape, 4 layers: long calibration runs in minutes
    "1.5b": (2048, 28, 5632, 16, 32000),
}


def rss_now() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------- child jobs


def job_make(size: str, path: str) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_tokenizer

    hidden, layers, inter, heads, vocab = SIZES[size]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                         num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab,
                         max_position_embeddings=2048, dtype="bfloat16")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(path, max_shard_size="1GB")
    tiny_tokenizer().save_pretrained(path)
    return {"params": sum(p.numel() for p in model.parameters())}


def _calibration(samples: int, seq_len: int):
    import torch

    from depthprune.io.data import from_tensors

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 512, (samples, seq_len), generator=g)  # the saved tokenizer's id range
    return from_tensors(ids, torch.ones_like(ids), source="random ids")


def job_score(path: str, mode: str, samples: int, seq_len: int, batch: int, budget_mb: int, dtype: str) -> dict:
    import torch

    import depthprune as dp

    torch.set_num_threads(1)
    base = rss_now()
    calibration = _calibration(samples, seq_len)
    t0 = time.perf_counter()
    report = dp.score(path, data=calibration, metric="bi", batch_size=batch, dtype=dtype,
                      offload="layers" if mode == "streamed" else "none", activation_budget_mb=budget_mb,
                      progress=False)
    return {"seconds": time.perf_counter() - t0, "baseline_rss": base, "peak_rss": peak_rss(),
            "scores": report.scores, "scale": report.scale}


def job_runtime(path: str, dtype: str) -> dict:
    """What the runtime holds before any weight: RSS once the model's code is imported and its weightless skeleton
    built (a StreamedModel, minus the embeddings it reads), above the import baseline."""
    import torch

    from depthprune.importance.streamed import StreamedModel

    torch.set_num_threads(1)
    base = rss_now()
    streamed = StreamedModel(path, dtype=getattr(torch, dtype))
    streamed.release_resident()
    return {"baseline_rss": base, "runtime_rss": rss_now(), "runtime_above_baseline": rss_now() - base}


def job_prune(path: str, mode: str, out: str, layers: list[int]) -> dict:
    import torch

    base = rss_now()
    t0 = time.perf_counter()
    if mode == "disk":
        from depthprune.surgery.on_disk import prune_checkpoint

        prune_checkpoint(path, layers, out)
    else:
        from transformers import AutoModelForCausalLM

        from depthprune.surgery.in_memory import remove_layers

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
        remove_layers(model, layers)
        model.save_pretrained(out, max_shard_size="1GB")
    return {"seconds": time.perf_counter() - t0, "baseline_rss": base, "peak_rss": peak_rss()}


def child(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, __file__, "--job", json.dumps(args)], capture_output=True, text=True,
                         env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def weights_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    parser.add_argument("--root", default="/tmp/depthprune-scale")
    parser.add_argument("--sizes", default="0.1b,0.5b,1.5b")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--budget-mb", type=int, default=64)
    parser.add_argument("--dtype", default="float32",
                        help="scoring dtype (float32: CPUs without bf16 instructions run bf16 matmuls ~400x slower)")
    parser.add_argument("--repeats", type=int, default=1, help="scoring runs per mode, interleaved (fastest kept)")
    parser.add_argument("--skip-score", action="store_true")
    parser.add_argument("--skip-prune", action="store_true")
    parser.add_argument("--skip-torchrun", action="store_true")
    parser.add_argument("--runtime-only", action="store_true",
                        help="add the runtime's own RSS (model code imported, skeleton built) to --out's sizes")
    args = parser.parse_args()
    if args.job:
        name, *rest = json.loads(args.job)
        result = {"make": job_make, "score": job_score, "prune": job_prune, "runtime": job_runtime}[name](*rest)
        print(json.dumps(result))
        return
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    if args.runtime_only:
        data = json.loads(Path(args.out).read_text(encoding="utf-8"))
        for size in data["sizes"]:
            data["sizes"][size]["runtime"] = child(["runtime", str(root / size), data.get("dtype", "float32")])
        Path(args.out).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(json.dumps({k: v["runtime"] for k, v in data["sizes"].items()}))
        return
    results: dict = {"command": " ".join(["python3", "bench/scale_bench.py", *sys.argv[1:]]),
                     "samples": args.samples, "seq_len": args.seq_len, "batch_size": args.batch_size,
                     "activation_budget_mb": args.budget_mb, "dtype": args.dtype, "threads": 1, "sizes": {}}
    sizes = args.sizes.split(",")
    for size in sizes:
        path = root / size
        if not (path / "config.json").is_file():
            print(f"making {size} ...", file=sys.stderr, flush=True)
            child(["make", size, str(path)])
        if args.skip_score:
            continue
        entry: dict = {"weights_bytes": weights_bytes(path)}
        # side by side: memory, streamed, memory, streamed (the shared machine's load changes over time)
        runs = {"memory": [], "streamed": []}
        for _ in range(args.repeats):
            for mode in ("memory", "streamed"):
                print(f"{size} {mode} ...", file=sys.stderr, flush=True)
                runs[mode].append(child(["score", str(path), mode, args.samples, args.seq_len, args.batch_size,
                                         args.budget_mb, args.dtype]))
        for mode, rs in runs.items():
            best = min(rs, key=lambda r: r["seconds"])
            entry[mode] = {k: best[k] for k in ("seconds", "baseline_rss", "peak_rss")}
            entry[mode]["all_seconds"] = [r["seconds"] for r in rs]
            entry[mode]["peak_over_weights"] = best["peak_rss"] / entry["weights_bytes"]
            entry[mode]["peak_above_baseline_over_weights"] = (best["peak_rss"] - best["baseline_rss"]) / entry["weights_bytes"]
        entry["streamed"]["stream"] = runs["streamed"][0]["scale"]["stream"]
        # what in-memory scoring holds: the weights at the scoring dtype (float32: twice a bf16 checkpoint)
        entry["scoring_weights_bytes"] = entry["streamed"]["stream"]["weights_bytes"]
        for mode in runs:
            entry[mode]["peak_above_baseline_over_scoring_weights"] = (
                (entry[mode]["peak_rss"] - entry[mode]["baseline_rss"]) / entry["scoring_weights_bytes"])
        entry["time_ratio_streamed_over_memory"] = entry["streamed"]["seconds"] / entry["memory"]["seconds"]
        a, b = runs["memory"][0]["scores"], runs["streamed"][0]["scores"]
        entry["max_abs_score_diff"] = max(abs(x - y) for x, y in zip(a, b))
        results["sizes"][size] = entry
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if not args.skip_prune:
        path = root / sizes[-1]
        n = SIZES[sizes[-1]][1]
        layers = list(range(n - 1 - n // 4, n - 1))  # ~25% of the layers, ShortGPT-like late block
        prune: dict = {"model": sizes[-1], "removed_layers": layers}
        for mode in ("disk", "memory"):
            out = root / f"pruned-{mode}"
            shutil.rmtree(out, ignore_errors=True)
            print(f"prune {mode} ...", file=sys.stderr, flush=True)
            prune[mode] = child(["prune", str(path), mode, str(out), layers])
            prune[mode]["written_bytes"] = weights_bytes(out)
            shutil.rmtree(out, ignore_errors=True)
        prune["time_ratio_disk_over_memory"] = prune["disk"]["seconds"] / prune["memory"]["seconds"]
        prune["rss_ratio_disk_over_memory"] = prune["disk"]["peak_rss"] / prune["memory"]["peak_rss"]
        results["prune"] = prune
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if not args.skip_torchrun:
        results["torchrun"] = torchrun_check(root / sizes[0], args)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


def torchrun_check(path: Path, args) -> dict:
    """`depthprune score` in 1 process and under torchrun with 2 (gloo), whole-command wall time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["score", str(path), "--data", "builtin", "--samples", str(2 * args.samples), "--seq-len",
              str(args.seq_len), "--batch-size", str(args.batch_size), "--dtype", "bfloat16"]
    out: dict = {"model": path.name, "samples": 2 * args.samples, "seq_len": args.seq_len}
    files = {}
    for name, launcher in (("one_process", [sys.executable, "-m", "depthprune", "-q"]),
                           ("two_processes", [shutil.which("torchrun") or "torchrun", "--standalone",
                                              "--nproc_per_node", "2", "--module", "depthprune", "-q"])):
        target = path.parent / f"torchrun-{name}.json"
        target.unlink(missing_ok=True)
        print(f"torchrun check: {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        run = subprocess.run([*launcher, *common, "--out", str(target)], capture_output=True, text=True, env=env,
                             timeout=3600)
        if run.returncode != 0:
            raise RuntimeError(run.stderr[-3000:])
        out[f"{name}_wall_s"] = time.perf_counter() - t0
        files[name] = json.loads(target.read_text())
    out["wall_ratio_two_over_one"] = out["two_processes_wall_s"] / out["one_process_wall_s"]
    out["max_abs_score_diff"] = max(abs(a - b) for a, b in zip(files["one_process"]["scores"],
                                                               files["two_processes"]["scores"]))
    out["distributed"] = files["two_processes"]["scale"]["distributed"]
    return out


if __name__ == "__main__":
    main()
