"""Fill docs/scale.md's TABLE_* / COMMANDS placeholders (in docs/scale.template.md) from bench/scale_tables.py output."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["bench/results/scale_prune.json", "bench/results/scale_small.json", "bench/results/scale_1.5b.json"]

text = subprocess.run([sys.executable, str(ROOT / "bench" / "scale_tables.py"), *FILES], capture_output=True,
                      text=True, check=True, cwd=ROOT).stdout
blocks = text.split("\n\n")
score = "\n".join(b for b in blocks if b.startswith("| model"))
prune = "\n\n".join(b for b in blocks if b.startswith(("Pruning", "| path", "ratio on disk")))
torchrun = "\n".join(b for b in blocks if b.startswith("torchrun"))
commands = text[text.index("Commands:"):].split("\n", 1)[1].strip("\n")
doc = (ROOT / "docs" / "scale.template.md").read_text()
for key, value in {"TABLE_SCORE": score or "(not measured)", "TABLE_PRUNE": prune or "(not measured)",
                   "TABLE_TORCHRUN": torchrun or "(not measured)", "COMMANDS": commands}.items():
    doc = doc.replace(key, value)
(ROOT / "docs" / "scale.md").write_text(doc)
