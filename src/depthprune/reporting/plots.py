"""Plots (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_removed_only(plt, removed_set: set, path: Path, title: str, red: str, blue: str) -> Path:
    """Which layers went, when no per-layer scores exist (``--layers``, LaCo merges)."""
    n = max(removed_set) + 1 if removed_set else 0
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * n + 2), 2.4), dpi=120)
    ax.bar(range(n), [1] * n, color=[red if i in removed_set else blue for i in range(n)])
    ax.set_yticks([])
    ax.set_xticks(range(n))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("layer (0-based, original numbering); red = removed, blue = kept", fontsize=8)
    ax.set_title((title or "removed layers") + "\n(no per-layer scores: the layers were given or merged)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_layer_scores(scores: Sequence[float], path: Path, *, removed: Sequence[int] = (), metric: str = "bi",
                      title: str = "") -> Path:
    """Score per layer (0-based), removed layers in red, and the decision made visible.

    Left: every layer on a log axis (when all scores are positive), so the middle layers are not squashed by
    the first and last ones, with the cut-off line at the highest removed score. Right (when layers were
    removed): the candidates around the cut-off, sorted by score: every removed layer and the next kept ones,
    on a linear axis, so one sees by how much each removed layer beat its kept neighbours.
    """
    plt = _pyplot()
    scores = list(scores)
    removed_set = set(removed)
    red, blue = "#d62728", "#1f77b4"
    if not scores or any(i >= len(scores) for i in removed_set):  # layers given explicitly or merged: no scores
        return _plot_removed_only(plt, removed_set, path, title, red, blue)
    colors = [red if i in removed_set else blue for i in range(len(scores))]
    panels = 2 if removed_set else 1
    width = max(6.0, 0.28 * len(scores) + 2) + (4.0 if panels == 2 else 0.0)
    fig, axes = plt.subplots(1, panels, figsize=(width, 3.9), dpi=120, squeeze=False,
                             gridspec_kw={"width_ratios": [max(2.0, 0.28 * len(scores)), 1.6][:panels]})
    ax = axes[0][0]
    ax.bar(range(len(scores)), scores, color=colors)
    positive = bool(scores) and min(scores) > 0
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("layer (0-based, original numbering)")
    ax.set_ylabel(f"{metric} score{' (log)' if positive else ''}, higher = more important", fontsize=8)
    ax.set_xticks(range(len(scores)))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("all layers", fontsize=9)
    if removed_set:
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        cut = max(scores[i] for i in removed_set)
        ax.axhline(cut, color=red, linestyle="--", linewidth=0.9)
        ax.legend(handles=[Patch(color=red, label="removed"), Patch(color=blue, label="kept"),
                           Line2D([0], [0], color=red, linestyle="--", label="highest removed score")],
                  loc="best", fontsize=7)
        _plot_cutoff_zoom(axes[0][1], scores, removed_set, metric, cut, red, blue)
    fig.suptitle(title or f"{metric} per layer", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_cutoff_zoom(ax, scores: list[float], removed: set[int], metric: str, cut: float, red: str,
                      blue: str) -> None:
    """Removed layers and the lowest-scoring kept ones, sorted ascending: the margin of each decision."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    kept_next = [i for i in order if i not in removed][:max(3, min(6, len(removed)))]
    shown = sorted(list(removed) + kept_next, key=lambda i: (scores[i], i))
    values = [scores[i] for i in shown]
    ax.bar(range(len(shown)), values, color=[red if i in removed else blue for i in shown])
    ax.set_xticks(range(len(shown)), [str(i) for i in shown], fontsize=7)
    ax.axhline(cut, color=red, linestyle="--", linewidth=0.9)
    low, high = min(values), max(values)
    pad = (high - low) * 0.15 or abs(high) * 0.1 or 0.01
    ax.set_ylim(min(0.0, low - pad) if low <= 0 else max(0.0, low - pad), high + pad)
    ax.set_xlabel("layer, by score (ascending)", fontsize=8)
    ax.set_title("around the cut-off", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)


