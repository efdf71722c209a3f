"""The scale features as a user runs them: --offload layers, --scores on a checkpoint, torchrun with 2 processes."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tiny import tiny_checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")
TEXT = " ".join(f"Sentence number {i} talks about layers and pruning." for i in range(300))
CALIB = ["--samples", "4", "--seq-len", "32", "--batch-size", "2"]


def env():
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


class Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def run(*args):
    """The CLI in this process (main() as the console script calls it): exit code and stderr."""
    import contextlib
    import io

    from depthprune.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["-q", *map(str, args)])
        except SystemExit as exc:
            code = exc.code
    return Result(code, err.getvalue())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    model = tiny_checkpoint(root / "tiny", family="gemma3", num_layers=6)
    (root / "calib.txt").write_text(TEXT, encoding="utf-8")
    result = run("score", model, "--data", root / "calib.txt", *CALIB, "--out", root / "memory.json")
    assert result.returncode == 0, result.stderr
    return root, model, json.loads((root / "memory.json").read_text())


def test_streamed_score_equals_in_memory(work):
    root, model, memory = work
    result = run("score", model, "--data", root / "calib.txt", *CALIB, "--offload", "layers",
                 "--out", root / "streamed.json")
    assert result.returncode == 0, result.stderr
    streamed = json.loads((root / "streamed.json").read_text())
    torch.testing.assert_close(torch.tensor(streamed["scores"]), torch.tensor(memory["scores"]), atol=1e-6, rtol=0)
    assert streamed["scale"]["offload"] == "layers" and streamed["tokens"] == memory["tokens"]
    stream = streamed["scale"]["stream"]
    assert stream["layer_bytes_max"] < stream["weights_bytes"]
    # the default activation budget: a tenth of the weights (float32 here, as saved: the tensors' bytes on disk)
    on_disk = sum(t.numel() * t.element_size() for t in tensors(Path(model)).values())
    assert stream["weights_bytes"] == on_disk and stream["activation_budget_bytes"] == on_disk // 10


def torchrun(*args):
    """``torchrun --nproc_per_node 2 -m depthprune -q ARGS`` on gloo (CPU), as a user launches it."""
    launcher = shutil.which("torchrun") or pytest.skip("torchrun is not on PATH")
    return subprocess.run([launcher, "--standalone", "--nproc_per_node", "2", "--module", "depthprune", "-q",
                           *map(str, args)], capture_output=True, text=True, env=env(), timeout=300)


def test_torchrun_two_processes_equal_one(work):
    root, model, memory = work
    out = root / "dist.json"
    result = torchrun("score", model, "--data", root / "calib.txt", *CALIB, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    torch.testing.assert_close(torch.tensor(data["scores"]), torch.tensor(memory["scores"]), atol=1e-6, rtol=0)
    dist = data["scale"]["distributed"]
    assert dist["world_size"] == 2 and dist["backend"] == "gloo"
    assert dist["samples_per_rank"] == [2, 2] and dist["batches_per_rank"] == [1, 1]
    assert len(dist["tokens_per_rank"]) == 2 and all(t > 0 for t in dist["tokens_per_rank"])
    assert sum(dist["tokens_per_rank"]) == memory["tokens"] == data["tokens"]


# 5 samples in batches of 2 over 2 processes: divisible by neither, so rank 0 scores 3 samples (batches of 2 and 1)
# and rank 1 scores 2, while one process forms batches of 2, 2 and 1: different batches, the same token sums.
UNEVEN = ["--samples", "5", "--seq-len", "32", "--batch-size", "2"]


@pytest.mark.parametrize("metric, offload", [("bi", "none"), ("angular", "none"), ("angular-all", "layers"),
                                             ("relative-magnitude", "layers")])
def test_torchrun_uneven_samples_equal_one_process(work, metric, offload):
    root, model, _ = work
    one, two = root / f"one-{metric}.json", root / f"two-{metric}.json"
    result = run("score", model, "--data", root / "calib.txt", *UNEVEN, "--metric", metric, "--out", one)
    assert result.returncode == 0, result.stderr
    result = torchrun("score", model, "--data", root / "calib.txt", *UNEVEN, "--metric", metric,
                      "--offload", offload, "--out", two)
    assert result.returncode == 0, result.stderr[-3000:]
    single, data = json.loads(one.read_text()), json.loads(two.read_text())
    assert single["calibration"]["samples"] == data["calibration"]["samples"] == 5
    torch.testing.assert_close(torch.tensor(data["scores"]), torch.tensor(single["scores"]), rtol=1e-5, atol=1e-7)
    dist = data["scale"]["distributed"]
    assert dist["world_size"] == 2 and dist["sharding"] == "contiguous samples"
    assert dist["samples_per_rank"] == [3, 2] and dist["batches_per_rank"] == [2, 1]
    assert sum(dist["tokens_per_rank"]) == single["tokens"] == data["tokens"]
    assert all(t > 0 for t in dist["tokens_per_rank"])


def test_torchrun_fewer_samples_than_processes_refused(work, tmp_path):
    root, model, _ = work
    out = tmp_path / "few.json"
    result = torchrun("score", model, "--data", root / "calib.txt", "--samples", "1", "--seq-len", "32", "--out", out)
    assert result.returncode != 0
    assert "2 processes need at least 2 calibration samples (one per process) but the calibration set has 1: " \
           "use --samples 2 or more, or start fewer processes" in result.stderr, result.stderr[-3000:]
    # torchrun prints its own traceback for the failed child; none comes from depthprune's code
    frames = [line for line in result.stderr.splitlines() if line.strip().startswith("File ")]
    assert not [f for f in frames if "depthprune" in f], result.stderr[-3000:]
    assert not out.exists()


def tensors(directory):
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(load_file(path))
    return out


def test_prune_on_disk_equals_in_memory(work):
    root, model, memory = work
    a, b = root / "disk", root / "mem"
    assert run("prune", model, "--layers", "1,4", "--offload", "layers", "--out", a).returncode == 0
    result = run("prune", model, "--layers", "1,4", "--out", b)
    assert result.returncode == 0, result.stderr
    ta, tb = tensors(a), tensors(b)
    assert sorted(ta) == sorted(tb) and all(torch.equal(ta[k], tb[k]) for k in tb)
    assert json.loads((a / "config.json").read_text())["layer_types"] == \
        json.loads((b / "config.json").read_text())["layer_types"]
    report = json.loads((a / "depthprune.json").read_text())
    assert report["removed_layers"] == [1, 4] and report["num_layers_after"] == 4
    assert AutoModelForCausalLM.from_pretrained(a).config.num_hidden_layers == 4


def test_prune_on_disk_from_scores_and_streamed(work):
    root, model, memory = work
    lowest = sorted(sorted(range(len(memory["scores"])), key=lambda i: (memory["scores"][i], i))[:2])
    out = root / "from-scores"
    result = run("prune", model, "--scores", root / "memory.json", "--remove", 2, "--offload", "layers", "--out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "depthprune.json").read_text())["removed_layers"] == lowest
    out = root / "streamed-prune"
    result = run("prune", model, "--data", root / "calib.txt", *CALIB, "--remove", 2, "--offload", "layers",
                 "--out", out)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "depthprune.json").read_text())
    assert report["removed_layers"] == lowest
    torch.testing.assert_close(torch.tensor(report["scores"]), torch.tensor(memory["scores"]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("args, fragment", [
    (["--layers", "1", "--offload", "layers", "--eval-ppl", "builtin:heldout"], "needs the whole model"),
    (["--remove", "1", "--offload", "sideways"], "unknown offload mode"),
    (["--remove", "1", "--offload", "layers", "--strategy", "greedy-ppl"], "one-shot"),
])
def test_offload_user_errors(work, tmp_path, args, fragment):
    root, model, _ = work
    result = run("prune", model, *args, "--data", root / "calib.txt", *CALIB, "--out", tmp_path / "o")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert fragment in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("family, layers", [("gemma3", "2,3"), ("llama", "1,3,4")])
def test_streamed_linear_repair_equals_in_memory(work, tmp_path, family, layers):
    """Linear repair fitted from layer-streamed activations and folded on disk writes the tensors the in-memory
    repair writes; only the folded projections differ from the plain cut."""
    root, _, _ = work
    model = tiny_checkpoint(tmp_path / "tiny", family=family, num_layers=6)
    common = ["--layers", layers, "--repair", "linear", "--data", root / "calib.txt", *CALIB]
    streamed, memory, plain = tmp_path / "streamed", tmp_path / "memory", tmp_path / "plain"
    result = run("prune", model, *common, "--offload", "layers", "--activation-budget-mb", 1, "--out", streamed)
    assert result.returncode == 0, result.stderr
    result = run("prune", model, *common, "--out", memory)
    assert result.returncode == 0, result.stderr
    assert run("prune", model, "--layers", layers, "--out", plain).returncode == 0
    ts, tm, tp = tensors(streamed), tensors(memory), tensors(plain)
    assert sorted(ts) == sorted(tm)
    for key in tm:
        torch.testing.assert_close(ts[key], tm[key], atol=1e-6, rtol=1e-6, msg=key)
    record = json.loads((streamed / "depthprune.json").read_text())
    assert record["executor"] == "layer-streamed"
    folded = {k for k in tp if not torch.equal(ts[k], tp[k])}
    runs = len(record["repair"]["linear"]["runs"])
    assert folded and len(folded) == runs, folded  # one projection (or norm scale) per removed run
    assert record["readback"]["tensors_written_from_values"] == len(record["repair"]["streamed"]["folded_tensors"])
    mem_record = json.loads((memory / "depthprune.json").read_text())
    for a, b in zip(record["repair"]["linear"]["runs"], mem_record["repair"]["linear"]["runs"]):
        assert a["removed"] == b["removed"] and a["ridge"] == b["ridge"]
        assert a["mse_lstsq"] == pytest.approx(b["mse_lstsq"], rel=1e-6)


def test_streamed_linear_repair_refused_before_loading_when_the_fold_target_is_not_stored(work, tmp_path):
    """Fused MoE expert tensors are built from per-expert ones on load: a streamed repair has no stored tensor to
    write its fold into, which the plan says before anything is read or scored."""
    root, _, _ = work
    model = tiny_checkpoint(tmp_path / "moe", family="mixtral", num_layers=4)
    result = run("prune", model, "--layers", "2", "--repair", "linear", "--offload", "layers",
                 "--data", root / "calib.txt", *CALIB, "--out", tmp_path / "o")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "stores under other names" in result.stderr and "--offload layers" in result.stderr
    assert not (tmp_path / "o").exists()


def test_streamed_score_through_the_python_api_keeps_the_result_in_memory(work):
    """``depthprune.score(..., offload="layers")`` streams without an output path: scores are a result, not a file."""
    import depthprune as dp

    root, model, memory = work
    report = dp.score(model, data=str(root / "calib.txt"), samples=4, seq_len=32, batch_size=2, offload="layers",
                      progress=False)
    assert report.scale["offload"] == "layers"
    torch.testing.assert_close(torch.tensor(report.scores), torch.tensor(memory["scores"]), atol=1e-6, rtol=0)
