"""Redraw the sweep plots of saved sweep directories from their sweep.json (no model run).

    PYTHONPATH=src python3 bench/replot_sweeps.py bench/results/smollm2-135m bench/results/gemma3-270m
"""

import json
import sys
from pathlib import Path

from depthprune.pipeline.sweep import SweepResult
from depthprune.reporting.sweep_files import render_sweep

for folder in map(Path, sys.argv[1:]):
    result = SweepResult.from_json(json.loads((folder / "sweep.json").read_text(encoding="utf-8")))
    for path in render_sweep(result, folder):
        print(f"wrote {path}")
