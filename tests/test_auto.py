"""``prune --auto --budget``: it never validates on text it fitted on, it stays within its budget, and it hands back
a plain checkpoint whose recorded validation perplexity an independent computation reproduces."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
import transformers as tf

from test_hostile import TEXT, cli, refused
from tiny import tiny_checkpoint

from depthprune.io.data import build_calibration, special_prefix, token_stream
from depthprune.pipeline import auto

SAMPLES, SEQ_LEN = 16, 32


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    model = Path(tiny_checkpoint(root / "tiny", num_layers=8))
    (root / "calib.txt").write_text(TEXT, encoding="utf-8")
    (root / "eval.txt").write_text(" ".join(f"An unrelated line {i} about rivers." for i in range(200)),
                                   encoding="utf-8")
    return root, model


def _args(root, model, out, *extra):
    return ["prune", model, "--auto", "--remove", 2, "--data", root / "calib.txt", "--samples", SAMPLES,
            "--seq-len", SEQ_LEN, "--batch-size", 4, "--out", out, *extra]


def _rows(data) -> list[tuple[int, ...]]:
    return [tuple(ids[m.bool()].tolist()) for ids, m in zip(data.input_ids, data.attention_mask)]


def _positions(rows, stream: list[int], prefix: list[int]) -> list[range]:
    """Where each window's text lies in the token stream (independently of how the windows were cut)."""
    spans = []
    for row in rows:
        body = list(row[len(prefix):])
        starts = [i for i in range(len(stream) - len(body) + 1) if stream[i:i + len(body)] == body]
        assert starts, "a window is not a slice of the calibration text"
        spans.append(range(starts[0], starts[0] + len(body)))
    return spans


def test_auto_never_validates_on_text_it_fitted_on(work, capsys, tmp_path, monkeypatch):
    root, model = work
    fitted, validated = [], []
    originals = {name: getattr(auto, name) for name in ("collect_statistics", "lora_repair", "perplexity_on")}

    def collect(dense, calibration, *a, **k):
        fitted.extend(_rows(calibration))
        return originals["collect_statistics"](dense, calibration, *a, **k)

    def lora(model, train, *a, **k):
        fitted.extend(_rows(train))
        return originals["lora_repair"](model, train, *a, **k)

    def ppl(model, windows, *a, **k):
        validated.extend(_rows(windows))
        return originals["perplexity_on"](model, windows, *a, **k)

    monkeypatch.setattr(auto, "collect_statistics", collect)
    monkeypatch.setattr(auto, "lora_repair", lora)
    monkeypatch.setattr(auto, "perplexity_on", ppl)
    code, _, err = cli(capsys, *_args(root, model, tmp_path / "out", "--budget", "5m", "--eval-ppl",
                                      root / "eval.txt", "--ppl-seq-len", 32, "--ppl-max-tokens", 256))
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "depthprune.json").read_text())
    assert any(c["repair"].endswith("lora") and c["status"] == "measured" for c in record["search"]["candidates"])

    tokenizer = tf.AutoTokenizer.from_pretrained(model)
    calibration = build_calibration(str(root / "calib.txt"), tokenizer, samples=SAMPLES, seq_len=SEQ_LEN)
    all_rows = _rows(calibration)
    held = record["search"]["validation"]["windows"]
    assert held == 4 and set(validated) == set(all_rows[-held:])          # the last quarter, nothing else
    assert fitted and not set(fitted) & set(validated)
    assert set(fitted) <= set(all_rows[:-held])
    prefix = special_prefix(tokenizer)
    stream = token_stream(tokenizer, [TEXT], max_tokens=10**6)
    fit_spans = _positions(set(fitted), stream, prefix)
    for span in _positions(set(validated), stream, prefix):                # no token of a validation window was fitted
        assert all(not set(span) & set(other) for other in fit_spans)
    eval_ids = set(tokenizer((root / "eval.txt").read_text(), add_special_tokens=False)["input_ids"])
    assert record["perplexity"]["pruned"]["settings"]["source"].endswith("eval.txt")
    assert not any(set(row[len(prefix):]) <= eval_ids for row in validated)  # the evaluation text is not validated on


def test_auto_stays_within_its_budget_and_says_what_it_skipped(work, capsys, tmp_path, monkeypatch):
    root, model = work
    original = auto.perplexity_on

    def slow(*a, **k):  # every validation costs a second: the full search no longer fits 8 s
        time.sleep(1.0)
        return original(*a, **k)

    monkeypatch.setattr(auto, "perplexity_on", slow)
    started = time.perf_counter()
    code, _, err = cli(capsys, *_args(root, model, tmp_path / "out", "--budget", "8s"))
    wall = time.perf_counter() - started
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "depthprune.json").read_text())
    search = record["search"]
    assert wall <= 8.0 + 1.5, wall                      # planning and interpreter work outside the runner: 1.5 s
    assert sum(record["timings"].values()) <= 8.0, record["timings"]
    assert any(c["status"] == "over budget" for c in search["candidates"]), search["candidates"]
    measured = [c for c in search["candidates"] if c["status"] == "measured"]
    assert measured and all(c["finished_at"] <= 8.0 for c in measured)


