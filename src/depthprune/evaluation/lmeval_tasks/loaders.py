"""Readers that turn local benchmark files into lm-eval documents.

lm-eval calls these through ``custom_dataset: !function loaders.<name>`` in
the generated task YAMLs, as ``loader(**metadata, **dataset_kwargs)``; the
only keyword they use is ``data_dir`` (plus ``subject`` / ``subset``), the
rest is ignored.

Each reader returns a ``datasets.DatasetDict`` whose split names and column
names are the ones of the Hugging Face dataset that lm-eval's own task reads,
so the task YAMLs can keep lm-eval's ``doc_to_text`` / ``doc_to_choice`` /
``doc_to_target`` unchanged. Where the local file lacks a field, the reader
rebuilds it as closely as the file allows; ``docs/lmeval-tasks.md`` lists
every difference.

This file is copied next to the generated YAMLs (lm-eval resolves
``!function module.name`` relative to the YAML file), so it must stay
self-contained: standard library plus ``datasets`` only.
"""

from __future__ import annotations

import bz2
import csv
import functools
import json
import re
from pathlib import Path
from typing import Any

from depthprune.errors import DepthpruneError

# ---------------------------------------------------------------------------
# Relative paths of the files each task reads, under ``data_dir``.
# ---------------------------------------------------------------------------

HELLASWAG_FILE = "hellaswag/hellaswag_val_full.txt.bz2"
PIQA_FILES = ("piqa/valid.jsonl", "piqa/valid-labels.lst")
ARC_FILES = {
    "ARC-Easy": "arc/llm-adapters/ARC-Easy/test.json",
    "ARC-Challenge": "arc/llm-adapters/ARC-Challenge/test.json",
}
# Optional official answer keys (same order): give ids and the original
# label scheme (A-E or 1-4), and are cross-checked when present.
ARC_KEY_FILES = {
    "ARC-Easy": "arc/aristo-leaderboard/data-easy/question-answers.jsonl",
    "ARC-Challenge": "arc/aristo-leaderboard/data-challenge/question-answers.jsonl",
}
OPENBOOKQA_FILE = "openbookqa/openbook_qa.jsonl"
OPENBOOKQA_KEY_FILE = "openbookqa/question-answers.jsonl"  # optional
BOOLQ_FILE = "boolq/boolq.jsonl"
WINOGRANDE_FILE = "winogrande/winogrande.jsonl"
LAMBADA_FILE = "lambada/lambada_openai.jsonl"
C3_FILES = {
    "test": ("c3/c3-m-test.json", "c3/c3-d-test.json"),
    "validation": ("c3/c3-m-dev.json", "c3/c3-d-dev.json"),
}


def mmlu_files(subject: str) -> tuple[str, str]:
    """(test, dev) CSV paths of one MMLU subject."""
    return f"mmlu/test/{subject}_test.csv", f"mmlu/dev/{subject}_dev.csv"


def cmmlu_files(subject: str) -> tuple[str, str]:
    """(test, dev) CSV paths of one CMMLU subject."""
    return f"cmmlu/test/{subject}.csv", f"cmmlu/dev/{subject}.csv"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _dataset_dict(splits: dict[str, list[dict[str, Any]]]):
    import datasets

    return datasets.DatasetDict(
        {name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path} line {number} is not JSON ({exc.msg})") from None
    return rows


def reads_task_data(function):
    """A loader whose files are malformed (not JSON, a missing field, a short label file, bad bytes) raises one
    sentence naming the task and the data folder, not the parser's bare message (lm-eval calls the loaders; what they
    raise reaches the user)."""
    task = function.__name__.removeprefix("load_")

    @functools.wraps(function)
    def load(data_dir: str, *args, **kwargs):
        try:
            return function(data_dir, *args, **kwargs)
        except DepthpruneError:
            raise
        except (ValueError, KeyError, IndexError, TypeError, UnicodeError, OSError, EOFError, csv.Error) as exc:
            detail = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise DepthpruneError(f"the {task} data under {data_dir} cannot be read ({type(exc).__name__}: {detail}); "
                                  "the expected files and formats are in docs/lmeval-tasks.md") from exc

    return load


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


# ---------------------------------------------------------------------------
# HellaSwag
# ---------------------------------------------------------------------------


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's ``hellaswag/utils.py::preprocess``, reimplemented verbatim."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


_LAST_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)")


def hellaswag_restore_ctx_b(line: str) -> str:
    """Approximate lm-eval's ``ctx_a + " " + ctx_b.capitalize()`` from raw ``ctx``.

    The local file keeps HellaSwag's raw ``ctx`` (= ``ctx_a + " " + ctx_b``).
    For ActivityNet items ``ctx_b`` is the lower-case start of the next
    sentence ("he", "then he", "the lady"); WikiHow items have an empty
    ``ctx_b`` and end with a complete, capitalised sentence. So: when the
    text after the last sentence end starts with a lower-case letter, treat
    it as ``ctx_b`` and ``str.capitalize()`` it, exactly as lm-eval does.
    """
    parts = _LAST_SENTENCE.split(line)
    tail = parts[-1]
    if len(parts) > 1 and tail[:1].islower():
        return line[: len(line) - len(tail)] + tail.capitalize()
    return line


