"""Hostile and broken inputs: no foreign code runs, no data is lost, every refusal is one sentence.

Most cases call the CLI's ``main()`` in-process (a subprocess costs seconds of imports each); the
cases that need a real process (stdin, signals, a clean environment) run the CLI as a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers as tf

from tiny import tiny_checkpoint, tiny_tokenizer

import depthprune

SRC = Path(depthprune.__file__).resolve().parents[1]  # subprocesses run the same depthprune as this process
TEXT = " ".join(f"Sentence number {i} talks about layers and pruning." for i in range(300))
CALIB = ["--samples", "4", "--seq-len", "32", "--batch-size", "2"]


# --------------------------------------------------------------------------- helpers

def cli(capsys, *args):
    """Run ``depthprune -q ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from depthprune.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["-q", *map(str, args)])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def refused(result, *fragments):
    """Exit 2, no traceback, one line starting with 'error:', naming each fragment."""
    code, _, err = result
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("WARNING", "W1", "Failed"))]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


def subprocess_env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), **extra}


def run_cli(*args, stdin: str | None = None, env: dict | None = None, cwd=None, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "depthprune", "-q", *map(str, args)], input=stdin,
                          capture_output=True, text=True, env=env or subprocess_env(), cwd=cwd, timeout=timeout)


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    model = Path(tiny_checkpoint(root / "tiny", num_layers=4))
    (root / "calib.txt").write_text(TEXT, encoding="utf-8")
    return root, model


def clone(model: Path, dest: Path) -> Path:
    shutil.copytree(model, dest)
    return dest


# --------------------------------------------------------------------------- security: remote code, pickles

EVIL = '''
import pathlib
pathlib.Path({marker!r}).write_text("foreign code ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


class EvilConfig(LlamaConfig):
    pass


class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
'''


