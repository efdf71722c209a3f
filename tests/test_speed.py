"""Speed benchmark and the analytic FLOP model (no timed assertions: only shapes, fields and exact FLOP counts)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import transformers as tf

from depthprune.evaluation import flops
from tiny import ARCHS, LLAMA_LIKE, tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "depthprune", "-q", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


# tiny llama: d=32, 4 heads of 8, 2 kv heads, ff=64 (gated), vocab 128
PROJ = 2 * 32 * 8 * (2 * 4 + 2 * 2)      # q,o: 32x32; k,v: 32x16          = 6144
MLP = 2 * 3 * 32 * 64                     # gate, up, down                  = 12288
PER_KEY = 4 * 4 * 8                       # q.k and weights.v per key       = 128
HEAD = 2 * 32 * 128                       # LM head                         = 8192


def test_flops_match_hand_computation_for_tiny_llama():
    config = tf.LlamaConfig(**LLAMA_LIKE)  # 4 layers
    assert (PROJ, MLP, PER_KEY, HEAD) == (6144, 12288, 128, 8192)
    assert flops.token_flops(config, 10) == 4 * (PROJ + MLP + PER_KEY * 10) + HEAD == 87040
    # prefill of 3 tokens, logits of the last one: contexts 1, 2, 3
    assert flops.prefill_flops(config, 3) == 4 * (3 * (PROJ + MLP) + PER_KEY * 6) + HEAD == 232448
    assert flops.prefill_flops(config, 3, logits="all") == 232448 + 2 * HEAD
    # decode 2 tokens after a 5-token prompt: contexts 6 and 7, LM head each step
    assert flops.decode_flops(config, 5, 2) == 4 * (2 * (PROJ + MLP) + PER_KEY * 13) + 2 * HEAD


def test_ideal_ratio_of_removing_one_of_four_layers():
    dense = tf.LlamaConfig(**LLAMA_LIKE)
    pruned = tf.LlamaConfig(**{**LLAMA_LIKE, "num_hidden_layers": 3})
    layer = 100 * (PROJ + MLP) + PER_KEY * (100 * 101 // 2)   # one layer over a 100-token prefill
    expected = (3 * layer + HEAD) / (4 * layer + HEAD)
    assert flops.prefill_flops(pruned, 100) / flops.prefill_flops(dense, 100) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(7476992 / 9966592)  # the LM head does not shrink: a little above 3/4


def test_sliding_window_moe_and_plain_mlp():
    gemma3 = ARCHS["gemma3"][0]()  # window 4 on layers 0,1,3,4
    assert flops.attention_windows(gemma3) == [4, 4, None, 4, 4, None]
    fixed, per_key, _ = flops.layer_costs(gemma3)[0]
    assert flops.layer_flops(gemma3, 0, 100) == fixed + per_key * 4
    assert flops.layer_flops(gemma3, 2, 100) == fixed + per_key * 100
    for window in (None, 1, 3, 7):
        for first in range(1, 9):
            for last in range(first - 1, 12):
                brute = sum(min(c, window) if window else c for c in range(first, last + 1))
                assert flops._keys_sum(first, last, window) == brute
    mixtral = ARCHS["mixtral"][0]()  # 4 experts, 2 per token, ff 64
    fixed, _, _ = flops.layer_costs(mixtral)[0]
    assert fixed == PROJ + 2 * 3 * 32 * (2 * 64) + 2 * 32 * 4
    gpt2 = ARCHS["gpt2"][0]()  # d=32, 4 heads, ff=4d=128, not gated
    fixed, _, _ = flops.layer_costs(gpt2)[0]
    assert fixed == 2 * 32 * 8 * (4 * 4) + 2 * 2 * 32 * 128


WORKLOAD_FIELDS = {"key", "kind", "seq_len", "new_tokens", "batch_size", "tokens", "times_s", "median_s",
                   "tokens_per_s", "peak_memory_bytes", "flops"}


def _check_result(data: dict, layers: int, repeats: int) -> None:
    assert data["num_layers"] == layers
    assert data["params"] > 0 and data["weights_bytes"] >= 4 * data["params"]
    assert data["peak_memory_bytes"] >= data["weights_bytes"]
    assert data["memory_method"]
    keys = [w["key"] for w in data["workloads"]]
    assert keys == ["prefill@8", "prefill@24", "decode@6+5"]
    for w in data["workloads"]:
        assert WORKLOAD_FIELDS <= set(w)
        assert len(w["times_s"]) == repeats and all(t > 0 for t in w["times_s"])
        assert w["tokens_per_s"] > 0 and w["flops"] > 0 and w["peak_memory_bytes"] is not None
    assert data["workloads"][2]["tokens"] == 2 * 5  # batch 2 x 5 new tokens


def test_bench_cli_single_and_compare(tmp_path):
    dense = tiny_checkpoint(tmp_path / "dense", num_layers=6)
    pruned = tmp_path / "pruned"
    proc = run_cli("prune", dense, "--remove", "2", "--samples", "4", "--seq-len", "32", "--out", str(pruned))
    assert proc.returncode == 0, proc.stderr
    common = ["--seq-lens", "8,24", "--decode-tokens", "5", "--prompt-len", "6", "--batch-size", "2",
              "--repeats", "3", "--warmup", "1"]

    proc = run_cli("bench", dense, *common, "--json", str(tmp_path / "one.json"))
    assert proc.returncode == 0, proc.stderr
    assert "prefill@24" in proc.stdout and "decode@6+5" in proc.stdout
    one = json.loads((tmp_path / "one.json").read_text())
    _check_result(one, 6, 3)
    assert one["command"].startswith("depthprune -q bench ")

    proc = run_cli("bench", str(pruned), "--compare", dense, *common, "--threads", "1",
                   "--json", str(tmp_path / "cmp.json"))
    assert proc.returncode == 0, proc.stderr
    assert "time ratio" in proc.stdout and "ideal (FLOPs)" in proc.stdout
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    _check_result(cmp["baseline"], 6, 3)
    _check_result(cmp["candidate"], 4, 3)
    assert cmp["baseline"]["environment"]["torch_threads"] == 1
    assert cmp["labels"] == ["dense", "pruned"] and cmp["command"].startswith("depthprune -q bench ")
    ratios = cmp["ratios"]
    assert ratios["layers_ratio"] == pytest.approx(4 / 6)
    assert 0 < ratios["params_ratio"] < 1 and ratios["peak_memory_ratio"] > 0
    config = tf.AutoConfig.from_pretrained(dense)
    small = tf.AutoConfig.from_pretrained(pruned)
    for key, row in ratios["workloads"].items():
        assert {"time_ratio", "ideal_flop_ratio", "speedup", "ideal_speedup", "memory_ratio"} <= set(row)
        assert row["time_ratio"] > 0 and row["speedup"] == pytest.approx(1 / row["time_ratio"])
        base_times = next(w for w in cmp["baseline"]["workloads"] if w["key"] == key)["times_s"]
        cand_times = next(w for w in cmp["candidate"]["workloads"] if w["key"] == key)["times_s"]
        paired = [c / b for b, c in zip(base_times, cand_times)]
        assert row["time_ratio"] == pytest.approx(statistics.median(paired))
        if row["kind"] == "prefill":
            expected = flops.prefill_flops(small, row["seq_len"]) / flops.prefill_flops(config, row["seq_len"])
        else:
            expected = flops.decode_flops(small, 6, 5) / flops.decode_flops(config, 6, 5)
        assert row["ideal_flop_ratio"] == pytest.approx(expected, rel=1e-12)
        assert 4 / 6 < row["ideal_flop_ratio"] < 1


def test_prune_bench_writes_bench_json_and_command(tmp_path):
    dense = tiny_checkpoint(tmp_path / "dense", num_layers=4)
    out = tmp_path / "out"
    proc = run_cli("prune", dense, "--remove", "1", "--samples", "4", "--seq-len", "16", "--out", str(out),
                   "--bench", "--bench-seq-lens", "8", "--bench-decode-tokens", "3", "--bench-repeats", "2",
                   "--bench-threads", "1")
    assert proc.returncode == 0, proc.stderr
    bench = json.loads((out / "bench.json").read_text())
    assert bench["labels"] == ["dense", "pruned"]
    assert bench["baseline"]["num_layers"] == 4 and bench["candidate"]["num_layers"] == 3
    assert set(bench["ratios"]["workloads"]) == {"prefill@8", "decode@128+3"}
    assert bench["candidate"]["environment"]["torch_threads"] == 1
    meta = json.loads((out / "depthprune.json").read_text())
    assert meta["command"].startswith("depthprune -q prune ") and "--bench" in meta["command"]
    card = (out / "README.md").read_text()
    assert "## Speed" in card and "ideal (FLOPs)" in card


def test_bench_user_errors(tmp_path):
    dense = tiny_checkpoint(tmp_path / "dense", num_layers=2)
    proc = run_cli("bench", dense, "--seq-lens", "12,abc")
    assert proc.returncode == 2 and "--seq-lens" in proc.stderr
    proc = run_cli("bench", dense, "--seq-lens", "100000", "--decode-tokens", "0")
    assert proc.returncode == 2 and "positions" in proc.stderr
