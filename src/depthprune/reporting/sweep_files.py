"""The files of a sweep: sweep.csv, sweep.png (perplexity vs layers removed) and angular_heatmap.png."""

from __future__ import annotations

from pathlib import Path

from depthprune.reporting.plots import plot_angular_heatmap, plot_sweep


def render_sweep(result, folder: Path) -> list[Path]:
    """Write the CSV and the plots of a sweep result into ``folder`` (a staged output); returns the paths."""
    folder = Path(folder)
    paths = [folder / "sweep.csv", folder / "sweep.png"]
    paths[0].write_text(result.to_csv(), encoding="utf-8")
    plot_sweep(result, paths[1])
    if result.angular_blocks:
        paths.append(plot_angular_heatmap(result.angular_blocks, result.num_layers, folder / "angular_heatmap.png",
                                          title=f"{result.model}: angular distance (last token)"))
    return paths


__all__ = ["render_sweep"]