def _labels(values, fmt: str) -> list[str]:
    """Bar labels: the value, or "-" where nothing was measured (that bar has no height, as the table has no
    number): a missing result is never drawn as a measured 0."""
    return ["-" if v is None else fmt.format(v) for v in values]


def plot_quality(ppl: tuple[float, float] | None, tasks: Sequence[tuple[str, float | None, float | None]], path: Path,
                 *, labels: tuple[str, str] = ("dense", "pruned"), title: str = "", ppl_source: str = "") -> Path:
    """Grouped bars, dense vs pruned: perplexity (own axis, lower is better) and task accuracy in %.

    Each panel has one title naming what it measures (``ppl_source``: the text the perplexity was measured on);
    ``title``, if given, replaces the single-panel title instead of being stacked above it.
    """
    plt = _pyplot()
    panels = (1 if ppl else 0) + (1 if tasks else 0)
    widths = ([1.0] if ppl else []) + ([max(2.0, 0.9 * len(tasks))] if tasks else [])
    fig, axes = plt.subplots(1, panels, figsize=(max(6.0, 1.6 + 1.2 * (len(tasks) + (1 if ppl else 0))), 3.6),
                             dpi=120, gridspec_kw={"width_ratios": widths}, squeeze=False)
    colors = ("#1f77b4", "#d62728")
    axes = list(axes[0])
    if ppl:
        ax = axes.pop(0)
        bars = ax.bar([0, 1], [v or 0.0 for v in ppl], color=colors)
        ax.bar_label(bars, labels=_labels(ppl, "{:.1f}"), fontsize=8)
        ax.set_xticks([0, 1], list(labels))
        ax.set_ylabel("perplexity (lower is better)")
        ax.set_title(f"perplexity on {ppl_source}" if ppl_source else "perplexity", fontsize=9)
    if tasks:
        ax = axes.pop(0)
        xs = range(len(tasks))
        for k, (label, color) in enumerate(zip(labels, colors)):
            measured = [None if t[1 + k] is None else 100 * t[1 + k] for t in tasks]
            bars = ax.bar([x + (k - 0.5) * 0.4 for x in xs], [v or 0.0 for v in measured], width=0.4, color=color,
                          label=label)
            ax.bar_label(bars, labels=_labels(measured, "{:.1f}"), fontsize=7)
        ax.set_xticks(list(xs), [t[0] for t in tasks], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_title("task accuracy (lm-eval)", fontsize=9)
        top = max([100 * (v or 0.0) for t in tasks for v in t[1:]] + [1.0])
        ax.set_ylim(0, top * 1.25)
        ax.legend(fontsize=8, loc="upper right", ncol=2)
    if title and panels == 1:
        fig.axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


SWEEP_CLIP = 3.0  # y-axis of the sweep plot: up to this many times the best perplexity at the largest count


def plot_sweep(result, path: Path, *, title: str = "", clip: float = SWEEP_CLIP) -> Path:
    """Perplexity (log scale) against layers removed: colour = metric, line style = strategy, dense at n = 0.

    The y-axis stops at ``clip`` x the worst of the per-count best perplexities, so baselines that explode
    (reverse-order, random) do not squash the useful lines together; a line that leaves the plot gets a
    triangle at the top edge where it does and "(off-scale from N)" in the legend.
    """
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
    dense = result.dense["ppl"]
    highest = max([y for pts in lines.values() for _, y in pts] + [dense])
    best = {}
    for pts in lines.values():
        for x, y in pts:
            best[x] = min(best.get(x, y), y)
    top = min(highest, max(best.values(), default=dense) * clip) * 1.15
    for key, pts in sorted(lines.items()):
        metric, strategy = key.split("/", 1)
        xs, ys = zip(*pts)
        color = colors(metrics.index(metric) % 10)
        off = [x for x, y in pts if y > top]
        label = f"{key} (off-scale from {off[0]})" if off else key
        ax.plot(xs, ys, color=color, linestyle=styles.get(strategy, "-"), marker=markers.get(strategy, "o"),
                markersize=3.5, linewidth=1.3, label=label)
        if off:
            ax.plot([off[0]], [top / 1.04], marker="^", markersize=8, color=color, clip_on=False, linestyle="none")
    ax.axhline(dense, color="grey", linewidth=0.8, linestyle=":")
    ax.set_yscale("log")
    ax.set_ylim(dense / 1.15, top)
    ax.set_xlabel("layers removed")
    source = str(result.evaluation.get("source", ""))
    ax.set_ylabel(f"perplexity on {Path(source).name or source} (log)")
    ax.set_xticks(sorted({0, *result.counts}))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="metric/strategy", title_fontsize=7)
    clipped = f" (y cut at {clip:g}x the best line)" if highest > top else ""
    ax.set_title(title or f"{result.model} ({result.num_layers} layers): perplexity vs layers removed, "
                 f"dense {dense:.1f}{clipped}", fontsize=10)
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
        values = [r[1 + k] for r in rows]
        bars = ax.bar([x + (k - 0.5) * 0.4 for x in xs], [v or 0.0 for v in values], width=0.4, color=color,
                      label=label)
        ax.bar_label(bars, labels=_labels(values, "{:.2f}"), fontsize=7)
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


