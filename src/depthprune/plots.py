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


def plot_quality(ppl: tuple[float, float] | None, tasks: Sequence[tuple[str, float | None, float | None]], path: Path,
                 *, labels: tuple[str, str] = ("dense", "pruned"), title: str = "") -> Path:
    """Grouped bars, dense vs pruned: perplexity (own axis, lower is better) and task accuracy in %."""
    plt = _pyplot()
    panels = (1 if ppl else 0) + (1 if tasks else 0)
    widths = ([1.0] if ppl else []) + ([max(2.0, 0.9 * len(tasks))] if tasks else [])
    fig, axes = plt.subplots(1, panels, figsize=(max(6.0, 1.6 + 1.2 * (len(tasks) + (1 if ppl else 0))), 3.6),
                             dpi=120, gridspec_kw={"width_ratios": widths}, squeeze=False)
    colors = ("#1f77b4", "#d62728")
    axes = list(axes[0])
    if ppl:
        ax = axes.pop(0)
        bars = ax.bar([0, 1], list(ppl), color=colors)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_xticks([0, 1], list(labels))
        ax.set_ylabel("perplexity (lower is better)")
        ax.set_title("perplexity", fontsize=10)
    if tasks:
        ax = axes.pop(0)
        xs = range(len(tasks))
        for k, (label, color) in enumerate(zip(labels, colors)):
            values = [100 * (t[1 + k] or 0.0) for t in tasks]
            bars = ax.bar([x + (k - 0.5) * 0.4 for x in xs], values, width=0.4, color=color, label=label)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(list(xs), [t[0] for t in tasks], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_title("task accuracy", fontsize=10)
        top = max([100 * (v or 0.0) for t in tasks for v in t[1:]] + [1.0])
        ax.set_ylim(0, top * 1.25)
        ax.legend(fontsize=8, loc="upper right", ncol=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_sweep(result, path: Path, *, title: str = "") -> Path:
    """Perplexity (log scale) against layers removed: colour = metric, line style = strategy, dense at n = 0."""
    plt = _pyplot()
    with_tasks = bool(getattr(result, "dense_tasks", None))
    if with_tasks:  # second panel: lm-eval accuracy vs layers removed, sudden drops circled
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15.0, 4.8), dpi=120)
        _plot_accuracy(result, ax2)
    else:
        fig, ax = plt.subplots(figsize=(9.0, 4.8), dpi=120)
    lines = result.lines()
    metrics = sorted({key.split("/", 1)[0] for key in lines})
    colors = plt.get_cmap("tab10")
    styles = {"one-shot": "-", "iterative": "--", "block": ":", "greedy-ppl": "-.", "laco": (0, (5, 1, 1, 1))}
    markers = {"one-shot": "o", "iterative": "s", "block": "^", "greedy-ppl": "D", "laco": "x"}
    for key, pts in sorted(lines.items()):
        metric, strategy = key.split("/", 1)
        xs, ys = zip(*pts)
        ax.plot(xs, ys, color=colors(metrics.index(metric) % 10), linestyle=styles.get(strategy, "-"),
                marker=markers.get(strategy, "o"), markersize=3.5, linewidth=1.3, label=key)
    ax.axhline(result.dense["ppl"], color="grey", linewidth=0.8, linestyle=":")
    ax.set_yscale("log")
    ax.set_xlabel("layers removed")
    source = str(result.evaluation.get("source", ""))
    ax.set_ylabel(f"perplexity ({Path(source).name or source})")
    ax.set_xticks(sorted({0, *result.counts}))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="metric/strategy", title_fontsize=7)
    ax.set_title(title or f"{result.model} ({result.num_layers} layers): perplexity vs layers removed "
                 f"(dense {result.dense['ppl']:.1f})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_accuracy(result, ax) -> None:
    """Accuracy per task and metric/strategy against layers removed; sudden drops (sweep.sudden_drops) circled."""
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    styles = {"one-shot": "-", "iterative": "--", "block": ":", "greedy-ppl": "-.", "laco": (0, (5, 1, 1, 1))}
    drops = result.drops()
    k = 0
    for task in result.dense_tasks:
        for key, pts in sorted(result.accuracy_lines(task).items()):
            xs, ys, errs = zip(*pts)
            color = colors[k % len(colors)]
            k += 1
            ax.errorbar(xs, ys, yerr=[e or 0.0 for e in errs], color=color, capsize=2, markersize=3.5, marker="o",
                        linestyle=styles.get(key.split("/", 1)[1], "-"), linewidth=1.2, label=f"{task} {key}")
            for n in drops.get(task, {}).get(key, []):
                ax.plot([n], [dict((x, y) for x, y, _ in pts)[n]], marker="o", markersize=11, markerfacecolor="none",
                        markeredgecolor="red", linestyle="none")
    ax.set_xlabel("layers removed")
    limit = (result.task_settings or {}).get("limit")
    ax.set_ylabel(f"accuracy (lm-eval acc{f', limit {limit}' if limit else ''})")
    ax.set_xticks(sorted({0, *result.counts}))
    ax.legend(fontsize=7, loc="best")
    ax.set_title("accuracy vs layers removed (red circle = sudden drop)", fontsize=10)
    ax.grid(True, alpha=0.3)


def plot_speed(rows: Sequence[tuple[str, float | None, float | None]], path: Path, *, title: str = "") -> Path:
    """Per workload: measured speedup (dense time / pruned time) next to the ideal one from FLOPs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 + 1.3 * len(rows)), 3.6), dpi=120)
    xs = range(len(rows))
    for k, (label, color) in enumerate((("measured", "#2ca02c"), ("ideal (FLOPs)", "#7f7f7f"))):
        values = [r[1 + k] or 0.0 for r in rows]
        bars = ax.bar([x + (k - 0.5) * 0.4 for x in xs], values, width=0.4, color=color, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, max([v or 0.0 for r in rows for v in r[1:]] + [1.0]) * 1.25)
    ax.set_xticks(list(xs), [r[0] for r in rows], fontsize=8)
    ax.set_ylabel("speedup over dense (×)")
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    ax.set_title(title or "speedup of the pruned model", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_angular_heatmap(blocks: dict, num_layers: int, path: Path, *, title: str = "") -> Path:
    """Gromov et al.'s heatmap: angular distance between the input of layer s and the output of layer
    s + n - 1 (x: start layer s, 0-based; y: block size n); blank where the block would run past the end."""
    import numpy as np

    plt = _pyplot()
    sizes = sorted(int(n) for n in blocks)
    grid = np.full((len(sizes), num_layers), np.nan)
    for row, n in enumerate(sizes):
        values = blocks[n] if n in blocks else blocks[str(n)]
        grid[row, :len(values)] = values
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * num_layers + 2), max(3.5, 0.2 * len(sizes) + 1.5)), dpi=120)
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                      extent=(-0.5, num_layers - 0.5, sizes[0] - 0.5, sizes[-1] + 0.5))
    fig.colorbar(image, ax=ax, label="angular distance arccos(cos)/pi")
    ax.set_xlabel("start layer s (0-based)")
    ax.set_ylabel("block size n (layers)")
    ax.set_title(title or "angular distance of contiguous blocks", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
