"""The original GGUF quantization as its own column of the orthogonality table (docs/quantization.md).

For one bundled model: the shipped quantized GGUF (SmolLM2 Q4_1, Gemma-3 Q4_K_M) and the same file with
layers cut out by ``depthprune.surgery.gguf_cut.prune_gguf`` (kept tensors byte for byte, so still in the
original quantization), both run in llama.cpp (``llama-cpp-python``):

* file size;
* perplexity on exactly the windows ``depthprune.evaluation.perplexity`` scores (same tokenizer, same
  WikiText-2-raw test slice, same BOS prefix, NLL of every token after the first in each window), computed from
  llama.cpp's logits — so the numbers sit next to the transformers rows of quantization_table.py;
* the same windows through transformers' GGUF loader (dequantized to float32), as the check that both runtimes
  read the same weights;
* prefill (one batch of --speed-seq-len tokens) and decode (--decode-tokens single-token steps after a
  --prompt-len prompt) time, dense and pruned interleaved per repeat, median of paired ratios, one thread.

    PYTHONPATH=src python bench/llamacpp_column.py smollm2-135m --layers 3,12,13,14,15,17,25 \\
        --json bench/results/llamacpp-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from depthprune.io.data import iter_texts, sequential_windows
from depthprune.evaluation.perplexity import perplexity_on
from depthprune.surgery.gguf_cut import prune_gguf
from depthprune.io.models import _gemma3_gguf, _smollm2_gguf, load_model

log = logging.getLogger("llamacpp_column")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = {"smollm2-135m": _smollm2_gguf, "gemma3-270m": _gemma3_gguf}


def llama(path: Path, n_ctx: int, threads: int, logits_all: bool = True):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=logits_all,
                           n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)


def llamacpp_ppl(path: Path, windows, threads: int) -> dict:
    """exp(mean NLL) over every real token after the first of each window, from llama.cpp's logits."""
    llm = llama(path, windows.settings["seq_len"], threads)
    total, count = 0.0, 0
    for ids, mask in windows.batches(1):
        tokens = ids[0][mask[0].bool()].tolist()
        llm.reset()
        llm.eval(tokens)
        logits = torch.as_tensor(np.asarray(llm.scores[: len(tokens) - 1]), dtype=torch.float64)
        logp = torch.log_softmax(logits, dim=-1)
        target = torch.as_tensor(tokens[1:])
        total += float(-logp[torch.arange(len(target)), target].sum())
        count += len(target)
    del llm
    return {"ppl": math.exp(total / count), "nll": total / count, "tokens": count}


