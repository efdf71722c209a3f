"""Layer x head heatmaps of head importance."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from depthprune.reporting.plots import _pyplot


def plot_head_heatmaps(panels: Sequence[tuple[str, Sequence[Sequence[float]]]], path: Path, *, title: str = "") -> Path:
    """One heatmap per (label, [layer][head]) panel, side by side; rows = layers (0-based), columns = heads."""
    import numpy as np

    plt = _pyplot()
    n = len(panels)
    rows = len(panels[0][1]) if panels else 1
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1.0, max(3.5, 0.2 * rows + 1.5)), dpi=120, squeeze=False)
    for ax, (label, matrix) in zip(axes[0], panels):
        m = np.asarray(matrix, dtype=float)
        im = ax.imshow(m, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("head / KV group (0-based)", fontsize=7)
        ax.set_ylabel("layer (0-based)", fontsize=7)
        ax.set_xticks(range(m.shape[1]))
        ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