def remote_code_model(model: Path, dest: Path, marker: Path, where: str = "config.json") -> Path:
    clone(model, dest)
    (dest / "evil.py").write_text(EVIL.format(marker=str(marker)), encoding="utf-8")
    path = dest / where
    data = json.loads(path.read_text())
    data["auto_map"] = ({"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
                        if where == "config.json" else {"AutoTokenizer": [None, "evil.EvilTokenizer"]})
    path.write_text(json.dumps(data))
    return dest


def test_remote_code_never_runs_even_with_yes_on_stdin(work):
    root, model = work
    marker = root / "PWNED"
    evil = remote_code_model(model, root / "evil-model", marker)
    result = run_cli("score", evil, "--data", root / "calib.txt", *CALIB, "--out", root / "evil.json", stdin="y\n" * 5)
    assert not marker.exists(), "code from the model directory ran"
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--trust-remote-code" in errors[0] and "auto_map" in errors[0], result.stderr
    assert "[y/N]" not in result.stdout + result.stderr
    assert not (root / "evil.json").exists()


def test_remote_code_in_tokenizer_config_refused_and_flag_is_plumbed(work, capsys):
    from depthprune.errors import DepthpruneError
    from depthprune.io.models import load_model

    root, model = work
    marker = root / "PWNED-tok"
    evil = remote_code_model(model, root / "evil-tok", marker, where="tokenizer_config.json")
    line = refused(cli(capsys, "prune", evil, "--remove", 1, "--data", root / "calib.txt", *CALIB,
                       "--out", root / "evil-out"), "--trust-remote-code")
    assert "tokenizer_config.json" in line
    assert not marker.exists()
    # the API refuses too, and the flag really reaches transformers: with it, the model's code is imported
    marker2 = root / "PWNED-api"
    evil2 = remote_code_model(model, root / "evil-api", marker2)
    with pytest.raises(DepthpruneError, match="trust-remote-code"):
        load_model(str(evil2))
    assert not marker2.exists()
    try:
        load_model(str(evil2), trust_remote_code=True)
    except Exception:  # noqa: BLE001 - only whether the code was allowed to run matters here
        pass
    assert marker2.exists(), "--trust-remote-code did not reach transformers"


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickles_load_weights_only_and_broken_weights_are_one_sentence(work, capsys):
    root, model = work
    marker = root / "PWNED-pickle"
    bad = clone(model, root / "pickled")
    (bad / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": _Evil(str(marker))}, bad / "pytorch_model.bin")
    refused(cli(capsys, "score", bad, "--out", root / "p.json"), "pytorch_model.bin")
    assert not marker.exists()

    (bad / "pytorch_model.bin").write_bytes(os.urandom(4096))  # a corrupt pickle
    refused(cli(capsys, "score", bad, "--out", root / "p.json"), "pytorch_model.bin")

    trunc = clone(model, root / "truncated")
    weights = trunc / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    refused(cli(capsys, "score", trunc, "--out", root / "t.json"), "model.safetensors", "truncated")

    garbage = clone(model, root / "garbage-st")
    (garbage / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 64)
    refused(cli(capsys, "score", garbage, "--out", root / "g.json"), "model.safetensors")

    listcfg = clone(model, root / "list-config")
    (listcfg / "config.json").write_text("[1, 2, 3]")
    refused(cli(capsys, "score", listcfg, "--out", root / "l.json"), "config.json", "JSON object")

    badtok = clone(model, root / "bad-tokenizer")
    (badtok / "tokenizer.json").write_text('{"truncated": ')
    refused(cli(capsys, "score", badtok, "--out", root / "bt.json"), "tokenizer.json")

    badjson = clone(model, root / "bad-config")
    (badjson / "config.json").write_bytes(b"\xff\xfe{not json")
    refused(cli(capsys, "score", badjson, "--out", root / "b.json"), "config.json")


def test_encoder_models_are_refused(work, capsys):
    root, _ = work
    tok = tiny_tokenizer()
    config = tf.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=128)
    bert = root / "bert"
    tf.BertForMaskedLM(config).save_pretrained(bert)
    tok.save_pretrained(bert)
    refused(cli(capsys, "prune", bert, "--remove", 1, "--data", root / "calib.txt", *CALIB, "--out", root / "bert-out"),
            "encoder")
    assert not (root / "bert-out").exists()
    from depthprune.api import score
    from depthprune.errors import DepthpruneError

    with pytest.raises(DepthpruneError, match="encoder"):
        score(tf.BertLMHeadModel(config), tok, data="builtin", samples=2, seq_len=16)


# --------------------------------------------------------------------------- no data lost

def test_out_never_equals_contains_or_lies_inside_the_input(work, capsys, tmp_path):
    root, model = work
    before = digest(model)
    common = ["--remove", 1, "--data", root / "calib.txt", *CALIB, "--overwrite"]
    refused(cli(capsys, "prune", model, *common, "--out", model), "input")
    refused(cli(capsys, "prune", model, *common, "--out", model / "sub"), "inside")
    refused(cli(capsys, "prune", model, *common, "--out", root), "contains")
    link = tmp_path / "link-to-model"
    link.symlink_to(model, target_is_directory=True)
    refused(cli(capsys, "prune", link, *common, "--out", model), "input")
    refused(cli(capsys, "score", model, "--data", root / "calib.txt", *CALIB, "--overwrite",
                "--out", model / "config.json"), "input")
    refused(cli(capsys, "score", model, "--data", root / "calib.txt", *CALIB, "--overwrite",
                "--out", root / "calib.txt"), "input")
    refused(cli(capsys, "bench", model, "--seq-lens", "8", "--decode-tokens", 0, "--repeats", 1,
                "--json", model / "config.json"), "config.json")
    assert digest(model) == before
    assert sorted(p.name for p in model.iterdir()) == sorted(before)


def test_overwrite_replaces_only_depthprune_outputs_or_empty_dirs(work, capsys, tmp_path):
    root, model = work
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    common = ["--remove", 1, "--data", root / "calib.txt", *CALIB, "--overwrite"]
    refused(cli(capsys, "prune", model, *common, "--out", foreign), "not a previous depthprune output")
    assert (foreign / "holiday.jpg").read_bytes() == b"precious"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    refused(cli(capsys, "prune", model, *common, "--out", a_file), "not a directory")
    assert a_file.read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(capsys, "prune", model, *common, "--out", empty)
    assert code == 0, err
    assert (empty / "depthprune.json").is_file()
    code, _, err = cli(capsys, "prune", model, *common, "--out", empty)  # a previous output: replaced
    assert code == 0, err


def test_a_concurrent_run_that_wrote_out_first_wins(tmp_path):
    from depthprune.errors import DepthpruneError
    from depthprune.io.writer import OutputSpec, check_output, forget_all, transaction

    forget_all()
    out = tmp_path / "out"
    spec = OutputSpec("prune", out)
    check_output(spec, [])  # this run starts: out is absent
    with pytest.raises(DepthpruneError, match="appeared meanwhile"):
        with transaction(spec) as staging:
            staging.write_text("mine.txt", "this run")
            out.mkdir()  # another run finishes first
            (out / "depthprune.json").write_text("{}")
    assert (out / "depthprune.json").is_file() and not (out / "mine.txt").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))

    # both runs asked to --overwrite an old output: the second to finish must not replace the first's result
    forget_all()
    (out / "depthprune.json").write_text(json.dumps({"output": {"command": "prune"}}))
    spec = OutputSpec("prune", out, overwrite=True)
    check_output(spec, [])
    with pytest.raises(DepthpruneError, match="appeared meanwhile"):
        with transaction(spec) as staging:
            staging.write_text("mine.txt", "this run")
            shutil.rmtree(out)
            out.mkdir()
            (out / "depthprune.json").write_text('{"winner": true}')
    assert json.loads((out / "depthprune.json").read_text()) == {"winner": True}

    # files: no-clobber rename
    forget_all()
    target = tmp_path / "scores.json"
    spec = OutputSpec("score", target, kind="files", files=(target,))
    check_output(spec, [])
    with pytest.raises(DepthpruneError, match="appeared meanwhile"):
        with transaction(spec) as staging:
            target.write_text("other run")
            staging.write_record({"a": 1})
    assert target.read_text() == "other run"
    forget_all()  # a fresh run
    with pytest.raises(DepthpruneError, match="already exists"):
        check_output(OutputSpec("score", target, kind="files", files=(target,)), [])


