"""Tests of the lm-evaluation-harness bridge (depthprune.lmeval_tasks).

Needs ``lm_eval``. Runs on the full local benchmark data (``<repo>/../shared/data``, or the folder
named by ``DEPTHPRUNE_DATA_DIR``) when present, else on the few items per task shipped in
``tests/fixtures/data`` (same files and formats), so nothing skips on a fresh clone; the checks
that need the full files (document counts of the real data, the last LAMBADA item) run on both,
against the counts of whichever data is used. Everything runs offline.
"""

from __future__ import annotations

import bz2
import csv
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

lm_eval = pytest.importorskip("lm_eval")


from conftest import FULL_DATA, TASK_DATA  # noqa: E402

DATA = TASK_DATA

from depthprune.evaluation import lmeval_tasks as lt
from depthprune.evaluation.lmeval_tasks import LOCAL_TASK_NAMES, STANDARD_TASKS, SUPPORTED_TASKS, prepare_offline_tasks, run_lm_eval

FULL_DOCS = {
    "mmlu": 14042,
    "hellaswag": 10042,
    "piqa": 1838,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "openbookqa": 500,
    "boolq": 3270,
    "winogrande": 1267,
    "lambada_openai": 5153,
    "cmmlu": 11582,
    "c3": 3892,
}
# tests/fixtures/data (tests/fixtures/make_data.py): 6 items per file, 9 HellaSwag items, 2 test items per
# MMLU/CMMLU subject, the C3 questions of 2 + 2 documents
FIXTURE_DOCS = {"mmlu": 57 * 2, "hellaswag": 9, "piqa": 6, "arc_easy": 6, "arc_challenge": 6, "openbookqa": 6,
                "boolq": 6, "winogrande": 6, "lambada_openai": 6, "cmmlu": 67 * 2, "c3": 4}
EXPECTED_DOCS = FULL_DOCS if FULL_DATA else FIXTURE_DOCS


def _read_jsonl(path: Path, n: int | None = None) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if n is not None and len(rows) == n:
                break
    return rows


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """All offline tasks, loaded through lm-eval's own TaskManager."""
    from lm_eval.tasks import TaskManager

    work = tmp_path_factory.mktemp("lmeval_work")
    include_path, names = prepare_offline_tasks(DATA, SUPPORTED_TASKS, work)
    tm = TaskManager(include_path=include_path)
    loaded = tm.load(names)
    return {
        "include_path": include_path,
        "names": names,
        "tm": tm,
        "tasks": loaded["tasks"],
        "groups": loaded["group_map"],
    }


def _task(loaded, name):
    return loaded["tasks"][name]


def _rendered(task, i=0):
    doc = task.eval_docs[i]
    return doc, task.doc_to_text(doc), task.doc_to_target(doc), task.doc_to_choice(doc)


def _leaves(loaded, name):
    groups = loaded["groups"]
    if name not in groups:
        return [name]
    return [leaf for sub in groups[name] for leaf in _leaves(loaded, sub)]


# ---------------------------------------------------------------------------
# configs: names, doc counts, rendered prompts
# ---------------------------------------------------------------------------


def _yaml_path(entry) -> Path:
    # lm-eval >= 0.4.10 indexes tasks as Entry objects, older versions as dicts
    path = entry.yaml_path if hasattr(entry, "yaml_path") else entry["yaml_path"]
    return Path(path)


def test_prepare_returns_local_names_that_do_not_shadow_builtins(loaded):
    assert loaded["names"] == [LOCAL_TASK_NAMES[t] for t in SUPPORTED_TASKS]
    assert set(STANDARD_TASKS) <= set(SUPPORTED_TASKS)
    tm = loaded["tm"]
    include = Path(loaded["include_path"])
    for std in STANDARD_TASKS:
        # lm-eval's own task keeps its own config ...
        assert include not in _yaml_path(tm.task_index[std]).parents, std
        # ... and the local twin lives only in our include path.
        assert include in _yaml_path(tm.task_index[LOCAL_TASK_NAMES[std]]).parents
    # absolute data paths were substituted, placeholders are gone
    for yml in include.rglob("*.yaml"):
        assert "__DATA_DIR__" not in yml.read_text(encoding="utf-8"), yml


