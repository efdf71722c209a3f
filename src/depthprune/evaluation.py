"""Perplexity on held-out text (non-overlapping windows, padding masked)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import CalibrationSet, iter_texts, sequential_windows
from .scoring import input_device


@dataclass
class PerplexityResult:
    ppl: float
    nll: float
    tokens: int
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def perplexity_on(model, windows: CalibrationSet, *, batch_size: int = 1, progress: bool = True,
                  desc: str = "perplexity") -> PerplexityResult:
    """exp(mean NLL) of every real token after the first in each window, given the ones before it."""
    device = input_device(model)
    total_nll = 0.0
    total = 0
    with torch.inference_mode():
        for input_ids, mask in tqdm(windows.batches(batch_size), total=windows.num_batches(batch_size),
                                    desc=desc, disable=not progress, unit="window"):
            input_ids, mask = input_ids.to(device), mask.to(device)
            logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            targets = input_ids[:, 1:]
            keep = mask[:, 1:].bool() & mask[:, :-1].bool()
            logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)
            nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            total_nll += float(nll[keep].sum(dtype=torch.float64))
            total += int(keep.sum())
    mean = total_nll / total
    return PerplexityResult(ppl=math.exp(mean), nll=mean, tokens=total, settings=dict(windows.settings))


def perplexity(model, tokenizer, spec: str, *, seq_len: int = 512, max_tokens: int = 40_000,
               batch_size: int = 1, text_field: str = "text", progress: bool = True) -> PerplexityResult:
    """Perplexity of ``model`` on the text SPEC (see :mod:`depthprune.data`)."""
    windows = sequential_windows(tokenizer, iter_texts(spec, text_field=text_field), seq_len=seq_len,
                                 max_tokens=max_tokens, source=spec)
    return perplexity_on(model, windows, batch_size=batch_size, progress=progress)


def parse_tasks(tasks: str | list[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        from .errors import DepthpruneError

        raise DepthpruneError("no task given: pass --tasks with at least one name, e.g. --tasks hellaswag,piqa")
    return names


def check_tasks(tasks: str | list[str], data_dir: str | None = None) -> list[str]:
    """Fail fast (before loading a model) on unknown task names or missing local data files."""
    from .errors import DepthpruneError

    names = parse_tasks(tasks)
    if data_dir is None:
        _check_online_tasks(names)
        return names
    from pathlib import Path

    from .lmeval_tasks import SUPPORTED_TASKS, required_files

    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DepthpruneError(f"--data-dir {root} does not exist or is not a directory")
    for name in names:
        if name not in SUPPORTED_TASKS:
            raise DepthpruneError(f"unknown task '{name}': offline tasks are {', '.join(SUPPORTED_TASKS)}")
        for rel in required_files(name):
            if not (root / rel).exists():
                raise DepthpruneError(f"task '{name}' needs {root / rel}, which does not exist (see docs/lmeval-tasks.md)")
    return names


def _raised_in_lm_eval(exc: BaseException) -> bool:
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and "lm_eval" in frames[-1].filename


def _lm_eval_mentions(name: str) -> bool:
    """Whether any of lm-eval's task YAML files names ``name`` (a cheap text scan; building lm-eval's
    TaskManager index parses ~10,000 YAML files and takes far longer). Without lm-eval: True."""
    import re
    from pathlib import Path

    import importlib.util

    spec = importlib.util.find_spec("lm_eval")  # locate without importing (importing lm-eval is slow)
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


def _check_online_tasks(names: list[str]) -> None:
    """Without --data-dir lm-eval downloads task data: refuse offline runs and unknown names up front."""
    from .errors import DepthpruneError
    from .guards.network import hub_offline, require_hub
    from .lmeval_tasks import STANDARD_TASKS

    for name in names:
        if name not in STANDARD_TASKS and not _lm_eval_mentions(name):
            raise DepthpruneError(f"unknown task '{name}': lm-eval has no task of that name "
                                  f"(offline tasks with --data-dir: {', '.join(STANDARD_TASKS)})")
    if hub_offline():
        raise DepthpruneError(f"tasks {', '.join(names)} need their data: offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE "
                              "is set) give local copies with --data-dir (layout in docs/lmeval-tasks.md)")
    require_hub(f"tasks {', '.join(names)}")


def evaluate_tasks(model, tokenizer, tasks: str | list[str], *, data_dir: str | None = None,
                   limit: int | float | None = None, num_fewshot: int | None = None, batch_size: int = 1,
                   device: str | None = None, model_name: str | None = None, role: str | None = None,
                   command: str | None = None, bootstrap_iters: int = 1000, trust_remote_code: bool = False) -> dict:
    """Task accuracy through lm-evaluation-harness (its standard prompts and metrics).

    With ``data_dir`` the bundled offline task configs read local copies of the
    data (layout of ``docs/lmeval-tasks.md``); without it lm-eval fetches its
    datasets as usual. Returns a JSON-serialisable dict (the shape that
    ``depthprune report`` reads from ``eval/*.json``), tagged with ``role``
    (dense/pruned), ``model`` and ``command``.
    """
    from .errors import DepthpruneError

    names = check_tasks(tasks, data_dir)
    try:
        from .lmeval_tasks import run_lm_eval

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
        from .guards.settings import position_limit

        limit = position_limit(getattr(model, "config", None))
        raise DepthpruneError(f"tasks {', '.join(names)} have requests longer than the model's context"
                              f"{f' of {limit} positions' if limit else ''}; use a model with a longer context "
                              "or other tasks") from exc
    return {"role": role, "model": model_name, "command": command, **result}