def test_score_out_png_does_not_clobber_its_json_and_plots_need_overwrite(work, capsys, tmp_path):
    root, model = work
    refused(cli(capsys, "score", model, "--data", root / "calib.txt", *CALIB, "--out", tmp_path / "x.png"), ".json")
    assert not (tmp_path / "x.png").exists()
    (tmp_path / "s.png").write_bytes(b"my own picture")
    refused(cli(capsys, "score", model, "--data", root / "calib.txt", *CALIB, "--out", tmp_path / "s.json"),
            "s.png", "--overwrite")
    assert (tmp_path / "s.png").read_bytes() == b"my own picture"
    assert not (tmp_path / "s.json").exists()


HANG = r'''
import sys, time
from pathlib import Path
from depthprune import cli
from depthprune.io.writer import OutputSpec, transaction

@cli.app.command("hang")
def hang(out: Path):
    with transaction(OutputSpec("prune", out)) as staging:
        staging.write_text("partial.bin", "x" * 1000)
        print("ready", flush=True)
        time.sleep(120)

cli.main(sys.argv[1:])
'''


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupts_exit_cleanly_and_remove_the_temporary_output(tmp_path, signum, code):
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), "hang", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert list(tmp_path.glob(".out.tmp-*")), "the run should be writing a temporary sibling"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] or "terminated" in lines[0], err
    assert not list(tmp_path.glob(".out.tmp-*")) and not out.exists()


