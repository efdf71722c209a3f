"""`depthprune report`: Markdown + self-contained HTML for a pruned tiny model, model card refresh, headless render."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from depthprune.reporting.card import model_card
from depthprune.reporting.report import load, read_evals
from test_speed import run_cli
from tiny import tiny_checkpoint

DENSE_EVAL = {  # the lm-eval bridge's shape (tasks.{task}.metrics) plus role
    "role": "dense", "model": "dense-model", "lm_eval_version": "0.4.9", "num_fewshot": 0, "limit": 50,
    "command": "python -c 'run_lm_eval(...)'",
    "tasks": {"arc_easy": {"metrics": {"acc": 0.612, "acc_stderr": 0.021, "acc_norm": 0.554,
                                       "acc_norm_stderr": 0.022}},
              "piqa": {"metrics": {"acc": 0.681, "acc_stderr": 0.011}}},
}
PRUNED_EVAL = {  # lm-eval's own results shape ("acc,none"), role from the file name
    "model": "pruned-model", "lm_eval_version": "0.4.9",
    "results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.521, "acc_stderr,none": 0.02,
                             "acc_norm,none": 0.493, "acc_norm_stderr,none": 0.02},
                "piqa": {"acc,none": 0.633, "acc_stderr,none": 0.012}},
}


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    dense = tiny_checkpoint(root / "dense", num_layers=6)
    out = root / "pruned"
    proc = run_cli("prune", dense, "--remove", "2", "--samples", "4", "--seq-len", "32", "--out", str(out),
                   "--eval-ppl", "builtin:heldout", "--ppl-seq-len", "32", "--ppl-max-tokens", "512",
                   "--bench", "--bench-seq-lens", "16,48", "--bench-decode-tokens", "4", "--bench-repeats", "2")
    assert proc.returncode == 0, proc.stderr
    (out / "eval").mkdir()
    (out / "eval" / "dense.json").write_text(json.dumps(DENSE_EVAL))
    (out / "eval" / "pruned-tasks.json").write_text(json.dumps(PRUNED_EVAL))
    before = sorted(p.name for p in out.rglob("*"))
    proc = run_cli("report", str(out), "--out", str(root / "report"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.rglob("*")) == before  # the output reported on is an input: not written
    return out


def write_report(directory: Path, out: Path | None = None) -> Path:
    """`depthprune report DIR --out OUT` (OUT: a new sibling folder); returns OUT."""
    out = out or directory.parent / f"{directory.name}-report"
    proc = run_cli("report", str(directory), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def report_dir(pruned_dir) -> Path:
    return pruned_dir.parent / "report"


def test_report_markdown_has_all_sections(pruned_dir, report_dir):
    md = (report_dir / "report.md").read_text()
    meta = json.loads((pruned_dir / "depthprune.json").read_text())
    removed = ", ".join(str(i) for i in meta["removed_layers"])
    assert f"Removed layers (0-based, original numbering): **{removed}**" in md
    for needle in ("## What was removed and why", "Block Influence", "![layer scores](layer_scores.png)",
                   "perplexity (builtin:heldout", "| arc_easy acc (%) | 61.2 ± 2.1 | 52.1 ± 2.0 | -9.1 pts |",
                   "| piqa acc (%) | 68.1 ± 1.1 | 63.3 ± 1.2 | -4.8 pts |", "arc_easy acc_norm",
                   "## Speed", "| prefill 16 tokens |", "| prefill 48 tokens |", "ideal (FLOPs)",
                   "![speed](report_speed.png)", "![quality](report_quality.png)", "## Reproduce",
                   meta["command"], "python -c 'run_lm_eval(...)'", "| prune: torch |", "| eval: lm-eval | 0.4.9 |",
                   "`dense.json` (dense)", "`pruned-tasks.json` (pruned)"):
        assert needle in md, needle
    assert meta["command"].startswith("depthprune -q prune ")
    for png in ("layer_scores.png", "report_quality.png", "report_speed.png"):
        assert (report_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_repeats_are_flagged_unreliable_not_plotted(pruned_dir, report_dir):
    md = (report_dir / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| prefill") or line.startswith("| decode")]
    assert len(rows) == 3 and all("unreliable: only 2 paired run(s)" in row for row in rows)


def test_report_html_is_self_contained(pruned_dir, report_dir):
    page = (report_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:)""", page), "external asset referenced"
    assert "<script" not in page and "<link" not in page and "url(" not in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "61.2 ± 2.1" in page and "ideal (FLOPs)" in page


def test_report_refreshes_model_card(pruned_dir, report_dir):
    card = (report_dir / "README.md").read_text()
    assert "| arc_easy acc (%) | 61.2 ± 2.1 | 52.1 ± 2.0 | -9.1 pts |" in card
    assert "## Speed" in card and "| prefill 48 tokens |" in card and "perplexity (builtin:heldout" in card
    assert card.startswith("---\nlibrary_name: transformers")
    # the report's quality table and the model card's are the same rows
    md = (report_dir / "report.md").read_text()
    rows = [line for line in card.splitlines() if line.startswith("| arc_easy") or line.startswith("| perplexity")]
    assert rows and all(row in md for row in rows)


