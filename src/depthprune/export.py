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


def _base_model_id(report: PruneReport) -> str | None:
    """A Hub id only when the source was loaded from the Hub. A demo alias's upstream model is only what its
    GGUF's file name says, so it goes in the card's text, not in the metadata the Hub trusts."""
    return (report.source or {}).get("hub_id")


def card_front_matter(report: PruneReport) -> list[str]:
    """YAML metadata the Hub reads: ``base_model`` (never a made-up id for local/GGUF sources) and ``tags``."""
    lines = ["---", "library_name: transformers", "tags:"]
    lines += [f"- {tag}" for tag in ("depthprune", "layer-pruning", "shortgpt", f"metric-{report.metric}")]
    base = _base_model_id(report)
    if base:
        lines.append(f"base_model: {base}")
    lines.append("---")
    return lines


def base_model_line(report: PruneReport) -> str:
    """One sentence of lineage for the card body, saying what is known about a non-Hub source."""
    source = report.source or {}
    kind, dtype = source.get("kind"), source.get("source_dtype")
    dtype_note = f", weights {dtype}" if dtype else ""
    if kind == "hub":
        return f"[{report.model}](https://huggingface.co/{report.model}){dtype_note}."
    if kind == "demo":
        upstream = source.get("upstream")
        link = (f", a GGUF quantization of [{upstream}](https://huggingface.co/{upstream}) according to its "
                "file name" if upstream else "")
        return f"depthprune demo alias `{report.model}` ({source.get('description', 'GGUF')}){link}."
    if kind == "gguf":
        return f"local GGUF file `{report.model}`{dtype_note} (not a Hub id; dequantized for pruning)."
    if kind == "local":
        return f"local checkpoint directory `{report.model}`{dtype_note} (not a Hub id)."
    return f"`{report.model}`{dtype_note}."


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
        *card_front_matter(report),
        "",
        f"# {report.model}, {report.num_layers_before - report.num_layers_after} layers removed",
        "",
        f"Made with depthprune {report.versions.get('depthprune', '')} (layer pruning, ShortGPT Block Influence "
        f"and friends): metric `{report.metric}`, strategy `{report.strategy}`. This is an ordinary transformers "
        "checkpoint: `AutoModelForCausalLM.from_pretrained(this_dir)` loads it, no custom code.",
        "",
        f"Base model: {base_model_line(report)}",
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


SAVE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_save_dtype(save_dtype: str, report: PruneReport, model) -> str:
    """``auto``: the dtype the weights came in (``report.source['source_dtype']``), else the model's own."""
    if save_dtype not in SAVE_DTYPES:
        raise DepthpruneError(f"unknown --save-dtype '{save_dtype}': use auto, float32, bfloat16 or float16")
    if save_dtype != "auto":
        return save_dtype
    declared = (report.source or {}).get("source_dtype")
    if declared in SAVE_DTYPES[1:]:
        return declared
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def _cast_state_dict(model, dtype) -> dict:
    """The model's state dict with floating tensors cast to ``dtype``; tied tensors stay one shared tensor
    (so transformers still sees them as tied and writes them once)."""
    cast: dict[int, object] = {}
    state = {}
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or tensor.dtype == dtype:
            state[name] = tensor
            continue
        key = tensor.data_ptr()
        if key not in cast:
            cast[key] = tensor.to(dtype)
        state[name] = cast[key]
    return state


def _save_model(model, folder: Path, dtype_name: str) -> None:
    import torch

    dtype = getattr(torch, dtype_name)
    if next(model.parameters()).dtype == dtype and all(p.dtype == dtype for p in model.parameters()):
        model.save_pretrained(folder, safe_serialization=True)
        return
    model.save_pretrained(folder, safe_serialization=True, state_dict=_cast_state_dict(model, dtype))
    # save_pretrained writes the dtype of the in-memory parameters into config.json: name the saved one instead
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key in ("dtype", "torch_dtype"):
        if key in config or key == "dtype":
            config[key] = dtype_name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def weights_bytes(folder: Path) -> int:
    """Bytes of the weight files (``*.safetensors``, ``*.bin``) in a checkpoint directory."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def write_evidence(folder: Path, report: PruneReport, bench: dict | None, evals: dict | None) -> dict | None:
    """Write ``bench.json`` and ``eval/{role}.json`` into an output folder; return the evals as the model card reads them."""
    if bench is not None:
        (folder / "bench.json").write_text(json.dumps(bench, indent=2) + "\n", encoding="utf-8")
    if not evals:
        return None
    from .report import read_evals

    (folder / "eval").mkdir()
    for role, result in evals.items():
        (folder / "eval" / f"{role}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return read_evals(folder, report.to_json())[0]


def save_pruned(model, tokenizer, report: PruneReport, out: Path | str, *, overwrite: bool = False,
                bench: dict | None = None, evals: dict | None = None, save_dtype: str = "auto") -> Path:
    """Write the pruned checkpoint with its evidence (``bench.json``, ``eval/{role}.json`` if given) into ``out``, atomically.

    The weights are saved in ``save_dtype`` (``auto``: the dtype the model came in); the in-memory model keeps
    its own dtype. ``report.save_dtype`` and ``report.checkpoint_bytes`` are filled in.
    """
    dtype_name = resolve_save_dtype(save_dtype, report, model)
    inputs = [report.model, (report.calibration or {}).get("source")]
    with atomic_directory(out, overwrite, inputs=inputs) as tmp:
        _save_model(model, tmp, dtype_name)
        report.save_dtype = dtype_name
        report.checkpoint_bytes = weights_bytes(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "depthprune.json").write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        card_evals = write_evidence(tmp, report, bench, evals)
        (tmp / "README.md").write_text(model_card(report, bench=bench, evals=card_evals), encoding="utf-8")
        plot_layer_scores(report.scores, tmp / "layer_scores.png", removed=report.removed_layers,
                          metric=report.metric, title=f"{report.model}: {report.metric} per layer (red = removed)")
    return Path(out).expanduser()
