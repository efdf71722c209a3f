"""Fill docs/scale.md from docs/scale.template.md: the TABLE_* / COMMANDS placeholders from bench/scale_tables.py
output on the result files (the prose around them quotes the same files)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCORE = ["bench/results/scale_32x256.json", "bench/results/scale_32x256_1.5b.json", "bench/results/scale_128x2048.json"]
LARGE = ["bench/results/larger_than_ram.json"]
EARLIER = ["bench/results/scale_prune.json", "bench/results/scale_small.json"]  # on-disk prune and torchrun rows


def tables(files: list[str]) -> str:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "scale_tables.py"), *files], capture_output=True,
                          text=True, check=True, cwd=ROOT).stdout


def blocks(text: str, starts: tuple[str, ...]) -> str:
    return "\n\n".join(b for b in text.split("\n\n") if b.startswith(starts))


def commands(text: str) -> list[str]:
    return [line for line in text[text.index("Commands:"):].split("\n", 1)[1].splitlines() if line.strip()]


score, large, earlier = tables(SCORE), tables(LARGE), tables(EARLIER)
doc = (ROOT / "docs" / "scale.template.md").read_text()
fills = {"TABLE_SCORE": blocks(score, ("| model", "|---")) or "(not measured)",
         "TABLE_LARGE": blocks(large, ("Larger than memory", "| step")) or "(not measured)",
         "TABLE_PRUNE": blocks(earlier, ("Pruning", "| path", "ratio on disk")) or "(not measured)",
         "TABLE_TORCHRUN": blocks(earlier, ("torchrun",)) or "(not measured)",
         "COMMANDS": "\n".join(dict.fromkeys(commands(large) + commands(score) + commands(earlier)))}
for key in sorted(fills, key=len, reverse=True):
    doc = doc.replace(key, fills[key])
(ROOT / "docs" / "scale.md").write_text(doc)
