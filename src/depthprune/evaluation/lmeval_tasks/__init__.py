"""Bridge to EleutherAI's lm-evaluation-harness (``lm_eval``).

Two ways to evaluate a (pruned) in-memory Hugging Face model:

* **online** (``data_dir=None``): lm-eval's own tasks, which download their
  data from the Hugging Face Hub as usual;
* **offline** (``data_dir=...``): task configs shipped in this package
  (``configs/``), twins of lm-eval's standard tasks with the same prompts,
  targets and metrics, that read local copies of the benchmark data laid out
  like ``shared/data`` (see ``docs/lmeval-tasks.md``).

Offline tasks are registered under their own names (``hellaswag_local``,
``mmlu_local`` ...) so they can never shadow lm-eval's built-in tasks.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from depthprune.evaluation.lmeval_tasks import loaders as _loaders

__all__ = [
    "STANDARD_TASKS",
    "EXTRA_TASKS",
    "SUPPORTED_TASKS",
    "LOCAL_TASK_NAMES",
    "LmEvalNotInstalledError",
    "required_files",
    "prepare_offline_tasks",
    "run_lm_eval",
]

#: lm-eval standard task names that have an offline twin here.
STANDARD_TASKS: tuple[str, ...] = (
    "hellaswag",
    "piqa",
    "arc_easy",
    "arc_challenge",
    "boolq",
    "winogrande",
    "lambada_openai",
    "openbookqa",
    "mmlu",
    "cmmlu",
)
#: Offline-only tasks that lm-eval itself does not ship.
EXTRA_TASKS: tuple[str, ...] = ("c3",)
SUPPORTED_TASKS: tuple[str, ...] = STANDARD_TASKS + EXTRA_TASKS

#: standard name -> name of the offline lm-eval task (or group).
LOCAL_TASK_NAMES: dict[str, str] = {t: f"{t}_local" for t in SUPPORTED_TASKS}

# standard name -> folder under configs/ holding its YAMLs.
_CONFIG_DIRS: dict[str, str] = {
    "hellaswag": "hellaswag",
    "piqa": "piqa",
    "arc_easy": "arc",
    "arc_challenge": "arc",
    "boolq": "boolq",
    "winogrande": "winogrande",
    "lambada_openai": "lambada_openai",
    "openbookqa": "openbookqa",
    "mmlu": "mmlu",
    "cmmlu": "cmmlu",
    "c3": "c3",
}

_DATA_PLACEHOLDER = "__DATA_DIR__"
_GENERATED_DIR = "depthprune_lmeval_tasks"
_MARKER = ".depthprune_generated"
_LOADER_MODULE = "loaders.py"

_INSTALL_HINT = "install the eval extra: python3 -m pip install -e '.[eval]' in the depthprune clone (or pip install lm-eval)"


class _QuietCustomDatasetNotice(logging.Filter):
    """Drop lm-eval's per-task "Custom kwargs can be passed to `--metadata`"
    notice for our own ``*_local`` tasks (it is printed once per MMLU/CMMLU
    subject and says nothing useful here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not ("_local" in msg and "Custom kwargs can be passed" in msg)


logging.getLogger("lm_eval.api.task").addFilter(_QuietCustomDatasetNotice())


class _QuietModelObjectNotice(logging.Filter):
    """Drop lm-eval's two warnings about being handed a model object rather than a name: depthprune always passes
    the in-memory (pruned) model on purpose, so they appear on every evaluation, refusals included, and say nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not ("`pretrained` model kwarg is not of type `str`" in msg
                    or "Passed an already-initialized model through `pretrained`" in msg)


logging.getLogger("lm_eval.models.huggingface").addFilter(_QuietModelObjectNotice())


class LmEvalNotInstalledError(ImportError):
    """Raised when lm-evaluation-harness is needed but not importable."""


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise LmEvalNotInstalledError(
            f"lm-evaluation-harness (lm_eval) is not installed; {_INSTALL_HINT}"
        ) from exc
    return lm_eval


def _check_custom_dataset_support(lm_eval) -> None:
    """The offline configs need lm-eval's ``custom_dataset`` task option."""
    import dataclasses

    try:
        from lm_eval.api.task import TaskConfig

        names = {f.name for f in dataclasses.fields(TaskConfig)}
    except Exception:  # pragma: no cover - unknown layout: let lm-eval decide
        return
    if "custom_dataset" not in names:  # pragma: no cover - old lm-eval
        raise LmEvalNotInstalledError(
            f"lm-eval {getattr(lm_eval, '__version__', '?')} is too old for the offline "
            "task configs (no `custom_dataset` task option); upgrade it: pip install -U lm-eval"
        )


def _configs_root():
    return resources.files(__package__).joinpath("configs")


def _subjects(kind: str) -> list[str]:
    """Subjects of mmlu / cmmlu, from the shipped per-subject YAML names."""
    prefix = f"{kind}_local_"
    names = []
    for entry in _configs_root().joinpath(kind).iterdir():
        name = entry.name
        if name.startswith(prefix) and name.endswith(".yaml"):
            names.append(name[len(prefix) : -len(".yaml")])
    # mmlu also has the category groups _mmlu_local_<cat>.yaml (underscore
    # prefixed, so not matched above).
    return sorted(names)


def required_files(task: str) -> list[str]:
    """Paths, relative to ``data_dir``, that the offline ``task`` reads."""
    task = _check_task_name(task)
    if task == "hellaswag":
        return [_loaders.HELLASWAG_FILE]
    if task == "piqa":
        return list(_loaders.PIQA_FILES)
    if task == "arc_easy":
        return [_loaders.ARC_FILES["ARC-Easy"]]
    if task == "arc_challenge":
        return [_loaders.ARC_FILES["ARC-Challenge"]]
    if task == "boolq":
        return [_loaders.BOOLQ_FILE]
    if task == "winogrande":
        return [_loaders.WINOGRANDE_FILE]
    if task == "lambada_openai":
        return [_loaders.LAMBADA_FILE]
    if task == "openbookqa":
        return [_loaders.OPENBOOKQA_FILE]
    if task == "mmlu":
        return [p for s in _subjects("mmlu") for p in _loaders.mmlu_files(s)]
    if task == "cmmlu":
        return [p for s in _subjects("cmmlu") for p in _loaders.cmmlu_files(s)]
    if task == "c3":
        return [p for files in _loaders.C3_FILES.values() for p in files]
    raise AssertionError(task)  # pragma: no cover


def _optional_files(task: str) -> list[str]:
    """Files read when present (answer keys used for ids and cross-checks)."""
    if task == "arc_easy":
        return [_loaders.ARC_KEY_FILES["ARC-Easy"]]
    if task == "arc_challenge":
        return [_loaders.ARC_KEY_FILES["ARC-Challenge"]]
    if task == "openbookqa":
        return [_loaders.OPENBOOKQA_KEY_FILE]
    return []


def _check_task_name(task: str) -> str:
    if task in SUPPORTED_TASKS:
        return task
    raise ValueError(
        f"Unknown task {task!r}: the offline lm-eval tasks supported are "
        f"{', '.join(SUPPORTED_TASKS)}."
    )


def _normalise_tasks(tasks: str | Iterable[str]) -> list[str]:
    if isinstance(tasks, str):
        tasks = [t for t in (s.strip() for s in tasks.split(",")) if t]
    out: list[str] = []
    for t in tasks:
        if t not in out:
            out.append(t)
    if not out:
        raise ValueError("No task given: pass at least one task name.")
    return out


def _yaml_escape(path: str) -> str:
    # Placeholders sit inside YAML double quotes; JSON escaping is valid there.
    return json.dumps(path)[1:-1]


def prepare_offline_tasks(
    data_dir: str | Path,
    tasks: str | Iterable[str],
    work_dir: str | Path,
) -> tuple[str, list[str]]:
    """Write offline lm-eval task configs for ``tasks`` that read ``data_dir``.

    Checks that ``data_dir`` holds every file the requested tasks read, then
    writes the task YAMLs (with absolute data paths filled in) plus the
    loader module they call into ``<work_dir>/depthprune_lmeval_tasks/``
    (rewritten on each call; ``data_dir`` itself is only read).

    Returns ``(include_path, task_names)``: pass ``include_path`` to
    ``lm_eval.tasks.TaskManager(include_path=...)`` and request
    ``task_names`` (``LOCAL_TASK_NAMES[t]``, in the order given).

    Raises ``ValueError`` for an unknown task name or a missing data file.
    """
    names = [_check_task_name(t) for t in _normalise_tasks(tasks)]
    data_root = Path(data_dir).expanduser().resolve()
    if not data_root.is_dir():
        raise ValueError(f"The data directory {data_root} does not exist.")
    for task in names:
        missing = [p for p in required_files(task) if not (data_root / p).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more files)" if len(missing) > 1 else ""
            raise ValueError(
                f"Task {task!r} needs the local data file {data_root / missing[0]}{more}, "
                f"which does not exist; see docs/lmeval-tasks.md for the expected layout."
            )

    work_root = Path(work_dir).expanduser().resolve()
    if work_root == data_root or data_root in work_root.parents:
        raise ValueError(f"The work directory {work_root} must not be inside the data directory {data_root}.")
    out_root = work_root / _GENERATED_DIR
    if out_root.exists():
        if not (out_root / _MARKER).is_file():
            raise ValueError(
                f"Refusing to overwrite {out_root}: it exists and was not written by depthprune."
            )
        shutil.rmtree(out_root)
    out_root.mkdir(parents=True)
    (out_root / _MARKER).write_text("written by depthprune.lmeval_tasks.prepare_offline_tasks\n")

    data_value = _yaml_escape(str(data_root))
    loader_src = resources.files(__package__).joinpath(_LOADER_MODULE).read_text(encoding="utf-8")
    for folder in sorted({_CONFIG_DIRS[t] for t in names}):
        dest = out_root / folder
        dest.mkdir()
        for entry in _configs_root().joinpath(folder).iterdir():
            if not entry.is_file() or entry.name.startswith("."):
                continue
            text = entry.read_text(encoding="utf-8").replace(_DATA_PLACEHOLDER, data_value)
            (dest / entry.name).write_text(text, encoding="utf-8")
        (dest / _LOADER_MODULE).write_text(loader_src, encoding="utf-8")
    return str(out_root), [LOCAL_TASK_NAMES[t] for t in names]


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------


def _jsonable(value: Any) -> tuple[bool, Any]:
    """(ok, value) with numpy/torch scalars unwrapped; ok=False: drop it."""
    if value is None or isinstance(value, (bool, int, str)):
        return True, value
    if isinstance(value, float):
        return True, (value if math.isfinite(value) else None)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            ok, v2 = _jsonable(v)
            if ok and isinstance(k, (str, int, float, bool)):
                out[str(k)] = v2
        return True, out
    if isinstance(value, (list, tuple)):
        out_list = []
        for v in value:
            ok, v2 = _jsonable(v)
            if ok:
                out_list.append(v2)
        return True, out_list
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        try:
            return _jsonable(item())
        except Exception:  # pragma: no cover
            return False, None
    return False, None


def _metrics(entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in entry.items():
        if "," not in key:
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else key
        ok, v = _jsonable(val)
        if not ok:
            continue
        if isinstance(v, str):  # lm-eval writes "N/A" for missing stderr
            v = None
        out[name] = v
    return out


def _leaf_tasks(name: str, group_subtasks: dict[str, list[str]]) -> list[str]:
    if name not in group_subtasks:
        return [name]
    leaves: list[str] = []
    for sub in group_subtasks[name]:
        leaves.extend(_leaf_tasks(sub, group_subtasks))
    return leaves


def _n_samples(name: str, raw: dict[str, Any]) -> dict[str, int]:
    n = raw.get("n-samples", {})
    orig = eff = 0
    for leaf in _leaf_tasks(name, raw.get("group_subtasks", {})):
        if leaf in n:
            orig += int(n[leaf]["original"])
            eff += int(n[leaf]["effective"])
    return {"original": orig, "effective": eff}


def _source(task: str, lm_name: str, data_root: Path | None, raw: dict[str, Any]) -> dict[str, Any]:
    if data_root is None:
        configs = raw.get("configs", {})
        leaf = _leaf_tasks(lm_name, raw.get("group_subtasks", {}))[0]
        cfg = configs.get(lm_name) or configs.get(leaf) or {}
        return {
            "kind": "lm_eval_builtin",
            "task": lm_name,
            "dataset_path": cfg.get("dataset_path"),
            "dataset_name": cfg.get("dataset_name"),
        }
    files = [str(data_root / p) for p in required_files(task)]
    files += [str(data_root / p) for p in _optional_files(task) if (data_root / p).is_file()]
    return {
        "kind": "depthprune_offline",
        "task": lm_name,
        "standard_task": task if task in STANDARD_TASKS else None,
        "config_dir": f"depthprune/lmeval_tasks/configs/{_CONFIG_DIRS[task]}",
        "data_dir": str(data_root),
        "data_files": files,
    }


def run_lm_eval(
    model,
    tokenizer,
    tasks: str | Sequence[str],
    *,
    data_dir: str | Path | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str = 1,
    device: str | None = "cpu",
    log_samples: bool = False,
    bootstrap_iters: int = 100000,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Evaluate an in-memory transformers model with ``lm_eval.simple_evaluate``.

    ``tasks`` are standard names (``STANDARD_TASKS``; with ``data_dir`` also
    ``"c3"``). With ``data_dir`` the offline configs are used (see
    :func:`prepare_offline_tasks`); without, lm-eval's own tasks, which fetch
    their data from the Hugging Face Hub. ``device`` (if not None) moves the
    model there first, since lm-eval leaves a ready model where it is.

    Returns a JSON-serialisable dict::

        {"lm_eval_version", "offline", "data_dir", "limit", "num_fewshot",
         "tasks": {name: {"lm_eval_task", "metrics": {"acc", "acc_stderr", ...},
                          "n_samples": {"original", "effective"}, "version",
                          "num_fewshot", "source"}},
         "results": <lm-eval's per-task/group results, sanitised>,
         "samples": <only with log_samples=True>}
    """
    lm_eval = _require_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = _normalise_tasks(tasks)
    tmp: tempfile.TemporaryDirectory | None = None
    data_root: Path | None = None
    try:
        if data_dir is not None:
            _check_custom_dataset_support(lm_eval)
            data_root = Path(data_dir).expanduser().resolve()
            tmp = tempfile.TemporaryDirectory(prefix="depthprune-lmeval-")
            include_path, lm_names = prepare_offline_tasks(data_root, names, tmp.name)
            task_manager = TaskManager(include_path=include_path)
        else:
            lm_names = list(names)
            task_manager = TaskManager()

        if device is not None:
            model = model.to(device)
        model.eval()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                  trust_remote_code=bool(trust_remote_code))
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=lm_names,
            num_fewshot=num_fewshot,
            limit=limit,
            log_samples=log_samples,
            task_manager=task_manager,
            bootstrap_iters=bootstrap_iters,
        )
    finally:
        if tmp is not None:
            tmp.cleanup()

    results = raw.get("results", {})
    per_task: dict[str, Any] = {}
    for name, lm_name in zip(names, lm_names):
        ok, version = _jsonable(raw.get("versions", {}).get(lm_name))
        n_shot = raw.get("n-shot", {})
        leaf = _leaf_tasks(lm_name, raw.get("group_subtasks", {}))[0]
        ok2, shots = _jsonable(n_shot.get(lm_name, n_shot.get(leaf)))
        per_task[name] = {
            "lm_eval_task": lm_name,
            "metrics": _metrics(results.get(lm_name, {})),
            "n_samples": _n_samples(lm_name, raw),
            "version": version if ok else None,
            "num_fewshot": shots if ok2 else num_fewshot,
            "source": _source(name, lm_name, data_root, raw),
        }
    out: dict[str, Any] = {
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "offline": data_root is not None,
        "data_dir": str(data_root) if data_root is not None else None,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "tasks": per_task,
        "results": _jsonable(results)[1],
        "versions": _jsonable(raw.get("versions", {}))[1],
    }
    if log_samples:
        out["samples"] = _jsonable(raw.get("samples", {}))[1]
    json.dumps(out)  # guarantee: serialisable
    return out
