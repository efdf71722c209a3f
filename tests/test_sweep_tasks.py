"""Sweep with lm-eval tasks and LaCo: every point gets the accuracy of ITS model (laco: the merged one),
CSV columns, the second plot panel, the sudden-drop rule."""

import csv

import pytest

import depthprune as dp
import depthprune.pipeline.sweep as evaluation  # the module that calls evaluate_tasks
from depthprune.selection.laco import merged_copy
from depthprune.pipeline.sweep import run_sweep, sudden_drops
from depthprune.reporting.plots import plot_sweep

from tiny import batch, tiny_model


def save_sweep(result, out):
    """The CSV and the plot, as the sweep's write stage renders them."""
    out.mkdir()
    (out / "sweep.csv").write_text(result.to_csv())
    plot_sweep(result, out / "sweep.png")
    return out


def test_sudden_drop_rule():
    # falls: 0.02 (too small), 0.10 with stderr 0.01 (drop), 0.05 with stderr 0.05 (inside noise)
    line = [(0, 0.60, 0.01), (2, 0.58, 0.01), (4, 0.48, 0.01), (6, 0.43, 0.05), (8, 0.43, None)]
    assert sudden_drops(line) == [4]
    assert sudden_drops(line, k=0.5, min_points=0.01) == [2, 4, 6]


def test_sweep_runs_tasks_on_every_point_including_laco(monkeypatch, tmp_path):
    model = tiny_model("llama")
    ids, mask = batch(n=4, pad_last=2)
    calib, windows = dp.from_tensors(ids, mask), dp.from_tensors(*batch(seed=1, n=2, pad_last=0))
    seen = []

    def fake_tasks(m, tokenizer, tasks, **options):
        # "accuracy" = a fingerprint of the model it was given: layer count and one merged weight
        w = float(m.model.layers[0].mlp.down_proj.weight.detach().sum())
        seen.append((m.config.num_hidden_layers, options))
        return {"tasks": {t: {"metrics": {"acc": m.config.num_hidden_layers / 10, "acc_stderr": 0.001, "w": w}}
                          for t in tasks}}

    monkeypatch.setattr(evaluation, "evaluate_tasks", fake_tasks)
    result = run_sweep(model, None, calib, windows, metrics=["bi"], strategies=["one-shot", "laco"], counts=[1, 2],
                       batch_size=2, progress=False, laco="C=2,L=0,T=-1", tasks=["hellaswag"],
                       task_options={"limit": 3})
    assert result.dense_tasks["hellaswag"]["acc"] == pytest.approx(0.4)
    assert {(p.strategy, p.n_removed): p.tasks["hellaswag"]["acc"] for p in result.points} == {
        ("one-shot", 1): 0.3, ("one-shot", 2): 0.2, ("laco", 1): 0.3, ("laco", 2): 0.2}
    laco2 = next(p for p in result.points if p.strategy == "laco" and p.n_removed == 2)
    from depthprune.selection.strategies import plan

    merges = plan(model, calib, [2], strategy="laco", batch_size=2, laco="C=2,L=0,T=-1", progress=False)[0][2]
    ref = merged_copy(model, merges.details["merges"])
    assert laco2.tasks["hellaswag"]["w"] == pytest.approx(float(ref.model.layers[0].mlp.down_proj.weight.detach().sum()))
    assert all(opts == {"limit": 3} for _, opts in seen)
    # one run per distinct model: dense + 2 removal sets + 2 laco merges
    assert len(seen) == 5
    assert result.drops()["hellaswag"]["bi/one-shot"] == [1, 2]
    out = save_sweep(result, tmp_path / "s")
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert rows[0]["hellaswag_acc"] == "0.4" and rows[-1]["hellaswag_acc"] == "0.2"
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_laco_that_stops_short_skips_those_counts_and_the_sweep_goes_on(tmp_path):
    """LaCo reaching its threshold before a count is recorded as skipped; the other strategies' points and LaCo's
    smaller counts are still measured (it used to abort the whole sweep)."""
    from depthprune.selection.laco import LacoSettings, laco

    model = tiny_model("llama")  # 4 layers
    calib = dp.from_tensors(*batch(n=4, pad_last=0))
    windows = dp.from_tensors(*batch(seed=1, n=2, pad_last=0))
    settings = "C=2,L=1,T=-1"  # on this model the search merges 1 layer, then reaches L
    assert len(laco(model, calib, 1, LacoSettings.parse(settings), progress=False).removed) == 1
    with pytest.raises(dp.DepthpruneError, match="merged away only"):
        laco(model, calib, 2, LacoSettings.parse(settings), progress=False)
    result = run_sweep(model, None, calib, windows, metrics=["bi"], strategies=["one-shot", "laco"],
                       counts=[1, 2, 3], batch_size=2, progress=False, laco=settings)
    got = sorted((p.strategy, p.n_removed) for p in result.points)
    assert got == [("laco", 1), ("one-shot", 1), ("one-shot", 2), ("one-shot", 3)]
    assert any(s.startswith("similarity/laco at 2, 3 layers: LaCo merged away only") for s in result.skipped), result.skipped
    save_sweep(result, tmp_path / "sweep")
    assert (tmp_path / "sweep" / "sweep.png").exists()
    # nothing measurable at all: one error naming why, not an empty table
    with pytest.raises(dp.DepthpruneError, match="no sweep point could be measured: similarity/laco at 2, 3 layers"):
        run_sweep(model, None, calib, windows, metrics=["bi"], strategies=["laco"], counts=[2, 3], batch_size=2,
                  progress=False, laco=settings)