def test_stale_temporary_siblings_of_killed_runs_are_removed(tmp_path, caplog):
    from depthprune.io.writer import OutputSpec, check_output

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.tmp-{dead.pid}-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half written")
    stale_file = tmp_path / f".out.tmp-{dead.pid}-zz.json"
    stale_file.write_text("{")
    alive = tmp_path / f".out.tmp-{os.getppid()}-keep"  # a live process's sibling stays
    alive.mkdir()
    other = tmp_path / f".other.tmp-{dead.pid}-abc"  # another output's sibling stays
    other.mkdir()
    past = time.time() - 3600
    for p in (stale, stale_file, alive, other):
        os.utime(p, (past, past))
    with caplog.at_level(logging.WARNING):
        check_output(OutputSpec("prune", tmp_path / "out"), [])
    assert not stale.exists() and not stale_file.exists()
    assert alive.exists() and other.exists()
    assert stale.name in caplog.text


def test_unwritable_output_location_fails_before_model_work(work, capsys, tmp_path):
    root, model = work
    (tmp_path / "afile").write_text("in the way")
    refused(cli(capsys, "prune", model, "--remove", 1, "--data", root / "calib.txt", *CALIB,
                "--out", tmp_path / "afile" / "sub" / "out"), "afile")
    refused(cli(capsys, "score", model, "--data", root / "calib.txt", *CALIB,
                "--out", tmp_path / "afile" / "deeper" / "s.json"), "afile")
    refused(cli(capsys, "sweep", model, "--ppl", "builtin:heldout", "--max-remove", 1,
                "--out", "/proc/depthprune-cannot-write/x"), "/proc/depthprune-cannot-write")


# --------------------------------------------------------------------------- one sentence, exit 2

def test_broken_data_files_are_one_sentence(work, capsys, tmp_path):
    root, model = work
    bad_utf8 = tmp_path / "bad.jsonl"
    bad_utf8.write_bytes(b'{"text": "fine"}\n{"text": "\xff\xfe broken"}\n')
    refused(cli(capsys, "score", model, "--data", bad_utf8, *CALIB, "--out", tmp_path / "a.json"),
            "bad.jsonl", "UTF-8")
    fake = tmp_path / "fake.parquet"
    fake.write_text("this is not parquet")
    refused(cli(capsys, "score", model, "--data", fake, *CALIB, "--out", tmp_path / "b.json"), "fake.parquet")
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"text": 5}\n')
    refused(cli(capsys, "score", model, "--data", numbers, *CALIB, "--out", tmp_path / "c.json"),
            "numbers.jsonl:1", "int")
    refused(cli(capsys, "eval", model, "--ppl", bad_utf8, "--seq-len", 16), "bad.jsonl")


def test_bad_numbers_and_devices_are_one_sentence(work, capsys, tmp_path):
    root, model = work
    data = ["--data", root / "calib.txt", "--samples", 4, "--seq-len", 32]
    refused(cli(capsys, "score", model, *data, "--batch-size", 0, "--out", tmp_path / "a.json"), "--batch-size")
    refused(cli(capsys, "prune", model, "--remove", 1, "--data", "self", "--samples", 2, "--seq-len", 8,
                "--batch-size", 0, "--out", tmp_path / "b"), "--batch-size")
    refused(cli(capsys, "sweep", model, "--ppl", "builtin:heldout", "--max-remove", 1, "--data", "self",
                "--batch-size", 0, "--out", tmp_path / "c"), "--batch-size")
    refused(cli(capsys, "eval", model, "--ppl", "builtin:heldout", "--batch-size", 0), "--batch-size")
    for seed in (-1, 2**64):
        refused(cli(capsys, "score", model, *data, "--seed", seed, "--out", tmp_path / "d.json"), "--seed")
    for device in ("mps", "xpu", "xpu:0"):
        refused(cli(capsys, "score", model, *data, "--device", device, "--out", tmp_path / "e.json"), device)
    assert not list(tmp_path.iterdir())


