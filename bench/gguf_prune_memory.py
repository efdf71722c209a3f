"""Peak memory and file sizes of GGUF -> GGUF pruning (depthprune.surgery.gguf_cut) on the bundled models.

Each measurement runs in a fresh Python process and reports its own peak RSS (ru_maxrss), so the
numbers are whole-process peaks: "baseline" = interpreter + imports + parsing the GGUF header,
"prune" = the same plus writing the pruned file. Their difference is what streaming the tensors costs;
it is compared with the file size and the largest tensor.

    python3 bench/gguf_prune_memory.py [--out bench/results/gguf_prune_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from depthprune.io.gguf import read_header
from depthprune.surgery.gguf_cut import prune_gguf
src, removed, out, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
t0 = time.perf_counter()
result = prune_gguf(src, removed, out).to_json() if mode == "prune" else read_header(src) and None
seconds = time.perf_counter() - t0
largest = max(t.nbytes for t in read_header(src).tensors)  # after the peak of interest; same size as baseline
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "seconds": seconds,
                  "largest_tensor": largest, "result": result}))
"""

# Removals that every check accepts: SmolLM2 (llama, 30 blocks) any; Gemma 3 (18 blocks) one whole period of 6.
CASES = {"smollm2-135m": [3, 10, 20, 21, 25, 26, 27], "gemma3-270m": [6, 7, 8, 9, 10, 11]}


def child(src: Path, removed: list[int], out: Path, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), json.dumps(removed), str(out), mode],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gguf_prune_memory.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from depthprune.io.models import DEMO_MODELS

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for alias, removed in CASES.items():
            src = DEMO_MODELS[alias].locate()
            out = Path(tmp) / f"{alias}.gguf"
            base = child(src, removed, out, "header")
            run = child(src, removed, out, "prune")
            res = run["result"]
            row = {"model": alias, "source": src.name, "removed_layers": res["removed_layers"],
                   "blocks": f"{res['blocks_before']} -> {res['blocks_after']}",
                   "bytes_before": res["bytes_before"], "bytes_after": res["bytes_after"],
                   "largest_tensor_bytes": run["largest_tensor"],
                   "peak_rss_baseline": base["peak_rss"], "peak_rss_prune": run["peak_rss"],
                   "streaming_overhead": run["peak_rss"] - base["peak_rss"], "seconds": round(run["seconds"], 2)}
            rows.append(row)
            mib = 1024 * 1024
            print(f"{alias}: {row['blocks']} blocks, {row['bytes_before'] / mib:.1f} -> {row['bytes_after'] / mib:.1f} MiB;"
                  f" peak RSS {row['peak_rss_prune'] / mib:.1f} MiB (baseline {row['peak_rss_baseline'] / mib:.1f} MiB,"
                  f" +{row['streaming_overhead'] / mib:.1f} MiB for streaming; largest tensor"
                  f" {row['largest_tensor_bytes'] / mib:.1f} MiB); {row['seconds']} s")
            out.unlink(missing_ok=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": "python3 bench/gguf_prune_memory.py", "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