def timed_runs(path: Path, args) -> dict:
    """One (prefill_s, decode_s) measurement on a fresh context: prefill of speed_seq_len tokens; decode of
    decode_tokens single-token evals after a prompt_len prompt (greedy argmax of the last logits)."""
    # logits of the last position only, as in generation: with logits_all the vocabulary projection of every prompt
    # position (the same cost in both models) would dominate the prefill time
    llm = llama(path, max(args.speed_seq_len, args.prompt_len + args.decode_tokens) + 8, 1, logits_all=False)
    vocab = llm.n_vocab()
    rng = np.random.default_rng(0)
    prefill_tokens = rng.integers(100, vocab - 100, args.speed_seq_len).tolist()
    prompt = rng.integers(100, vocab - 100, args.prompt_len).tolist()
    llm.reset()
    llm.eval(prompt[:8])  # warm-up
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prefill_tokens)
    prefill = time.perf_counter() - t0
    llm.reset()
    llm.eval(prompt)
    t0 = time.perf_counter()
    for _ in range(args.decode_tokens):
        last = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))  # the last position's logits
        llm.eval([int(np.argmax(last))])
    decode = time.perf_counter() - t0
    del llm
    return {"prefill_s": prefill, "decode_s": decode}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(SOURCES))
    ap.add_argument("--layers", required=True, help="0-based layers to cut (the table's BI choice)")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--ppl-seq-len", type=int, default=512)
    ap.add_argument("--ppl-max-tokens", type=int, default=4096)
    ap.add_argument("--speed-seq-len", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2, help="threads for the perplexity pass (speed uses 1)")
    ap.add_argument("--speed-only", action="store_true",
                    help="keep the size and perplexity rows of an existing --json; measure speed again")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    removed = sorted(int(x) for x in args.layers.split(","))
    source = SOURCES[args.model]()
    out: dict = {"model": args.model, "source": source.name, "removed": removed,
                 "settings": {k: str(v) for k, v in vars(args).items()}, "rows": {}}
    if args.speed_only:
        kept = json.loads(args.json.read_text())
        if kept["removed"] != removed or kept["model"] != args.model:
            raise SystemExit(f"{args.json} measured other layers or another model")
        out["rows"] = kept["rows"]
    else:
        loaded = load_model(args.model, dtype="float32")
        text = str(args.data / "wikitext-2-raw" / "wiki.test.raw")
        windows = sequential_windows(loaded.tokenizer, iter_texts(text), seq_len=args.ppl_seq_len,
                                     max_tokens=args.ppl_max_tokens, source=text)
    with tempfile.TemporaryDirectory() as tmp:
        pruned = Path(prune_gguf(source, removed, Path(tmp) / "pruned.gguf").output)
        files = {"dense": source, "pruned": pruned}
        for name, path in files.items():
            if args.speed_only:
                break
            t0 = time.time()
            row = {"file_bytes": path.stat().st_size, "llamacpp": llamacpp_ppl(path, windows, args.threads)}
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                         dtype=torch.float32).eval()
            row["transformers"] = perplexity_on(model, windows, progress=False).to_json()
            row["transformers"].pop("settings", None)
            del model
            log.info("%s: llama.cpp ppl %.2f, transformers ppl %.2f (%.0fs)", name, row["llamacpp"]["ppl"],
                     row["transformers"]["ppl"], time.time() - t0)
            out["rows"][name] = row
        runs: dict = {"dense": [], "pruned": []}
        for r in range(args.repeats):
            for name in (("dense", "pruned") if r % 2 == 0 else ("pruned", "dense")):
                runs[name].append(timed_runs(files[name], args))
        speed = {}
        for kind in ("prefill_s", "decode_s"):
            paired = [p[kind] / d[kind] for d, p in zip(runs["dense"], runs["pruned"])]
            q = statistics.quantiles(paired, n=4, method="inclusive") if len(paired) > 1 else [paired[0]] * 3
            speed[kind.removesuffix("_s")] = {
                "time_ratio": statistics.median(paired), "speedup": 1 / statistics.median(paired),
                "paired_time_ratios": paired, "relative_iqr": (q[2] - q[0]) / statistics.median(paired),
                "dense_median_s": statistics.median(d[kind] for d in runs["dense"]),
                "pruned_median_s": statistics.median(p[kind] for p in runs["pruned"])}
            log.info("%s: speed-up x%.2f (paired ratios %s)", kind, speed[kind.removesuffix("_s")]["speedup"],
                     ", ".join(f"{x:.3f}" for x in paired))
        out["speed"] = speed
    out["llama_cpp_python"] = __import__("llama_cpp").__version__
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    d, p = out["rows"]["dense"], out["rows"]["pruned"]
    print(f"| {args.model} | file MB {d['file_bytes'] / 1e6:.1f} -> {p['file_bytes'] / 1e6:.1f} | "
          f"llama.cpp ppl {d['llamacpp']['ppl']:.2f} -> {p['llamacpp']['ppl']:.2f} | transformers ppl "
          f"{d['transformers']['ppl']:.2f} -> {p['transformers']['ppl']:.2f} | prefill x{speed['prefill']['speedup']:.2f}"
          f" | decode x{speed['decode']['speedup']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
