"""Peak memory while reading calibration text from one huge line (memory is bounded).

Writes single-line inputs (no newline at all) of 1 MB, 50 MB and 500 MB into a temporary
directory, then for each one starts a fresh Python process that builds a calibration set
(``build_calibration(PATH, tokenizer, samples=128, seq_len=512)``, the CLI defaults) and reports
its peak RSS (``ru_maxrss``) and its RSS just before reading (after imports and loading the
tokenizer). A ``.jsonl`` row of 50 MB is measured too: a JSON line is parsed whole, so its
bound is the line's size (documented in the README), whereas plain text is read in pieces.

    PYTHONPATH=src python3 bench/text_memory.py            # SmolLM2 tokenizer if cached, else the test tokenizer
    PYTHONPATH=src python3 bench/text_memory.py --sizes 1,50,500 --samples 128 --seq-len 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r'''
import json, resource, sys
sys.path.insert(0, {tests!r})
def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
tok_dir, path, samples, seq_len = {tok!r}, {path!r}, {samples}, {seq_len}
if tok_dir:
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
else:
    from tiny import tiny_tokenizer
    tok = tiny_tokenizer()
from depthprune.data import build_calibration
before = rss_mib()
calib = build_calibration(path, tok, samples=samples, seq_len=seq_len, seed=0)
print(json.dumps({{"before_mib": before, "peak_mib": rss_mib(), "windows": len(calib), "tokens": calib.num_tokens}}))
'''

WORDS = "the layer barely rotates the residual stream so it can go while the rest stays ".split()


def write_single_line(path: Path, size_mb: int, jsonl: bool = False) -> None:
    chunk = " ".join(WORDS[i % len(WORDS)] for i in range(200_000)) + " "
    target = size_mb * 10**6
    with path.open("w", encoding="utf-8") as handle:
        written = 0
        if jsonl:
            handle.write('{"text": "')
        while written < target:
            piece = chunk[: target - written]
            handle.write(piece)
            written += len(piece)
        if jsonl:
            handle.write('"}\n')


def measure(path: Path, tok: str, samples: int, seq_len: int) -> dict:
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    code = CHILD.format(tests=tests, tok=tok, path=str(path), samples=samples, seq_len=seq_len)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,50,500", help="single-line .txt sizes in MB")
    parser.add_argument("--jsonl-size", type=int, default=50, help="size of the single .jsonl row in MB (0: skip)")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    cached = Path.home() / ".cache" / "depthprune" / "models" / "smollm2-135m"
    tok = str(cached) if (cached / "tokenizer.json").is_file() else ""
    print(f"tokenizer: {tok or 'tests/tiny.py tiny_tokenizer'}; samples {args.samples} x seq_len {args.seq_len}")
    print(f"{'input':>22} | {'RSS before read':>15} | {'peak RSS':>9} | windows | tokens")
    with tempfile.TemporaryDirectory(prefix="depthprune-textmem-") as tmp:
        cases = [(f"{int(s)} MB .txt, 1 line", Path(tmp) / f"{s}.txt", int(s), False) for s in args.sizes.split(",")]
        if args.jsonl_size:
            cases.append((f"{args.jsonl_size} MB .jsonl, 1 row", Path(tmp) / "row.jsonl", args.jsonl_size, True))
        for label, path, size, jsonl in cases:
            write_single_line(path, size, jsonl)
            r = measure(path, tok, args.samples, args.seq_len)
            print(f"{label:>22} | {r['before_mib']:>11.0f} MiB | {r['peak_mib']:>5.0f} MiB | {r['windows']:>7} | {r['tokens']}")
            path.unlink()


if __name__ == "__main__":
    main()
