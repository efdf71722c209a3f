"""Speed ratios that cannot be true are flagged, not published: synthetic timing series injected into a comparison."""

import pytest

from depthprune.evaluation.speed import BenchComparison, BenchResult, Workload, ratio_noise
from depthprune.reporting.tables import speed_table


def _result(times: list[float], flops: int, layers: int) -> BenchResult:
    w = Workload("decode", 128, 32, 1, 32, times_s=times, flops=flops)
    return BenchResult("m", "llama", layers, 100 * layers, 400 * layers, "cpu", "float32", [w], {"repeats": len(times)},
                       "rss")


def _comparison(dense: list[float], pruned: list[float]) -> dict:
    # ideal time ratio = 80/100 = 0.80 (pruned does 80% of the FLOPs)
    return BenchComparison(_result(dense, 100, 30), _result(pruned, 80, 23)).to_json()


def test_steady_ratio_near_the_ideal_is_a_result():
    data = _comparison([1.00, 1.01, 0.99, 1.00, 1.02], [0.81, 0.82, 0.80, 0.81, 0.83])
    row = data["ratios"]["workloads"]["decode@128+32"]
    assert row["noisy"] is False and row["reason"] is None
    assert row["time_ratio"] == pytest.approx(0.81, abs=0.01)
    assert row["spread"]["pairs"] == 5 and row["spread"]["min"] <= row["time_ratio"] <= row["spread"]["max"]
    cell = speed_table(data).rows[0][3]
    assert not cell.startswith("unreliable") and "0.81" in cell


def test_ratio_beating_the_ideal_beyond_its_spread_is_flagged():
    # a busy machine slowed the dense runs: pruned/dense = 0.49, far below the ideal 0.80, with a tight spread
    data = _comparison([2.0, 2.02, 1.98, 2.0, 2.01], [0.98, 0.99, 0.97, 0.98, 1.0])
    row = data["ratios"]["workloads"]["decode@128+32"]
    assert row["noisy"] is True and "beats the ideal" in row["reason"]
    assert speed_table(data).rows[0][3].startswith("unreliable: ")


def test_wide_spread_is_flagged():
    data = _comparison([1.0, 1.0, 1.0, 1.0, 1.0], [0.5, 0.8, 1.2, 0.7, 1.0])
    row = data["ratios"]["workloads"]["decode@128+32"]
    assert row["noisy"] is True and "spread" in row["reason"]


def test_slightly_below_the_ideal_within_noise_is_not_flagged():
    # 0.785 vs ideal 0.80: within the 3% margin
    assert ratio_noise([0.78, 0.785, 0.79, 0.785, 0.78], 0.80)["noisy"] is False
    assert ratio_noise([0.70, 0.72, 0.71, 0.70, 0.71], 0.80)["noisy"] is True


def test_too_few_pairs_and_old_bench_files():
    assert ratio_noise([0.8], 0.8)["noisy"] is True
    data = _comparison([2.0, 2.02, 1.98, 2.0, 2.01], [0.98, 0.99, 0.97, 0.98, 1.0])
    for key in ("noisy", "reason", "spread"):  # a bench.json written before the noise check
        del data["ratios"]["workloads"]["decode@128+32"][key]
    assert speed_table(data).rows[0][3].startswith("unreliable: ")