@reads_task_data
def load_hellaswag(data_dir: str, **_: Any):
    path = Path(data_dir) / HELLASWAG_FILE
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    if len(lines) % 6:
        raise ValueError(f"{path}: expected 6 lines per item, got {len(lines)} lines")
    rows = []
    for i in range(0, len(lines), 6):
        ctx, label, *endings = lines[i : i + 6]
        activity_label = ctx.split(": ", 1)[0]
        rows.append(
            {
                "ind": i // 6,
                "activity_label": activity_label,
                "ctx": ctx,
                "endings": endings,
                "label": str(int(label)),
                # the fields lm-eval's process_docs would add
                "query": hellaswag_preprocess(hellaswag_restore_ctx_b(ctx)),
                "choices": [hellaswag_preprocess(e) for e in endings],
                "gold": int(label),
            }
        )
    return _dataset_dict({"validation": rows})


# ---------------------------------------------------------------------------
# PIQA
# ---------------------------------------------------------------------------


@reads_task_data
def load_piqa(data_dir: str, **_: Any):
    qpath, lpath = (Path(data_dir) / p for p in PIQA_FILES)
    items = _read_jsonl(qpath)
    labels = [int(x) for x in lpath.read_text(encoding="utf-8").split()]
    if len(items) != len(labels):
        raise ValueError(f"{qpath} has {len(items)} rows but {lpath} has {len(labels)} labels")
    rows = [
        {"goal": it["goal"], "sol1": it["sol1"], "sol2": it["sol2"], "label": lab}
        for it, lab in zip(items, labels)
    ]
    return _dataset_dict({"validation": rows})


# ---------------------------------------------------------------------------
# ARC
# ---------------------------------------------------------------------------

_ARC_PREFIX = "Please choose the correct answer to the question: "


def parse_llm_adapters_arc(instruction: str) -> tuple[str, list[str]]:
    """Split an LLM-Adapters ARC instruction into (question, choice texts)."""
    if not instruction.startswith(_ARC_PREFIX):
        raise ValueError(f"unexpected ARC instruction: {instruction[:80]!r}")
    body, _fmt = instruction[len(_ARC_PREFIX) :].rsplit("\n\nAnswer format: ", 1)
    question, choice_block = body.rsplit("\n\n", 1)
    parts = re.split(r"(?:^| )Answer(\d): ", choice_block)
    numbers, texts = parts[1::2], parts[2::2]
    if numbers != [str(i + 1) for i in range(len(numbers))]:
        raise ValueError(f"unexpected ARC choice block: {choice_block[:80]!r}")
    return question, texts


@reads_task_data
def load_arc(data_dir: str, subset: str, **_: Any):
    root = Path(data_dir)
    items = json.loads((root / ARC_FILES[subset]).read_text(encoding="utf-8"))
    key_path = root / ARC_KEY_FILES[subset]
    keys = _read_jsonl(key_path) if key_path.is_file() else None
    if keys is not None and len(keys) != len(items):
        raise ValueError(f"{key_path} has {len(keys)} rows, expected {len(items)}")
    rows = []
    for i, it in enumerate(items):
        question, texts = parse_llm_adapters_arc(it["instruction"])
        gold = int(it["answer"].removeprefix("answer")) - 1
        if keys is not None:
            key = keys[i]["answerKey"]
            labels = (
                [str(j + 1) for j in range(len(texts))] if key.isdigit() else _letters(len(texts))
            )
            if labels.index(key) != gold:
                raise ValueError(f"{key_path} row {i}: answer key {key} disagrees with {it['answer']}")
            qid = keys[i]["id"]
        else:
            labels, qid = _letters(len(texts)), f"{subset}-test-{i}"
        rows.append(
            {
                "id": qid,
                "question": question,
                "choices": {"text": texts, "label": labels},
                "answerKey": labels[gold],
            }
        )
    return _dataset_dict({"test": rows})


# ---------------------------------------------------------------------------
# OpenBookQA
# ---------------------------------------------------------------------------


@reads_task_data
def load_openbookqa(data_dir: str, **_: Any):
    root = Path(data_dir)
    items = _read_jsonl(root / OPENBOOKQA_FILE)
    key_path = root / OPENBOOKQA_KEY_FILE
    keys = _read_jsonl(key_path) if key_path.is_file() else None
    if keys is not None and len(keys) != len(items):
        raise ValueError(f"{key_path} has {len(keys)} rows, expected {len(items)}")
    rows = []
    for i, it in enumerate(items):
        labels = _letters(len(it["choices"]))
        answer = labels[int(it["gold"])]
        if keys is not None and keys[i]["answerKey"].strip() != answer:
            raise ValueError(f"{key_path} row {i}: answer key disagrees with gold {it['gold']}")
        rows.append(
            {
                "id": keys[i]["id"] if keys is not None else f"openbookqa-test-{i}",
                "question_stem": it["query"],
                "choices": {"text": list(it["choices"]), "label": labels},
                "answerKey": answer,
            }
        )
    return _dataset_dict({"test": rows})