@pytest.mark.parametrize("std", list(EXPECTED_DOCS))
def test_doc_counts(loaded, std):
    name = LOCAL_TASK_NAMES[std]
    leaves = _leaves(loaded, name)
    if std == "mmlu":
        assert len(leaves) == 57
    if std == "cmmlu":
        assert len(leaves) == 67
    n = sum(len(_task(loaded, leaf).eval_docs) for leaf in leaves)
    assert n == EXPECTED_DOCS[std]


def test_piqa_prompt(loaded):
    raw = _read_jsonl(DATA / "piqa/valid.jsonl", 1)[0]
    gold = int((DATA / "piqa/valid-labels.lst").read_text().split()[0])
    _, text, target, choices = _rendered(_task(loaded, "piqa_local"))
    assert text == f"Question: {raw['goal']}\nAnswer:"
    assert choices == [raw["sol1"], raw["sol2"]]
    assert target == gold


def test_hellaswag_prompt_matches_lm_eval_on_known_items(loaded):
    task = _task(loaded, "hellaswag_local")
    # The first validation items of rowanz/hellaswag (hellaswag_val.jsonl),
    # as lm-eval renders them: preprocess(activity_label + ": " + ctx_a + " "
    # + ctx_b.capitalize()).
    expected = [
        ("Roof shingle removal: A man is sitting on a roof. He", 3),
        ("Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady", 3),
        (
            "Canoeing: Two women in a child are shown in a canoe while a man pulls the canoe "
            "while standing in the water, with other individuals visible in the background. "
            "The child and a different man",
            2,
        ),
        ("Sharpening knives: A man is holding a pocket knife while sitting on some rocks "
         "in the wilderness. Then he", 1),
    ]
    for i, (query, gold) in zip([0, 1, 2, 8], expected):
        _, text, target, _ = _rendered(task, i)
        assert (text, target) == (query, gold)
    # endings and gold straight from the raw file
    with bz2.open(DATA / "hellaswag/hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as fh:
        lines = [next(fh).rstrip("\n") for _ in range(6)]
    _, _, target, choices = _rendered(task, 0)
    assert choices == lines[2:6]
    assert target == int(lines[1])
    assert choices[target] == "starts pulling up roofing on a roof."


@pytest.mark.parametrize("std,subset", [("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")])
def test_arc_prompt(loaded, std, subset):
    item = json.loads((DATA / f"arc/llm-adapters/{subset}/test.json").read_text(encoding="utf-8"))[0]
    ins = item["instruction"]
    head = "Please choose the correct answer to the question: "
    question = ins[len(head) : ins.index("\n\nAnswer1: ")]
    choice_block = ins[ins.index("\n\nAnswer1: ") + 2 : ins.index("\n\nAnswer format:")]
    texts = [t.strip() for t in re.split(r"Answer\d: ", choice_block) if t.strip()]
    _, text, target, choices = _rendered(_task(loaded, f"{std}_local"))
    assert text == f"Question: {question}\nAnswer:"
    assert choices == texts
    assert target == int(item["answer"][len("answer") :]) - 1
    key = _read_jsonl(DATA / f"arc/aristo-leaderboard/data-{subset.split('-')[1].lower()}/question-answers.jsonl", 1)[0]
    assert _task(loaded, f"{std}_local").eval_docs[0]["id"] == key["id"]


def test_openbookqa_prompt(loaded):
    raw = _read_jsonl(DATA / "openbookqa/openbook_qa.jsonl", 1)[0]
    _, text, target, choices = _rendered(_task(loaded, "openbookqa_local"))
    assert text == raw["query"]
    assert choices == raw["choices"]
    assert target == raw["gold"]


def test_boolq_prompt(loaded):
    raw = _read_jsonl(DATA / "boolq/boolq.jsonl", 1)[0]
    _, text, target, choices = _rendered(_task(loaded, "boolq_local"))
    # lm-eval: "{{passage}}\nQuestion: {{question}}?\nAnswer:"
    assert text == raw["query"][len("Passage: ") :] + "\nAnswer:"
    assert choices == ["no", "yes"]
    assert target == raw["gold"]


def test_winogrande_prompt(loaded):
    raw = _read_jsonl(DATA / "winogrande/winogrande.jsonl", 1)[0]
    _, text, target, choices = _rendered(_task(loaded, "winogrande_local"))
    assert choices == [
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    ]
    assert text == raw["gold"] == 1  # index of the gold context, as in lm-eval
    assert target == "always got the easier cases."


def test_lambada_prompt(loaded):
    raw = _read_jsonl(DATA / "lambada/lambada_openai.jsonl", 1)[0]
    task = _task(loaded, "lambada_openai_local")
    doc = task.eval_docs[0]
    assert task.doc_to_text(doc) == raw["context"]
    assert task.doc_to_target(doc) == " " + raw["continuation"] == " signs"
    last = task.eval_docs[len(task.eval_docs) - 1]
    raw_last = _read_jsonl(DATA / "lambada/lambada_openai.jsonl")[-1]
    assert task.doc_to_target(last) == " " + raw_last["continuation"]
    if FULL_DATA:
        assert raw_last["continuation"] == "Grandmother"


def test_mmlu_prompt_and_fewshot(loaded):
    with open(DATA / "mmlu/test/abstract_algebra_test.csv", encoding="utf-8", newline="") as fh:
        row = list(csv.reader(fh))[1]
    with open(DATA / "mmlu/dev/abstract_algebra_dev.csv", encoding="utf-8", newline="") as fh:
        dev = list(csv.reader(fh))[1]
    task = _task(loaded, "mmlu_local_abstract_algebra")
    doc, text, target, choices = _rendered(task)
    expected = f"{row[0].strip()}\nA. {row[1]}\nB. {row[2]}\nC. {row[3]}\nD. {row[4]}\nAnswer:"
    assert text == expected
    assert choices == ["A", "B", "C", "D"]
    assert target == int(row[5])
    shot = "ABCD"[int(dev[5])]
    ctx = task.fewshot_context(doc, 1)
    assert ctx == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        f"{dev[0].strip()}\nA. {dev[1]}\nB. {dev[2]}\nC. {dev[3]}\nD. {dev[4]}\nAnswer: {shot}\n\n"
        + expected
    )


