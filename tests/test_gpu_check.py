"""bench/gpu_check.sh runs end to end on the CPU with the smallest shape and writes one JSON."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_tiny_shape_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "SHAPE": "tiny", "CUDA_VISIBLE_DEVICES": "", "GPU_CHECK_TMP": str(tmp_path)}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["shape"] == "tiny" and data["device"] == "cpu"
    for phase in ("bare_forward", "in_memory", "streamed"):
        assert data[phase]["tokens_per_s"] > 0
    assert data["streamed"]["stats"]["tokens"] == data["samples"] * data["seq_len"]
    # float32 on the CPU: streamed and in-memory Block Influence agree
    assert data["streamed"]["max_abs_score_diff_vs_in_memory"] <= 1e-6
    assert not any(p.name.startswith("gpu_check-") for p in tmp_path.iterdir())  # temporary checkpoint removed