# ---------------------------------------------------------------------------
# BoolQ
# ---------------------------------------------------------------------------


@reads_task_data
def load_boolq(data_dir: str, **_: Any):
    path = Path(data_dir) / BOOLQ_FILE
    rows = []
    for i, it in enumerate(_read_jsonl(path)):
        query = it["query"]
        if not query.startswith("Passage: ") or "\nQuestion: " not in query:
            raise ValueError(f"{path} row {i}: expected 'Passage: ...\\nQuestion: ...?'")
        passage, question = query[len("Passage: ") :].rsplit("\nQuestion: ", 1)
        # SuperGLUE stores the question without '?'; lm-eval's prompt adds it.
        question = question.removesuffix("?")
        if list(it["choices"]) != ["no", "yes"]:
            raise ValueError(f"{path} row {i}: expected choices ['no', 'yes']")
        rows.append({"question": question, "passage": passage, "idx": i, "label": int(it["gold"])})
    return _dataset_dict({"validation": rows})


# ---------------------------------------------------------------------------
# WinoGrande (already split for partial scoring)
# ---------------------------------------------------------------------------


@reads_task_data
def load_winogrande(data_dir: str, **_: Any):
    path = Path(data_dir) / WINOGRANDE_FILE
    rows = [
        {
            "context_options": list(it["context_options"]),
            "continuation": it["continuation"],
            "answer": str(int(it["gold"]) + 1),
        }
        for it in _read_jsonl(path)
    ]
    return _dataset_dict({"validation": rows})


def winogrande_doc_to_text(doc: dict) -> int:
    """As lm-eval: the *index* of the gold context (multiple-input task)."""
    answer_to_num = {"1": 0, "2": 1}
    return answer_to_num[doc["answer"]]


def winogrande_doc_to_target(doc: dict) -> str:
    """As lm-eval: ``sentence[idx + 1:].strip()`` (stored as ``continuation``)."""
    return doc["continuation"].strip()


def winogrande_doc_to_choice(doc: dict) -> list[str]:
    """As lm-eval: ``sentence[:idx] + option`` (stored as ``context_options``)."""
    return list(doc["context_options"])


# ---------------------------------------------------------------------------
# LAMBADA (OpenAI)
# ---------------------------------------------------------------------------


@reads_task_data
def load_lambada(data_dir: str, **_: Any):
    path = Path(data_dir) / LAMBADA_FILE
    rows = [{"text": it["context"] + " " + it["continuation"]} for it in _read_jsonl(path)]
    return _dataset_dict({"test": rows})


# ---------------------------------------------------------------------------
# MMLU / CMMLU
# ---------------------------------------------------------------------------


def _read_mmlu_csv(path: Path, subject: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if header != ["question", "choice0", "choice1", "choice2", "choice3", "answer"]:
            raise ValueError(f"{path}: unexpected header {header}")
        return [
            {"question": r[0], "subject": subject, "choices": r[1:5], "answer": int(r[5])}
            for r in reader
        ]


@reads_task_data
def load_mmlu(data_dir: str, subject: str, **_: Any):
    test, dev = (Path(data_dir) / p for p in mmlu_files(subject))
    return _dataset_dict(
        {"test": _read_mmlu_csv(test, subject), "dev": _read_mmlu_csv(dev, subject)}
    )


def _read_cmmlu_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if header[1:] != ["Question", "A", "B", "C", "D", "Answer"]:
            raise ValueError(f"{path}: unexpected header {header}")
        cols = header[1:]
        return [dict(zip(cols, r[1:])) for r in reader]


@reads_task_data
def load_cmmlu(data_dir: str, subject: str, **_: Any):
    test, dev = (Path(data_dir) / p for p in cmmlu_files(subject))
    return _dataset_dict({"test": _read_cmmlu_csv(test), "dev": _read_cmmlu_csv(dev)})


# ---------------------------------------------------------------------------
# C3 (not in lm-eval; our own task in the same style)
# ---------------------------------------------------------------------------


def _read_c3(path: Path) -> list[dict[str, Any]]:
    rows = []
    for doc_lines, questions, doc_id in json.loads(path.read_text(encoding="utf-8")):
        for q in questions:
            rows.append(
                {
                    "id": doc_id,
                    "context": "\n".join(doc_lines),
                    "question": q["question"],
                    "choice": list(q["choice"]),
                    "answer": q["answer"],
                    "label": list(q["choice"]).index(q["answer"]),
                }
            )
    return rows


@reads_task_data
def load_c3(data_dir: str, **_: Any):
    root = Path(data_dir)
    return _dataset_dict(
        {
            split: [row for p in files for row in _read_c3(root / p)]
            for split, files in C3_FILES.items()
        }
    )