def test_cmmlu_prompt(loaded):
    with open(DATA / "cmmlu/test/agronomy.csv", encoding="utf-8", newline="") as fh:
        row = list(csv.reader(fh))[1]
    _, text, target, choices = _rendered(_task(loaded, "cmmlu_local_agronomy"))
    assert text == f"{row[1].strip()}\nA. {row[2]}\nB. {row[3]}\nC. {row[4]}\nD. {row[5]}\n答案："
    assert choices == ["A", "B", "C", "D"]
    assert target == "ABCD".index(row[6])


def test_c3_prompt(loaded):
    doc_lines, questions, _ = json.loads((DATA / "c3/c3-m-test.json").read_text(encoding="utf-8"))[0]
    q = questions[0]
    _, text, target, choices = _rendered(_task(loaded, "c3_local"))
    assert text == "文章：" + "\n".join(doc_lines) + f"\n问题：{q['question']}\n答案："
    assert choices == q["choice"]
    assert choices[target] == q["answer"]


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_unknown_task_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown task 'hellaswagg'.*supported are hellaswag, piqa"):
        prepare_offline_tasks(DATA, ["piqa", "hellaswagg"], tmp_path)
    assert not (tmp_path / "depthprune_lmeval_tasks").exists()


def test_missing_data_file_is_rejected(tmp_path):
    data = tmp_path / "data"
    (data / "piqa").mkdir(parents=True)
    shutil.copy(DATA / "piqa/valid.jsonl", data / "piqa/valid.jsonl")
    before = sorted(p.name for p in data.rglob("*"))
    expected = re.escape(str((data / "piqa/valid-labels.lst").resolve()))
    with pytest.raises(ValueError, match=rf"Task 'piqa' needs the local data file {expected}, which does not exist"):
        prepare_offline_tasks(data, ["piqa"], tmp_path / "work")
    with pytest.raises(ValueError, match=r"Task 'mmlu' needs the local data file .*mmlu/test/abstract_algebra_test\.csv"):
        prepare_offline_tasks(data, "mmlu", tmp_path / "work")
    assert sorted(p.name for p in data.rglob("*")) == before


