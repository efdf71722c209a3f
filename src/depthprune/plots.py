"""Plots (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer_scores(scores: Sequence[float], path: Path, *, removed: Sequence[int] = (), metric: str = "bi",
                      title: str = "") -> Path:
    """Bar chart of one score per layer (0-based), removed layers highlighted."""
    plt = _pyplot()
    removed_set = set(removed)
    colors = ["#d62728" if i in removed_set else "#1f77b4" for i in range(len(scores))]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(scores) + 2), 3.6), dpi=120)
    ax.bar(range(len(scores)), scores, color=colors)
    ax.set_xlabel("layer (0-based, original numbering)")
    ax.set_ylabel(f"{metric} score (higher = more important)")
    ax.set_xticks(range(len(scores)))
    ax.tick_params(axis="x", labelsize=7)
    if removed_set:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color="#d62728", label="removed"), Patch(color="#1f77b4", label="kept")],
                  loc="best", fontsize=8)
    ax.set_title(title or f"{metric} per layer", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