def plot_search(search: dict, path: Path, *, title: str = "") -> Path:
    """``prune --auto``: validation perplexity against layers removed (the chosen selection at every count it had
    time for, and the chosen candidate), and against search time (every candidate, with the best-so-far front)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    dense = (search.get("dense") or {}).get("val_ppl")
    measured = [c for c in search.get("candidates") or [] if c.get("val_ppl") is not None]
    chosen = (search.get("candidates") or [None])[search.get("chosen", 0)] if search.get("candidates") else None
    curve = sorted(search.get("curve") or [], key=lambda p: p["n_removed"])
    if dense:
        for ax in (left, right):
            ax.axhline(dense, color="black", linewidth=0.8, linestyle="--", label="dense")
    if curve:
        left.plot([0] + [p["n_removed"] for p in curve], [dense or curve[0]["val_ppl"]] + [p["val_ppl"] for p in curve],
                  marker="o", color="#1f77b4", label=f"{curve[0]['selection']}, no repair")
    for cand in measured:
        left.scatter(len(cand["removed"]), cand["val_ppl"], color="#bbbbbb", s=14, zorder=2)
    if chosen is not None and chosen.get("val_ppl") is not None:
        left.scatter(len(chosen["removed"]), chosen["val_ppl"], color="#d62728", s=50, zorder=3,
                     label=f"chosen: {chosen['selection']}, {chosen['repair']}")
    from matplotlib.ticker import MaxNLocator

    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("layers removed")
    left.set_ylabel("validation perplexity (log)")
    left.set_yscale("log")
    left.legend(fontsize=7)
    left.set_title("quality against layers removed", fontsize=10)
    order = sorted(measured, key=lambda c: c.get("finished_at") or 0.0)
    xs = [c.get("finished_at") or 0.0 for c in order]
    colors = {"none": "#7f7f7f", "linear": "#1f77b4", "cosine": "#9467bd"}
    right.scatter(xs, [c["val_ppl"] for c in order], s=18, zorder=2,
                  c=[colors.get(c["repair"], "#2ca02c") for c in order])
    front, best = [], float("inf")
    for x, c in zip(xs, order):
        best = min(best, c["val_ppl"])
        front.append(best)
    if order:
        right.step(xs, front, where="post", color="#d62728", label="best so far")
    for name, color in (("none", "#7f7f7f"), ("linear", "#1f77b4"), ("cosine", "#9467bd"), ("+lora", "#2ca02c")):
        right.scatter([], [], color=color, s=18, label=name)
    right.set_xlabel("search time (s)")
    right.set_yscale("log")
    right.legend(fontsize=7)
    right.set_title(f"quality against time (budget {search.get('budget', '?')})", fontsize=10)
    fig.suptitle(title or "prune --auto: validation perplexity", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
