"""Task accuracy through lm-evaluation-harness: the checks made before any model work, and the run itself.

lm-eval is an optional dependency (``depthprune[eval]``); nothing here imports it until a task runs, so that the
planner can check task names and offline data in a fraction of a second.
"""

from __future__ import annotations

import importlib.util
import re
import traceback
from pathlib import Path

from depthprune.errors import DepthpruneError
from depthprune.evaluation.lmeval_tasks import STANDARD_TASKS, SUPPORTED_TASKS, required_files, run_lm_eval
from depthprune.io.guards.network import hub_offline, require_hub
from depthprune.io.guards.settings import position_limit


def lm_eval_available() -> bool:
    """Whether lm-evaluation-harness is installed (located, not imported: importing it takes seconds)."""
    return importlib.util.find_spec("lm_eval") is not None


def parse_tasks(tasks: str | list[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise DepthpruneError("no task given: pass --tasks with at least one name, e.g. --tasks hellaswag,piqa")
    return names


def check_tasks(tasks: str | list[str], data_dir: str | None = None, *, flag: str = "--data-dir") -> list[str]:
    """Fail fast (before loading a model) on unknown task names or missing local data files."""
    names = parse_tasks(tasks)
    if data_dir is None:
        _check_online_tasks(names, flag)
        return names
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DepthpruneError(f"{flag} {root} does not exist or is not a directory")
    for name in names:
        if name not in SUPPORTED_TASKS:
            raise DepthpruneError(f"unknown task '{name}': offline tasks are {', '.join(SUPPORTED_TASKS)}")
        for rel in required_files(name):
            if not (root / rel).exists():
                raise DepthpruneError(f"task '{name}' needs {root / rel}, which does not exist (layout in "
                                      "docs/lmeval-tasks.md)")
    return names


def _raised_in_lm_eval(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and "lm_eval" in frames[-1].filename


def _lm_eval_mentions(name: str) -> bool:
    """Whether any of lm-eval's task YAML files names ``name`` (a cheap text scan; building lm-eval's
    TaskManager index parses ~10,000 YAML files and takes far longer). Without lm-eval: True."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return True
    root = Path(list(spec.submodule_search_locations)[0]) / "tasks"
    pattern = re.compile(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])")
    for path in root.rglob("*.yaml"):
        try:
            if name in (text := path.read_text(encoding="utf-8", errors="replace")) and pattern.search(text):
                return True
        except OSError:
            continue
    return False


def _check_online_tasks(names: list[str], flag: str) -> None:
    """Without a data directory lm-eval downloads task data: refuse offline runs and unknown names up front."""
    for name in names:
        if name not in STANDARD_TASKS and not _lm_eval_mentions(name):
            raise DepthpruneError(f"unknown task '{name}': lm-eval has no task of that name "
                                  f"(offline tasks with {flag}: {', '.join(STANDARD_TASKS)})")
    local = (f"give local copies with {flag} DIR (layout in docs/lmeval-tasks.md; tests/fixtures/data in a clone of "
             "depthprune is a small one)")
    if hub_offline():
        raise DepthpruneError(f"tasks {', '.join(names)} need their data, and the Hub is switched off "
                              f"(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE): {local}")
    require_hub(f"tasks {', '.join(names)}", instead=f", {local}")


def evaluate_tasks(model, tokenizer, tasks: str | list[str], *, data_dir: str | None = None,
                   limit: int | float | None = None, num_fewshot: int | None = None, batch_size: int = 1,
                   device: str | None = None, model_name: str | None = None, role: str | None = None,
                   command: str | None = None, bootstrap_iters: int = 1000, trust_remote_code: bool = False) -> dict:
    """Task accuracy through lm-evaluation-harness (its standard prompts and metrics).

    With ``data_dir`` the bundled offline task configs read local copies of the data (layout of
    ``docs/lmeval-tasks.md``); without it lm-eval fetches its datasets as usual. Returns a JSON-serialisable dict
    (the shape that ``depthprune report`` reads), tagged with ``role`` (dense/pruned), ``model`` and ``command``.
    """
    names = check_tasks(tasks, data_dir)
    try:
        result = run_lm_eval(model, tokenizer, names, data_dir=data_dir, limit=limit, num_fewshot=num_fewshot,
                             batch_size=batch_size, device=device, bootstrap_iters=bootstrap_iters,
                             trust_remote_code=trust_remote_code)
    except ImportError as exc:
        raise DepthpruneError(str(exc).strip().splitlines()[0]) from None
    except ValueError as exc:
        raise DepthpruneError(str(exc).strip().splitlines()[0]) from None
    except AssertionError as exc:  # lm-eval asserts when a request does not fit the model's context
        if not _raised_in_lm_eval(exc):
            raise
        context = position_limit(getattr(model, "config", None))
        raise DepthpruneError(f"tasks {', '.join(names)} have requests longer than the model's context"
                              f"{f' of {context} positions' if context else ''}; use a model with a longer context "
                              "or other tasks") from exc
    return {"role": role, "model": model_name, "command": command, **result}


__all__ = ["check_tasks", "evaluate_tasks", "lm_eval_available", "parse_tasks"]