def test_seq_len_beyond_positions_refused_for_learned_warned_for_rotary(capsys, tmp_path, caplog):
    gpt2 = Path(tiny_checkpoint(tmp_path / "gpt2", family="gpt2", num_layers=3))  # 256 learned positions
    (tmp_path / "calib.txt").write_text(TEXT * 8)
    data = ["--data", tmp_path / "calib.txt", "--samples", 2, "--batch-size", 2]
    refused(cli(capsys, "score", gpt2, *data, "--seq-len", 300, "--out", tmp_path / "g.json"), "300", "256")
    refused(cli(capsys, "eval", gpt2, "--ppl", tmp_path / "calib.txt", "--seq-len", 400), "400")
    llama = Path(tiny_checkpoint(tmp_path / "llama", num_layers=3))  # rotary, trained on 256
    with caplog.at_level(logging.WARNING):
        code, _, err = cli(capsys, "score", llama, *data, "--seq-len", 300, "--out", tmp_path / "l.json")
    assert code == 0, err
    assert "300" in caplog.text and "256" in caplog.text


def test_markup_in_user_strings_is_printed_literally(work, capsys, tmp_path):
    root, model = work
    weird = tmp_path / "a[red]b[/]c"  # note: "[/]c" is a sub-directory "]c" of "a[red]b["
    weird.mkdir(parents=True)
    shutil.copy(root / "calib.txt", weird / "calib[bold].txt")
    line = refused(cli(capsys, "score", model, "--data", weird / "missing[/].txt", *CALIB, "--out", weird / "s.json"))
    assert f"{weird}/missing[/].txt" in line
    out = weird / "scores[/b].json"
    code, stdout, err = cli(capsys, "score", model, "--data", weird / "calib[bold].txt", *CALIB, "--out", out)
    assert code == 0, err
    assert str(out) in stdout
    assert json.loads(out.read_text())["num_layers"] == 4


def test_report_on_inconsistent_directory_is_one_sentence(work, capsys, tmp_path):
    root, model = work
    out = tmp_path / "pruned"
    code, _, err = cli(capsys, "prune", model, "--remove", 1, "--data", root / "calib.txt", *CALIB, "--out", out)
    assert code == 0, err
    meta = json.loads((out / "depthprune.json").read_text())
    bad = dict(meta, removed_layers=[99], kept_layers=[0, 1, 2])
    (out / "depthprune.json").write_text(json.dumps(bad))
    refused(cli(capsys, "report", out, "--out", tmp_path / "r"), "depthprune.json")
    (out / "depthprune.json").write_text(json.dumps(meta))
    (out / "bench.json").write_text('{"labels": 3, "baseline": [], "ratios": {"workloads": 1}}')
    refused(cli(capsys, "report", out, "--out", tmp_path / "r"), "bench.json")
    (out / "bench.json").write_text("[1, 2]")
    refused(cli(capsys, "report", out, "--out", tmp_path / "r"), "bench.json")
    (out / "bench.json").unlink()
    (out / "depthprune.json").write_text(json.dumps(dict(meta, scores="not a list")))
    refused(cli(capsys, "report", out, "--out", tmp_path / "r"), "depthprune.json")


def test_eval_tasks_offline_or_unknown_are_refused_before_loading(work, capsys, monkeypatch):
    root, model = work
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    refused(cli(capsys, "eval", model, "--tasks", "hellaswag"), "--data-dir")
    refused(cli(capsys, "eval", model, "--tasks", "no_such_task_xyz"), "unknown task 'no_such_task_xyz'")


