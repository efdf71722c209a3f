"""One-GPU check of scoring at 7B scale (run through bench/gpu_check.sh; writes one JSON).

SHAPE=7b (default on CUDA): a Llama-2-7B-shaped model (hidden 4096, 32 layers, MLP 11008, 32 heads,
vocab 32000) with random bf16 weights, scored on 128 x 2048 random tokens (batch 8):
  1. bare forward (the model's forward over the same batches, logits of the last position only),
  2. in-memory Block Influence scoring (depthprune.scoring.run_layer_metrics),
  3. the model saved as safetensors, then layer-streamed scoring (depthprune.scale.streamed) with an
     activation budget (the memory cap), one decoder layer on the GPU at a time.
Each reports tokens/s, the ratio to the bare forward, and peak memory (CUDA: the allocator's peak
above the level at the start of the phase; CPU: RSS above it) next to the weights' size. The streamed
scores are compared with the in-memory ones (max |difference|; bf16, so not bit-equal).
SHAPE=small / SHAPE=tiny: the same on a small Llama shape (CPU smoke run; tiny is what CI runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import PeakMemory  # noqa: E402

SHAPES = {
    # name: (hidden, layers, intermediate, heads, kv heads, vocab, samples, seq_len, batch)
    "7b": (4096, 32, 11008, 32, 32, 32000, 128, 2048, 8),
    "small": (512, 8, 1408, 8, 8, 32000, 16, 256, 4),
    "tiny": (64, 2, 128, 4, 4, 512, 4, 32, 2),
}


def build(shape: str, dtype: torch.dtype, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, inter, heads, kv, vocab, *_ = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                         max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    with PeakMemory(device) as mem:
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        seconds = time.perf_counter() - t0
    return out, seconds, mem.peak_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--shape", default=os.environ.get("SHAPE"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--activation-budget-mb", type=int, default=int(os.environ.get("ACT_BUDGET_MB", "4096")))
    args = parser.parse_args()
    shape = args.shape or ("7b" if args.device.startswith("cuda") else "small")
    device = args.device
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("THREADS", "1")))  # shared machines: measure single-threaded
    dtype = torch.bfloat16 if device.startswith("cuda") or shape != "tiny" else torch.float32
    from depthprune.io.data import from_tensors
    from depthprune.importance.metrics import make_metric
    from depthprune.importance.streamed import StreamedModel, run_layer_metrics_streamed
    from depthprune.importance.scoring import run_layer_metrics

    hidden, layers, inter, heads, kv, vocab, samples, seq_len, batch = SHAPES[shape]
    result: dict = {"shape": shape, "device": device, "dtype": str(dtype).removeprefix("torch."),
                    "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
                    "samples": samples, "seq_len": seq_len, "batch_size": batch, "torch": torch.__version__}
    t0 = time.perf_counter()
    model = build(shape, dtype, device)
    result["build_s"] = time.perf_counter() - t0
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    result.update(params=sum(p.numel() for p in model.parameters()), weights_bytes=weights)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (samples, seq_len), generator=g)
    calibration = from_tensors(ids, torch.ones_like(ids))
    tokens = calibration.num_tokens

    def bare():
        with torch.inference_mode():
            for x, m in calibration.batches(batch):
                model(input_ids=x.to(device), attention_mask=m.to(device), use_cache=False, logits_to_keep=1)

    def scored():
        metric = make_metric("bi", layers)
        run_layer_metrics(model, calibration, [metric], batch_size=batch, progress=False)
        return metric.result()

    bare()  # warm-up (kernels, allocator)
    _, bare_s, bare_peak = timed(device, bare)
    memory_scores, score_s, score_peak = timed(device, scored)
    result["bare_forward"] = {"seconds": bare_s, "tokens_per_s": tokens / bare_s, "peak_bytes": bare_peak}
    result["in_memory"] = {"seconds": score_s, "tokens_per_s": tokens / score_s, "ratio_to_bare": score_s / bare_s,
                           "peak_bytes": score_peak, "peak_over_weights": (score_peak + weights) / weights}
    with tempfile.TemporaryDirectory(prefix="gpu_check-", dir=os.environ.get("GPU_CHECK_TMP")) as tmp:
        t0 = time.perf_counter()
        model.save_pretrained(tmp, max_shard_size="2GB")
        result["save_s"] = time.perf_counter() - t0
        model = None  # frees the weights (the closures above share this variable)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

        def streamed():
            sm = StreamedModel(tmp, dtype=dtype, device=device)
            metric = make_metric("bi", layers)
            stats = run_layer_metrics_streamed(sm, calibration, [metric], batch_size=batch,
                                               activation_budget_bytes=args.activation_budget_mb << 20,
                                               progress=False)
            return metric.result(), stats

        (stream_scores, stats), stream_s, stream_peak = timed(device, streamed)
    result["streamed"] = {"seconds": stream_s, "tokens_per_s": tokens / stream_s, "ratio_to_bare": stream_s / bare_s,
                          "ratio_to_in_memory": stream_s / score_s, "peak_bytes": stream_peak,
                          "peak_over_weights": stream_peak / weights, "activation_budget_mb": args.activation_budget_mb,
                          "stats": stats.to_json(),
                          "max_abs_score_diff_vs_in_memory": float((stream_scores - memory_scores).abs().max())}
    result["memory_method"] = ("torch.cuda.max_memory_allocated above the phase start (in-memory: plus the weights)"
                               if device.startswith("cuda") else "RSS sampled above the phase start (psutil)")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