def test_auto_returns_a_plain_checkpoint_and_an_honest_record(work, capsys, tmp_path):
    root, model = work
    out = tmp_path / "out"
    code, _, err = cli(capsys, *_args(root, model, out, "--budget", "5m"))
    assert code == 0, err
    record = json.loads((out / "depthprune.json").read_text())
    search = record["search"]
    chosen = search["candidates"][search["chosen"]]
    measured = [c for c in search["candidates"] if c["status"] == "measured"]
    assert chosen["val_ppl"] == min(c["val_ppl"] for c in measured)
    assert record["strategy"] == "auto" and record["removed_layers"] == sorted(chosen["removed"])
    named = {c["selection"] for c in measured} | {a for c in measured for a in c["details"].get("also", [])}
    assert named >= {"repair-aware block", "angular block", "bi one-shot"}
    assert {c["repair"] for c in measured} >= {"none", "linear", "cosine"}

    # plain: no adapter files or modules, fewer layers, reloads with plain transformers
    assert not list(out.glob("adapter*"))
    saved = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    assert saved.config.num_hidden_layers == 6
    assert not [n for n, _ in saved.named_parameters() if "lora" in n]

    # the recorded validation perplexity, recomputed by hand on the last windows of the calibration text
    tokenizer = tf.AutoTokenizer.from_pretrained(model)
    calibration = build_calibration(str(root / "calib.txt"), tokenizer, samples=SAMPLES, seq_len=SEQ_LEN)
    held = search["validation"]["windows"]
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in zip(calibration.input_ids[-held:], calibration.attention_mask[-held:]):
            ids = ids[mask.bool()].unsqueeze(0)
            logits = saved(input_ids=ids).logits[0, :-1].double()
            nll -= float(torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None]).sum())
            count += ids.shape[1] - 1
    assert math.isclose(math.exp(nll / count), chosen["val_ppl"], rel_tol=1e-3)
    assert search["validation"]["tokens"] == int(calibration.attention_mask[-held:].sum())

    assert (out / "search.png").stat().st_size > 10_000
    code, _, err = cli(capsys, "report", out, "--out", tmp_path / "report")
    assert code == 0, err
    report = (tmp_path / "report" / "report.md").read_text()
    assert "The search (`--auto`)" in report and "report_search.png" in report


@pytest.mark.parametrize("extra, fragment", [
    (["--layers", "1,2"], "--layers"), (["--strategy", "block"], "--strategy"), (["--metric", "angular"], "--metric"),
    (["--repair", "linear"], "--repair"), (["--repair-objective", "cosine"], "--repair-objective"),
    (["--data", "self"], "self"), (["--budget", "soon"], "--budget"), (["--budget", "0s"], "--budget"),
    (["--auto-repairs", "linear,linear"], "twice"), (["--offload", "layers"], "--offload layers"),
], ids=["layers", "strategy", "metric", "repair", "objective", "self", "budget-word", "budget-zero", "repairs-twice",
        "offload"])
def test_auto_refuses_what_it_cannot_honour_before_loading(work, capsys, tmp_path, extra, fragment):
    root, model = work
    args = _args(root, model, tmp_path / "out", *extra)
    if "--layers" in extra:
        args = [a for a in args if a not in ("--remove", 2)]
    refused(cli(capsys, *args), fragment)
    assert not (tmp_path / "out").exists()


def test_auto_repair_data_is_refused_so_no_candidate_is_judged_on_its_training_text(work, capsys, tmp_path):
    root, model = work
    refused(cli(capsys, *_args(root, model, tmp_path / "out", "--repair-data", root / "calib.txt")), "--repair-data")


def test_budget_without_auto_is_refused(work, capsys, tmp_path):
    root, model = work
    refused(cli(capsys, "prune", model, "--remove", 1, "--budget", "5m", "--out", tmp_path / "o"), "--budget")


def test_split_keeps_two_windows_each_side():
    from depthprune.io.data import from_tensors

    ids = torch.arange(5 * 4).reshape(5, 4)
    fit, val = auto.split_calibration(from_tensors(ids), 0.25)
    assert len(fit) == 3 and len(val) == 2 and torch.equal(val.input_ids, ids[3:])
    with pytest.raises(Exception, match="at least 4 calibration windows"):
        auto.split_calibration(from_tensors(ids[:3]), 0.25)