def test_hub_without_network_is_one_sentence(work, tmp_path):
    root, model = work
    env = {k: v for k, v in subprocess_env().items() if not k.endswith("_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf-home"))
    result = run_cli("score", model, "--data", "hf:someone/some-dataset", *CALIB, "--out", tmp_path / "s.json",
                     env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "torchao" not in line
             and not line.startswith(("W1", "Failed"))]
    assert len(lines) == 1 and "cannot be reached" in lines[0] and "HF_HUB_OFFLINE" in lines[0], result.stderr
    # tasks have a way round the Hub: the sentence names it
    result = run_cli("eval", model, "--tasks", "arc_easy", env=env, timeout=300)
    assert result.returncode == 2 and "cannot be reached" in result.stderr, result.stderr
    assert "--data-dir DIR" in result.stderr and "tests/fixtures/data" in result.stderr, result.stderr


# --------------------------------------------------------------------------- data: nulls, memory, 'self'

def test_null_texts_are_skipped_and_counted(work, capsys, tmp_path, caplog):
    from depthprune.io import data

    rows = [{"text": None}, {"text": None}, {"text": TEXT}, {"text": "short one"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with caplog.at_level(logging.WARNING):
        texts = list(data.iter_texts(str(path)))
    assert texts == [TEXT, "short one"]
    assert "skipped 2" in caplog.text
    _, model = work
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        code, _, err = cli(capsys, "score", model, "--data", path, *CALIB, "--out", tmp_path / "s.json")
    assert code == 0, err
    assert "skipped 2" in caplog.text


def test_null_parquet_values_are_skipped_and_counted(tmp_path, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from depthprune.io import data

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": [None, "first", None, "second"]}), path)
    with caplog.at_level(logging.WARNING):
        assert list(data.iter_texts(str(path))) == ["first", "second"]
    assert "skipped 2" in caplog.text


class CountingTokenizer:
    """Wraps a tokenizer and records the longest text it was asked to tokenize at once."""

    def __init__(self, inner):
        self.inner = inner
        self.longest = 0
        self.total = 0

    def __call__(self, text, **kwargs):
        self.longest = max(self.longest, len(text))
        self.total += len(text)
        return self.inner(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_huge_single_line_is_read_and_tokenized_in_bounded_pieces(tmp_path):
    from depthprune.io import data

    big = tmp_path / "one-line.txt"
    word = "pruning layers "
    big.write_text(word * (6_000_000 // len(word)))  # 6 MB, no newline
    tok = CountingTokenizer(tiny_tokenizer())
    calib = data.build_calibration(str(big), tok, samples=4, seq_len=64, seed=0)
    assert len(calib) == 4
    assert tok.longest <= data.READ_CHUNK_CHARS * 1.5
    assert tok.total < big.stat().st_size / 2, "reading must stop once enough tokens are gathered"


def test_split_text_keeps_every_character():
    from depthprune.io.data import split_text

    text = ("abc def\nghi " * 1000) + "x" * 5000
    pieces = list(split_text(text, size=700))
    assert "".join(pieces) == text
    assert max(len(p) for p in pieces) <= 700


def test_self_calibration_text_does_not_depend_on_batch_size():
    from depthprune.io.data import build_calibration
    from tiny import tiny_model

    tok = tiny_tokenizer()
    model = tiny_model("llama")
    sets = [build_calibration("self", tok, samples=5, seq_len=12, seed=3, model=model, batch_size=b, progress=False)
            for b in (1, 2, 5)]
    for other in sets[1:]:
        assert torch.equal(sets[0].input_ids, other.input_ids)
        assert torch.equal(sets[0].attention_mask, other.attention_mask)


def test_task_context_longer_than_the_model_is_one_sentence(capsys, tmp_path):
    from conftest import TASK_DATA

    tok = tiny_tokenizer()
    config = tf.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=8, **{
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
    short = tmp_path / "short-context"
    tf.GPT2LMHeadModel(config).save_pretrained(short)
    tok.save_pretrained(short)
    code, _, err = cli(capsys, "eval", short, "--tasks", "piqa", "--limit", 2, "--data-dir", TASK_DATA)
    errors = [line[line.index("error:"):] for line in err.splitlines() if "error:" in line]  # lm-eval's bars share stderr
    assert code == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and "context" in errors[0] and "8 positions" in errors[0], err
