"""Redraw the sweep plots of saved sweep directories from their sweep.json (no model run).

    PYTHONPATH=src python3 bench/replot_sweeps.py bench/results/smollm2-135m bench/results/gemma3-270m
"""

import sys

from depthprune.sweep import replot_sweep

for folder in sys.argv[1:]:
    for path in replot_sweep(folder):
        print(f"wrote {path}")
