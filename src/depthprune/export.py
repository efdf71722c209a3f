"""Writing results: atomic directories and files, the pruned checkpoint, its model card."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import DepthpruneError
from .guards.outputs import (appeared_meanwhile, check_not_input, check_replaceable, commit, first_seen,
                             prepare_parent, remember, tmp_prefix)
from .plots import plot_layer_scores
from .reports import PruneReport


def check_output_dir(out: Path | str, overwrite: bool, inputs: Iterable[object] = ()) -> Path:
    """Fail before any heavy work if ``out`` cannot or must not be written (see :mod:`depthprune.guards.outputs`).

    Refuses an existing ``out`` without ``overwrite``, and with it anything but a previous depthprune
    output or an empty directory; refuses ``out`` equal to, inside or containing any of ``inputs``;
    creates the parent and proves it writable; removes stale temporary siblings of killed runs.
    """
    out = Path(out).expanduser()
    check_not_input(out, inputs)
    check_replaceable(out, overwrite, kind="directory")
    prepare_parent(out)
    remember(out)
    return out


def check_output_file(path: Path | str, overwrite: bool, inputs: Iterable[object] = (), flag: str = "--out") -> Path:
    """Like :func:`check_output_dir` for a single output file."""
    path = Path(path).expanduser()
    check_not_input(path, inputs, flag)
    check_replaceable(path, overwrite, kind="file", flag=flag)
    prepare_parent(path)
    remember(path)
    return path


@contextlib.contextmanager
def atomic_directory(out: Path | str, overwrite: bool = False, inputs: Iterable[object] = ()) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it becomes ``out``, on any failure (also Ctrl-C/SIGTERM) it vanishes.

    The final step never clobbers an ``out`` that appeared (or changed) since this run first checked it.
    """
    out = Path(out).expanduser()
    if first_seen(out) is None and out.exists():
        raise appeared_meanwhile(out)
    out = check_output_dir(out, overwrite, inputs)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(out), dir=out.parent))
    try:
        yield tmp
        _normal_permissions(tmp)
        commit(tmp, out, overwrite=overwrite, kind="directory")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _normal_permissions(root: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; give the result the usual umask-based modes."""
    umask = _umask()
    os.chmod(root, 0o777 & ~umask)
    for path in root.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write_json_atomic(path: Path | str, data: dict, *, overwrite: bool = True) -> Path:
    """Write JSON to a temp file beside ``path``, then rename it into place."""
    return write_file_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"),
                             overwrite=overwrite)


def write_file_atomic(path: Path | str, writer, *, overwrite: bool = True) -> Path:
    """Call ``writer(tmp_path)`` then rename the temp file to ``path`` (for plots and the like).

    With ``overwrite=False`` an existing ``path`` (or one that appears meanwhile) is never replaced.
    """
    path = Path(path).expanduser()
    if not overwrite and first_seen(path) is None and path.exists():
        raise appeared_meanwhile(path)
    check_replaceable(path, overwrite, kind="file")
    prepare_parent(path)
    remember(path)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path), suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        commit(Path(tmp), path, overwrite=overwrite, kind="file")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def model_card(report: PruneReport | dict, *, evals: dict | None = None, bench: dict | None = None) -> str:
    """The README.md of a pruned checkpoint: what was removed, quality and (when known) task accuracy and speed.

    ``evals`` is ``{"dense": {task: metrics}, "pruned": {task: metrics}, "meta": {...}}`` (see
    :func:`depthprune.report.read_evals`), ``bench`` a :class:`~depthprune.speed.BenchComparison` as JSON.
    """
    from .summary import quality_table, speed_table

    if isinstance(report, dict):
        report = PruneReport(**{k: v for k, v in report.items() if k in PruneReport.__dataclass_fields__})
    removed = ", ".join(str(i) for i in report.removed_layers)
    lines = [
        "---",
        "library_name: transformers",
        "tags: [depthprune, layer-pruning, shortgpt]",
        f"base_model: {report.model}" if "/" in report.model and not report.model.startswith((".", "/")) else
        f"# base model: {report.model}",
        "---",
        "",
        f"# {report.model}, {report.num_layers_before - report.num_layers_after} layers removed",
        "",
        f"Made with [depthprune](https://pypi.org/project/depthprune/) {report.versions.get('depthprune', '')}: "
        f"metric `{report.metric}`, strategy `{report.strategy}`. This is an ordinary transformers checkpoint: "
        "`AutoModelForCausalLM.from_pretrained(this_dir)` loads it, no custom code.",
        "",
        "## Results",
        "",
        *quality_table(report.to_json(), evals).to_markdown(),
    ]
    speed = speed_table(bench)
    if speed is not None:
        lines += ["", "## Speed", "", *speed.to_markdown()]
    cal = report.calibration
    lines += [
        "",
        f"Removed layers (0-based, original numbering): {removed}.",
        "",
        f"Calibration: `{cal.get('source')}`, {cal.get('samples')} sequences x {cal.get('seq_len')} tokens "
        f"({cal.get('tokens', '?')} real tokens), seed {cal.get('seed', '-')}.",
        "",
        "![layer scores](layer_scores.png)",
        "",
        "Full provenance (scores per layer, settings, library versions) is in `depthprune.json`.",
        "",
    ]
    if report.command:
        lines += ["Made with:", "", "```sh", report.command, "```", ""]
    return "\n".join(lines)


def save_pruned(model, tokenizer, report: PruneReport, out: Path | str, *, overwrite: bool = False,
                bench: dict | None = None, evals: dict | None = None) -> Path:
    """Write the pruned checkpoint with its evidence (``bench.json``, ``eval/{role}.json`` if given) into ``out``, atomically."""
    inputs = [report.model, (report.calibration or {}).get("source")]
    with atomic_directory(out, overwrite, inputs=inputs) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "depthprune.json").write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        if bench is not None:
            (tmp / "bench.json").write_text(json.dumps(bench, indent=2) + "\n", encoding="utf-8")
        card_evals = None
        if evals:
            from .report import read_evals

            (tmp / "eval").mkdir()
            for role, result in evals.items():
                (tmp / "eval" / f"{role}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            card_evals = read_evals(tmp, report.to_json())[0]
        (tmp / "README.md").write_text(model_card(report, bench=bench, evals=card_evals), encoding="utf-8")
        plot_layer_scores(report.scores, tmp / "layer_scores.png", removed=report.removed_layers,
                          metric=report.metric, title=f"{report.model}: {report.metric} per layer (red = removed)")
    return Path(out).expanduser()
