"""The sweep end to end through the CLI (a subprocess), plus CLI errors for bad metric/strategy use."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "depthprune", "--quiet", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", family="llama", num_layers=6)


def test_sweep_cli_writes_csv_json_and_plots(checkpoint, tmp_path):
    out = tmp_path / "sweep"
    proc = run_cli("sweep", checkpoint, "--metrics", "bi,angular,ppl,reverse-order",
                   "--strategies", "one-shot,block,greedy-ppl", "--max-remove", "3", "--ppl", "builtin:heldout",
                   "--data", "builtin", "--samples", "4", "--seq-len", "32", "--ppl-seq-len", "32",
                   "--ppl-max-tokens", "128", "--out", str(out))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["angular_heatmap.png", "sweep.csv", "sweep.json", "sweep.png"]
    for png in ("sweep.png", "angular_heatmap.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    # dense + (4 one-shot + 2 block (bi, angular) + 1 greedy) pairs x 3 counts
    assert rows[0]["metric"] == "dense" and len(rows) == 1 + 7 * 3
    data = json.loads((out / "sweep.json").read_text())
    assert data["num_layers"] == 6 and data["counts"] == [1, 2, 3]
    assert data["indexing"].startswith("0-based")
    assert set(data["angular_blocks"]) == {str(n) for n in range(1, 7)}
    assert any(s.startswith("ppl/block") for s in data["skipped"])
    for p in data["points"]:
        assert len(p["removed_layers"]) == p["n_removed"] and all(0 <= i < 6 for i in p["removed_layers"])
        if p["strategy"] == "block":
            assert p["removed_layers"] == list(range(p["removed_layers"][0], p["removed_layers"][0] + p["n_removed"]))
    rev = [p for p in data["points"] if p["metric"] == "reverse-order"]
    assert [p["removed_layers"] for p in rev] == [[5], [4, 5], [3, 4, 5]]
    # greedy points are nested and the CSV agrees with the JSON
    greedy = [p for p in data["points"] if p["strategy"] == "greedy-ppl"]
    assert set(greedy[0]["removed_layers"]) <= set(greedy[1]["removed_layers"]) <= set(greedy[2]["removed_layers"])
    csv_ppl = {(r["metric"], r["strategy"], int(r["n_removed"])): float(r["ppl"]) for r in rows[1:]}
    for p in data["points"]:
        assert csv_ppl[(p["metric"], p["strategy"], p["n_removed"])] == pytest.approx(p["ppl"], rel=1e-5)


def main_in_process(*args) -> int:
    """The CLI entry point in this process (fast); returns its exit code."""
    from depthprune.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--quiet", *args])
    return exc.value.code


@pytest.mark.parametrize("args,message", [
    (("prune", "no-such-model", "--remove", "1", "--metric", "taylor", "--strategy", "block"), "strategy 'block' needs"),
    (("prune", "no-such-model", "--remove", "1", "--strategy", "greedy-ppl", "--metric", "bi"), "greedy-ppl' ranks"),
    (("score", "no-such-model", "--metric", "angular", "--strategy", "block"), "give both --strategy and --remove"),
    (("sweep", "no-such-model", "--metrics", "bi,nope", "--max-remove", "2", "--ppl", "builtin:heldout"),
     "unknown metric 'nope'"),
    (("sweep", "no-such-model", "--metrics", "bi", "--strategies", "block,zigzag", "--max-remove", "2",
      "--ppl", "builtin:heldout"), "unknown strategy 'zigzag'"),
])
def test_cli_rejects_bad_combinations_before_loading(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main_in_process(*args, "--out", str(out)) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert not out.exists()


def test_prune_cli_with_strategy(checkpoint, tmp_path):
    out = tmp_path / "pruned"
    code = main_in_process("prune", checkpoint, "--remove", "2", "--strategy", "iterative", "--metric", "angular",
                           "--data", "builtin", "--samples", "4", "--seq-len", "32", "--out", str(out))
    assert code == 0
    report = json.loads((out / "depthprune.json").read_text())
    assert report["strategy"] == "iterative" and report["metric"] == "angular"
    assert len(report["removed_layers"]) == 2 and len(report["selection"]["order"]) == 2
