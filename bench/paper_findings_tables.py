"""Markdown tables for docs/paper-findings.md from the outputs of bench/paper_findings.sh.

    PYTHONPATH=src python bench/paper_findings_tables.py [bench/results/paper-findings]

Reads heads-*/heads.json and sweep-*/sweep.json; for the parameter shares it loads each model
once (from depthprune's cache) to count the parameters of one decoder layer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = ("smollm2-135m", "gemma3-270m")


def fmt(v, digits=3):
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def layer_share(model_name: str) -> tuple[float, int]:
    import depthprune as dp
    from depthprune.arch.layout import layout
    from depthprune.arch.layout import parameter_count

    m = dp.load_model(model_name).model
    per_layer = sum(p.numel() for p in layout(m).layers(m)[0].parameters())
    return per_layer / parameter_count(m), parameter_count(m)


def heads_tables(root: Path) -> None:
    print("### Pattern statistics (Spearman rho; two disjoint calibration halves)\n")
    print("| model | scores | split-half rho | within-layer split-half rho | neighbour-layer rho | depth rho | "
          "between-layer share of variance |")
    print("|---|---|---|---|---|---|---|")
    for name in MODELS:
        path = root / f"heads-{name}" / "heads.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        for key, st in data["patterns"].items():
            print(f"| {name} | {key} | {fmt(st.get('split_half_spearman'))} | "
                  f"{fmt(st.get('split_half_within_layer_spearman'))} | {fmt(st.get('neighbour_layer_spearman'))} | "
                  f"{fmt(st.get('depth_spearman'))} | {fmt(st.get('between_layer_share'))} |")
    print()


def depth_vs_width(root: Path) -> None:
    """bench/depth_vs_width.py results: one table per model, rows sorted by the share of parameters removed."""
    sys.path.insert(0, str(Path(__file__).parent))
    from depth_vs_width import render

    for name in MODELS:
        path = root / f"depth-vs-width-{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        st = data["settings"]
        print(f"### Depth vs width, {name} (`bench/depth_vs_width.py`; heads scored by {st['select_by']} per "
              f"{st['unit']}, layers by BI, same {st['samples']} x {st['seq_len']} calibration tokens)\n")
        print(render(data))
        print()


def laco_vs_removal(root: Path) -> None:
    print("### Removal (BI one-shot) vs LaCo at equal layer counts (WikiText-2 PPL)\n")
    print("| model | layers removed | BI one-shot | LaCo (T=0.5) | LaCo (T=-1, no similarity check) | "
          "LaCo T=0.5: merged away (0-based) | LaCo T=-1: merged away |")
    print("|---|---|---|---|---|---|---|")
    notes: list[str] = []
    for name in MODELS:
        sweep = root / f"sweep-{name}" / "sweep.json"
        if not sweep.exists():
            continue
        s = json.loads(sweep.read_text())
        by = {(p["strategy"], p["n_removed"]): p for p in s["points"]}
        free_path = root / f"sweep-laco-t-{name}" / "sweep.json"
        free = json.loads(free_path.read_text()) if free_path.exists() else {"points": []}
        by_free = {p["n_removed"]: p for p in free["points"] if p["strategy"] == "laco"}
        for n in s["counts"]:
            a, b, c = by.get(("one-shot", n)), by.get(("laco", n)), by_free.get(n)
            print(f"| {name} | {n} | {fmt(a and a['ppl'], 2)} | {fmt(b and b['ppl'], 2) if b else 'not reached'} | "
                  f"{fmt(c and c['ppl'], 2)} | {b['removed_layers'] if b else '-'} | {c['removed_layers'] if c else '-'} |")
        notes += [f"{name}, LaCo with T=0.5: {why}" for why in s.get("skipped", []) if "laco" in why]
        for tag, label in (("laco-h", "H=25, T=0.5"), ("laco-ht", "H=25, T=-1")):
            extra = root / f"sweep-{tag}-{name}" / "sweep.json"
            if extra.exists():
                e = json.loads(extra.read_text())
                pts = ", ".join(f"{p['n_removed']} layers {fmt(p['ppl'], 2)} (merged away {p['removed_layers']})"
                                for p in e["points"]) or "no point"
                notes.append(f"{name}, LaCo with {label} (H = 25: no merge based above layer 25): {pts}"
                             + "".join(f"; {why}" for why in e.get("skipped", [])))
    print()
    for note in notes:
        print(f"- {note}")
    print()


def accuracy(root: Path) -> None:
    from depthprune.pipeline.sweep import sudden_drops

    for folder in sorted([*root.glob("sweep-*"), *root.glob("tasks-*")]):
        if not (folder / "sweep.json").exists():
            continue
        data = json.loads((folder / "sweep.json").read_text())
        if not data.get("dense_tasks"):
            continue
        limit = (data.get("task_settings") or {}).get("limit")
        for task, dense in data["dense_tasks"].items():
            print(f"### {task} accuracy vs layers removed ({folder.name}, lm-eval limit {limit})\n")
            print("| strategy | " + " | ".join(f"-{n}" for n in [0] + data["counts"]) + " | sudden drops at |")
            print("|---|" + "---|" * (len(data["counts"]) + 2))
            lines: dict = {}
            for p in data["points"]:
                if p.get("tasks") and task in p["tasks"]:
                    t = p["tasks"][task]
                    lines.setdefault(f"{p['metric']}/{p['strategy']}",
                                     [(0, dense["acc"], dense.get("acc_stderr"))]).append(
                        (p["n_removed"], t["acc"], t.get("acc_stderr")))
            for key, pts in lines.items():
                cells = [f"{a:.3f} ± {s:.3f}" if s else f"{a:.3f}" for _, a, s in pts]
                print(f"| {key} | " + " | ".join(cells) + f" | {sudden_drops(pts) or 'none'} |")
            print()


def main(argv: list[str]) -> None:
    root = Path(argv[1] if len(argv) > 1 else "bench/results/paper-findings")
    heads_tables(root)
    depth_vs_width(root)
    laco_vs_removal(root)
    accuracy(root)


if __name__ == "__main__":
    main(sys.argv)
