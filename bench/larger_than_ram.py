"""A model larger than this machine's memory, end to end with the plain commands.

A Llama-2-13B-shaped checkpoint (hidden 5120, 40 layers, MLP 13824, 40 heads, 32000-token vocabulary,
untied head; ~13.0 B parameters, ~26 GB in bf16) is written shard by shard with random weights (normal,
std 0.02; norms 1): the whole model never exists in memory, not even while it is made. Then, each in a
fresh child process measured by ``ru_maxrss`` (imports included) and ``/proc/<pid>/io`` (bytes really read
from disk, page-cache hits excluded):

1. ``depthprune score BIG --metric bi`` (layer streaming starts by itself: the weights do not fit);
2. ``depthprune prune BIG --scores S --remove N --out P`` (the on-disk cut, chosen by itself);
3. ``depthprune prune BIG --scores S --remove N --repair linear --out R`` (the linear maps fitted from
   streamed activations, folded into the kept layer before each removed run, the rest copied on disk).

Usage (about 30 minutes on the 2-core machine; needs ~26 GB + ~2 x 20 GB of disk under --root)::

    python3 bench/larger_than_ram.py --root /work/depthprune-big --out bench/results/larger_than_ram.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = {"hidden_size": 5120, "num_hidden_layers": 40, "intermediate_size": 13824, "num_attention_heads": 40,
         "num_key_value_heads": 40, "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
LAYERS_PER_SHARD = 2


def make(path: Path, shape: dict) -> dict:
    """Write the checkpoint tensor by tensor, one shard (two layers) in memory at a time."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_tokenizer

    t0 = time.perf_counter()
    config = LlamaConfig(**shape, tie_word_embeddings=False, dtype="bfloat16")
    with init_empty_weights():
        skeleton = LlamaForCausalLM(config)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    groups: list[list[str]] = [[n for n in shapes if not n.startswith("model.layers.")]]
    n = shape["num_hidden_layers"]
    for first in range(0, n, LAYERS_PER_SHARD):
        prefixes = tuple(f"model.layers.{i}." for i in range(first, min(n, first + LAYERS_PER_SHARD)))
        groups.append([k for k in shapes if k.startswith(prefixes)])
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    weight_map, total, params = {}, 0, 0
    for k, names in enumerate(groups):
        shard = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in names:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shapes[name], dtype=torch.bfloat16)
            else:
                tensors[name] = (torch.randn(shapes[name], generator=g) * 0.02).to(torch.bfloat16)
            params += tensors[name].numel()
            total += tensors[name].numel() * 2
            weight_map[name] = shard
        save_file(tensors, str(path / shard), metadata={"format": "pt"})
        del tensors
        print(f"wrote {shard}", file=sys.stderr, flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return {"params": params, "bytes": total, "shards": len(groups), "seconds": time.perf_counter() - t0}


def _io_read_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measured(argv: list[str], log_path: Path) -> dict:
    """Run ``argv`` in a child: wall time, its peak RSS (``ru_maxrss`` from ``wait4``) and the bytes it read from
    disk (``read_bytes`` of ``/proc/<pid>/io``, sampled while it runs: page-cache hits are not counted)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        read = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            read = max(read, _io_read_bytes(proc.pid))
            time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    tail = log_path.read_text(encoding="utf-8", errors="replace")[-1500:]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{tail}")
    return {"argv": argv, "seconds": round(seconds, 1), "peak_rss_bytes": usage.ru_maxrss * 1024,
            "disk_read_bytes": read, "log_tail": tail}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "depthprune", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="/work/depthprune-big")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "larger_than_ram.json"))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--remove", type=int, default=10)
    parser.add_argument("--make-only", action="store_true")
    parser.add_argument("--steps", default="score,prune,repair")
    args = parser.parse_args()
    root = Path(args.root)
    big = root / "llama-13b-shaped"
    results: dict = {"command": " ".join(["python3", "bench/larger_than_ram.py", *sys.argv[1:]]), "shape": SHAPE}
    made = root / "make.json"
    if not (big / "config.json").is_file():
        print("making the checkpoint ...", file=sys.stderr, flush=True)
        made.write_text(json.dumps(make(big, SHAPE)) + "\n", encoding="utf-8")
    results["make"] = json.loads(made.read_text(encoding="utf-8"))
    if args.make_only:
        print(json.dumps(results, indent=2))
        return
    out = Path(args.out)
    if out.is_file():  # steps run one at a time keep what earlier steps measured
        results = {**json.loads(out.read_text(encoding="utf-8")), "command": results["command"],
                   "make": results["make"]}
    results["checkpoint_bytes"] = sum(p.stat().st_size for p in big.glob("*.safetensors"))
    results["mem_total_bytes"] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    results["samples"], results["seq_len"], results["remove"] = args.samples, args.seq_len, args.remove
    scores = root / "scores.json"
    calibration = ["--data", "builtin", "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
    steps = {
        "score": cli("score", str(big), "--metric", "bi", *calibration, "--out", str(scores), "--overwrite"),
        "prune": cli("prune", str(big), "--scores", str(scores), "--remove", str(args.remove),
                     "--out", str(root / "pruned"), "--overwrite"),
        "repair": cli("prune", str(big), "--scores", str(scores), "--remove", str(args.remove), "--repair", "linear",
                      *calibration, "--out", str(root / "repaired"), "--overwrite"),
    }
    for step in args.steps.split(","):
        print(f"{step}: {' '.join(steps[step])}", file=sys.stderr, flush=True)
        results[step] = {**measured(steps[step], root / f"{step}.log"), "bench_command": results["command"]}
        folder = {"prune": root / "pruned", "repair": root / "repaired"}.get(step)
        if folder is not None:
            record = json.loads((folder / "depthprune.json").read_text(encoding="utf-8"))
            results[step]["record"] = {k: record.get(k) for k in ("executor", "removed_layers", "readback", "repair",
                                                                   "checkpoint_bytes", "timings")}
            shutil.rmtree(folder)  # ~20 GB each
        else:
            record = json.loads(scores.read_text(encoding="utf-8"))
            results[step]["record"] = {k: record.get(k) for k in ("scale", "tokens", "removal_order")}
        print(json.dumps({k: v for k, v in results[step].items() if k != "log_tail"}), file=sys.stderr, flush=True)
        out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