def test_prepare_writes_only_into_work_dir(tmp_path):
    data_files_before = {p: p.stat().st_mtime_ns for p in (DATA / "piqa").iterdir()}
    include, names = prepare_offline_tasks(DATA, "piqa,boolq", tmp_path)
    assert names == ["piqa_local", "boolq_local"]
    assert Path(include).parent == tmp_path.resolve()
    text = (Path(include) / "piqa/piqa_local.yaml").read_text(encoding="utf-8")
    assert f'data_dir: "{DATA.resolve()}"' in text
    assert (Path(include) / "piqa/loaders.py").is_file()
    assert {p: p.stat().st_mtime_ns for p in (DATA / "piqa").iterdir()} == data_files_before
    # a second call rewrites its own folder ...
    prepare_offline_tasks(DATA, ["piqa"], tmp_path)
    assert not (Path(include) / "boolq").exists()
    # ... but never a folder it did not write
    other = tmp_path / "other"
    (other / "depthprune_lmeval_tasks").mkdir(parents=True)
    with pytest.raises(ValueError, match="Refusing to overwrite"):
        prepare_offline_tasks(DATA, ["piqa"], other)


def test_missing_lm_eval_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=re.escape("python3 -m pip install -e '.[eval]'")) as info:
        run_lm_eval(object(), object(), ["piqa"])
    assert isinstance(info.value, lt.LmEvalNotInstalledError)


# ---------------------------------------------------------------------------
# end to end on a tiny random model
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer():
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    lines = [
        ln
        for ln in (DATA / "wikitext-2-raw/wiki.test.raw").read_text(encoding="utf-8").split("\n")[:1200]
        if ln.strip()
    ][:400]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def test_run_lm_eval_offline_end_to_end(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    out = run_lm_eval(
        model, tokenizer, ["piqa", "lambada_openai", "winogrande"],
        data_dir=DATA, limit=5, batch_size=4, bootstrap_iters=100,
    )
    json.dumps(out)  # serialisable
    assert out["lm_eval_version"] == lm_eval.__version__
    assert out["offline"] is True and out["limit"] == 5 and out["num_fewshot"] is None
    assert list(out["tasks"]) == ["piqa", "lambada_openai", "winogrande"]
    for name, res in out["tasks"].items():
        assert res["lm_eval_task"] == f"{name}_local"
        assert res["n_samples"]["effective"] == 5
        assert res["n_samples"]["original"] == EXPECTED_DOCS[name]
        assert res["version"] == 1.0
        assert res["num_fewshot"] == 0
        m = res["metrics"]
        assert 0.0 <= m["acc"] <= 1.0 and m["acc"] * 5 == pytest.approx(round(m["acc"] * 5))
        assert m["acc_stderr"] is not None and m["acc_stderr"] >= 0.0
        src = res["source"]
        assert src["kind"] == "depthprune_offline" and src["standard_task"] == name
        assert src["data_files"] and all(Path(p).is_file() for p in src["data_files"])
    assert set(out["tasks"]["piqa"]["metrics"]) >= {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    lam = out["tasks"]["lambada_openai"]["metrics"]
    assert lam["perplexity"] > 1.0  # random weights: huge perplexity
    assert "samples" not in out


def test_run_lm_eval_group_and_fewshot(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    out = run_lm_eval(
        model, tokenizer, "mmlu", data_dir=DATA, limit=1, num_fewshot=1,
        log_samples=True, bootstrap_iters=10,
    )
    json.dumps(out)
    res = out["tasks"]["mmlu"]
    assert res["lm_eval_task"] == "mmlu_local"
    assert res["n_samples"] == {"original": EXPECTED_DOCS["mmlu"], "effective": 57}
    assert 0.0 <= res["metrics"]["acc"] <= 1.0
    assert out["num_fewshot"] == 1 and res["num_fewshot"] == 1
    assert res["source"]["data_files"][0].endswith("_test.csv")
    # per-sample logs are kept (and serialisable) when asked for
    sample = out["samples"]["mmlu_local_abstract_algebra"][0]
    assert sample["arguments"] and "Answer:" in json.dumps(sample["arguments"])
    assert "The following are multiple choice questions" in json.dumps(sample["arguments"])