def test_report_on_an_old_directory_without_command_bench_or_evals(pruned_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(pruned_dir, old)
    shutil.rmtree(old / "eval")
    (old / "bench.json").unlink()
    meta = json.loads((old / "depthprune.json").read_text())
    del meta["command"]  # written before the field existed
    (old / "depthprune.json").write_text(json.dumps(meta))
    rep = write_report(old)
    md = (rep / "report.md").read_text()
    assert "reconstructed from depthprune.json" in md and "depthprune prune " in md and "--remove 2" in md
    assert "No speed measurement yet" in md and "No task accuracy yet" in md
    assert "## Speed" not in (rep / "README.md").read_text()
    assert not (rep / "report_speed.png").exists()
    assert model_card(meta).startswith("---")


def test_eval_roles(tmp_path):
    prune = {"model": "base/model"}
    (tmp_path / "eval").mkdir()
    write = lambda name, data: (tmp_path / "eval" / name).write_text(json.dumps(data))  # noqa: E731
    write("a.json", {"model": "base/model", "results": {"piqa": {"acc,none": 0.7}}})
    write("b.json", {"model": str(tmp_path), "results": {"piqa": {"acc,none": 0.6}}})
    write("c.json", {"model": "who-knows", "results": {"piqa": {"acc,none": 0.5}}})
    write("d.json", {"role": "pruned", "results": {}})
    evals, files, _ = read_evals(tmp_path, prune)
    assert evals["dense"] == {"piqa": {"acc": 0.7}} and evals["pruned"] == {"piqa": {"acc": 0.6}}
    assert files["c.json"].startswith("ignored") and files["d.json"].startswith("ignored")


def test_report_user_errors(tmp_path):
    proc = run_cli("report", str(tmp_path), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "depthprune.json" in proc.stderr
    with pytest.raises(Exception, match="not a directory"):
        load(tmp_path / "missing")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_html_renders_in_headless_chromium(pruned_dir, tmp_path):
    import numpy as np
    from PIL import Image

    # The fixture's bench ran 2 repeats, so every measured ratio is flagged unreliable and drawn as n/a (that is
    # right, and checked below). Here the page must show measured bars whatever this machine's noise, so a copy's
    # ratios are marked reliable and the report is rendered again.
    page_dir = tmp_path / "pruned"
    shutil.copytree(pruned_dir, page_dir)
    bench = json.loads((page_dir / "bench.json").read_text())
    for r in bench["ratios"]["workloads"].values():
        r.update(noisy=False, reason=None)
    (page_dir / "bench.json").write_text(json.dumps(bench))
    page_dir = write_report(page_dir)
    shot = tmp_path / "report.png"
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,2400",
             (page_dir / "report.html").resolve().as_uri()],
            capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert shot.exists(), proc.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2400)
    pixels = np.asarray(image, dtype=np.int32).reshape(-1, 3)
    non_white = float((pixels.min(axis=1) < 235).mean())
    colours = len(np.unique(pixels, axis=0))
    assert non_white > 0.08, f"only {non_white:.1%} of the page is not white"
    assert colours > 200, f"only {colours} distinct colours"

    def near(target, tol=12):
        return int((np.abs(pixels - np.array(target)).max(axis=1) <= tol).sum())

    # the plots drew: red (removed / pruned), blue (kept / dense) and green (measured speedup) bars are on the
    # page. A page whose images fail to decode has only text in those colours (measured: ~60 red, ~2200 blue
    # pixels from the heading rule, 0 green; with the plots: ~70k red, ~130k blue, ~40k green).
    assert near((0xD6, 0x27, 0x28)) > 10_000, "no red bars: plots missing"
    assert near((0x1F, 0x77, 0xB4)) > 20_000, "no blue bars: plots missing"
    assert near((0x2C, 0xA0, 0x2C)) > 5_000, "no green bars: speed plot missing"


def test_a_missing_result_is_drawn_as_no_bar_labelled_dash_not_as_zero(tmp_path, monkeypatch):
    """The table prints "-" for a task the pruned model has no result for; the chart must agree."""
    import matplotlib.axes

    from depthprune.reporting.plots import plot_quality

    drawn = []
    original = matplotlib.axes.Axes.bar_label

    def capture(self, container, labels=None, **kwargs):
        drawn.append(([b.get_height() for b in container], list(labels or [])))
        return original(self, container, labels=labels, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar_label", capture)
    plot_quality((10.0, None), [("arc_easy", 0.5, None), ("piqa", None, 0.25)], tmp_path / "q.png")
    assert drawn[0] == ([10.0, 0.0], ["10.0", "-"])
    assert drawn[1] == ([50.0, 0.0], ["50.0", "-"])   # dense
    assert drawn[2] == ([0.0, 25.0], ["-", "25.0"])   # pruned
