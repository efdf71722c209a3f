"""The CLI as a user runs it: a subprocess, the happy path and every bad input."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tiny import tiny_checkpoint, tiny_tokenizer

TEXT = " ".join(f"Sentence number {i} talks about layers and pruning." for i in range(300))
CALIB = ["--samples", "4", "--seq-len", "32", "--batch-size", "2"]


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "depthprune", "-q", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = tiny_checkpoint(root / "tiny", num_layers=6)
    (root / "calib.txt").write_text(TEXT, encoding="utf-8")
    return root, model


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    message = " ".join(lines)
    assert message.startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in message, result.stderr


def test_score_writes_json_and_plot(work):
    root, model = work
    out = root / "scores.json"
    result = run("score", model, "--data", root / "calib.txt", *CALIB, "--out", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["metric"] == "bi" and report["num_layers"] == 6 and len(report["scores"]) == 6
    assert report["removal_order"][0] == min(range(6), key=lambda i: report["scores"][i])
    assert report["calibration"]["samples"] == 4 and report["tokens"] == 4 * 32
    assert {"torch", "transformers", "depthprune"} <= set(report["versions"])
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "removal order" in result.stdout


def test_prune_happy_path_reloads_and_generates(work):
    root, model = work
    before = digest(Path(model))
    out = root / "pruned"
    result = run("prune", model, "--remove", 2, "--data", root / "calib.txt", *CALIB, "--eval-ppl",
                 "builtin:heldout", "--ppl-seq-len", "32", "--ppl-max-tokens", "200", "--out", out)
    assert result.returncode == 0, result.stderr
    assert digest(Path(model)) == before, "the input model must never be modified"
    meta = json.loads((out / "depthprune.json").read_text())
    scores = json.loads((root / "scores.json").read_text())["scores"] if (root / "scores.json").exists() else None
    assert meta["num_layers_before"] == 6 and meta["num_layers_after"] == 4
    assert meta["removed_layers"] == sorted(sorted(range(6), key=lambda i: (meta["scores"][i], i))[:2])
    if scores is not None:
        assert meta["scores"] == pytest.approx(scores)
    assert meta["params_after"] < meta["params_before"]
    assert {"dense", "pruned"} <= set(meta["perplexity"])
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md",
                 "layer_scores.png", "depthprune.json"):
        assert (out / name).is_file(), name
    assert "Removed layers (0-based, original numbering)" in (out / "README.md").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 4
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("layers and pruning", return_tensors="pt")
    generated = reloaded.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 5
    # the reloaded checkpoint equals the original with the removed layers dropped in memory
    import depthprune as dp
    original = AutoModelForCausalLM.from_pretrained(model)
    expected = dp.remove_layers(original, meta["removed_layers"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**ids).logits, expected(**ids).logits)
    assert not [p for p in root.iterdir() if p.name.startswith(".pruned")], "temp dirs left behind"


def test_output_parents_are_created(work, tmp_path):
    root, model = work
    out = tmp_path / "runs" / "new" / "pruned"
    result = run("prune", model, "--remove", 1, "--data", root / "calib.txt", *CALIB, "--out", out)
    assert result.returncode == 0, result.stderr
    assert (out / "depthprune.json").is_file()
    scores = tmp_path / "fresh" / "scores.json"
    result = run("score", model, "--data", root / "calib.txt", *CALIB, "--out", scores)
    assert result.returncode == 0, result.stderr
    assert scores.is_file() and scores.with_suffix(".png").is_file()


def test_eval_perplexity(work):
    root, model = work
    result = run("eval", model, "--ppl", root / "calib.txt", "--seq-len", 32, "--max-tokens", 100,
                 "--json", root / "ppl.json")
    assert result.returncode == 0, result.stderr
    data = json.loads((root / "ppl.json").read_text())
    assert data["ppl"] > 1 and data["tokens"] > 50


@pytest.mark.parametrize("case", [
    "missing-dir", "missing-gguf", "not-gguf", "unsupported", "remove-zero", "remove-all", "ratio-high",
    "ratio-zero", "empty-data", "short-data", "unknown-spec", "out-exists",
])
def test_bad_input_is_one_sentence_exit_2_and_leaves_nothing(work, case, tmp_path):
    root, model = work
    out = tmp_path / "out"
    data = ["--data", root / "calib.txt", *CALIB]
    args = {
        "missing-dir": (["./no/such/model", "--remove", 1, *data], ["does not exist"]),
        "missing-gguf": ([tmp_path / "absent.gguf", "--remove", 1, *data], ["does not exist"]),
        "not-gguf": ([tmp_path / "fake.gguf", "--remove", 1, *data], ["not a GGUF file"]),
        "unsupported": ([tmp_path / "t5", "--remove", 1, *data], ["unsupported architecture", "t5"]),
        "remove-zero": ([model, "--remove", 0, *data], ["--remove must be at least 1"]),
        "remove-all": ([model, "--remove", 6, *data], ["--remove must be between 1 and 5"]),
        "ratio-high": ([model, "--ratio", 1.5, *data], ["--ratio must be between 0 and 1"]),
        "ratio-zero": ([model, "--ratio", 0, *data], ["--ratio must be between 0 and 1"]),
        "empty-data": ([model, "--remove", 1, "--data", tmp_path / "empty.txt", *CALIB], ["too short"]),
        "short-data": ([model, "--remove", 1, "--data", tmp_path / "short.txt", *CALIB], ["too short"]),
        "unknown-spec": ([model, "--remove", 1, "--data", "pg19-please", *CALIB], ["unknown data spec"]),
        "out-exists": ([model, "--remove", 1, *data], ["already exists", "--overwrite"]),
    }[case]
    (tmp_path / "fake.gguf").write_text("not really a gguf")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("just a few words")
    if case == "unsupported":
        from transformers import T5Config, T5ForConditionalGeneration
        T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, num_layers=2, num_heads=2,
                                            vocab_size=len(tiny_tokenizer()))).save_pretrained(tmp_path / "t5")
        tiny_tokenizer().save_pretrained(tmp_path / "t5")
    if case == "out-exists":
        out.mkdir()
        (out / "keep.txt").write_text("precious")
    argv, fragments = args
    result = run("prune", *argv, "--out", out)
    assert_user_error(result, *fragments)
    if case == "out-exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_debug_flag_shows_the_traceback(work, tmp_path):
    root, model = work
    result = run("--debug", "prune", model, "--remove", 0, "--out", tmp_path / "x")
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_interrupted_save_leaves_no_directory(tmp_path):
    from depthprune.io.formats.hf import save_checkpoint
    from depthprune.io.writer import OutputSpec, transaction

    class Exploding:
        def parameters(self):
            return iter([torch.zeros(1)])

        def save_pretrained(self, path, **kwargs):
            (Path(path) / "model.safetensors").write_bytes(b"partial")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with transaction(OutputSpec("prune", tmp_path / "out")) as staging:
            save_checkpoint(Exploding(), None, staging.location, "float32")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_existing_output(work, tmp_path):
    root, model = work
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    # --overwrite replaces only a previous depthprune output (one written before records named their command)
    (out / "depthprune.json").write_text(json.dumps({"removed_layers": [1], "num_layers_before": 4}))
    result = run("prune", model, "--remove", 1, "--data", root / "calib.txt", *CALIB, "--out", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert not (out / "old.txt").exists() and (out / "depthprune.json").exists()


def test_block_strategy_prints_the_block_scores_it_chose_from(work, tmp_path):
    """Strategy block chooses among contiguous runs: it prints each run's score (not a per-layer rank table or a
    removal order), and the run it marks removed is the lowest-scoring one (no layer is protected here)."""
    root, model = work
    out = tmp_path / "block"
    result = run("prune", model, "--remove", "2", "--strategy", "block", "--data", root / "calib.txt", *CALIB,
                 "--out", out)
    assert result.returncode == 0, result.stderr
    assert "blocks of 2 layers" in result.stdout and "rank 0 = least important" not in result.stdout
    assert "removal order" not in result.stdout
    rows = [line.split("│") for line in result.stdout.splitlines() if line.startswith("│")]
    parsed = [(cells[1].strip(), float(cells[2]), "removed" in cells[4]) for cells in rows]
    assert len(parsed) == 5  # starts 0..4 of a 6-layer model
    chosen = [span for span, _, removed in parsed if removed]
    assert chosen == [min(parsed, key=lambda r: r[1])[0]]
    first, last = map(int, chosen[0].split("-"))
    assert json.loads((out / "depthprune.json").read_text())["removed_layers"] == [first, last]
