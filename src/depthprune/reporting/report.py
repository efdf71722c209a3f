"""``depthprune report DIR``: one page that says what was removed, why, and what it cost.

Reads from a directory written by ``prune``:

* ``depthprune.json`` (required): the :class:`~depthprune.reports.PruneReport`;
* ``eval/*.json`` (optional): task accuracy of the dense and the pruned model, one or more files
  per model (format in ``docs/report.md``; the return value of
  ``depthprune.lmeval_tasks.run_lm_eval`` plus ``"role": "dense"|"pruned"`` is one);
* ``bench.json`` (optional): a :class:`~depthprune.speed.BenchComparison` (``prune --bench``
  or ``bench PRUNED --compare DENSE --json PRUNED/bench.json``).

Writes ``report.md`` (with ``layer_scores.png``, ``report_quality.png``,
``report_speed.png`` beside it), a self-contained ``report.html`` (the same plots as
base64 data URIs, inline CSS, no external assets) and refreshes the model card
``README.md`` so it carries the same results table. Every file is replaced atomically.
"""

from __future__ import annotations

import base64
import json
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from depthprune.errors import DepthpruneError
from depthprune.reporting.card import ENV, model_card
from depthprune.reporting.plots import plot_layer_scores, plot_quality, plot_search, plot_speed
from depthprune.reporting.tables import (workload_noise, Table, eval_tasks, quality_table, search_table, speed_table,
                                         task_rows)

log = logging.getLogger(__name__)

ROLES = ("dense", "pruned")
META_KEYS = ("lm_eval_version", "num_fewshot", "limit")

METRIC_WHY = {
    "bi": "Block Influence (ShortGPT, arXiv 2403.03853): BI = 1 - mean cosine similarity between a layer's "
          "input and output hidden states over the calibration tokens. A low BI means the layer barely "
          "changes the residual stream, so the layers with the lowest BI were removed.",
    "repaired-error": "`prune --auto` compared removal sets, each with several repairs, by their perplexity on "
                      "calibration windows no fit saw (the search table below), and kept the best. Its removal set "
                      "came from repair-aware selection: the contiguous block whose successor's input the linear "
                      "map reproduces best (cross-validated relative error), not the block that changes the "
                      "residual stream least.",
}


@dataclass
class ReportInputs:
    """Everything a report shows, as plain data read from a pruned model directory."""

    directory: Path
    prune: dict
    evals: dict | None = None          # {"dense": {task: metrics}, "pruned": {...}, "meta": {...}}
    eval_files: dict = field(default_factory=dict)   # file name -> role, or "ignored: why"
    eval_commands: list[str] = field(default_factory=list)
    bench: dict | None = None
    extra: list[str] = field(default_factory=list)  # the --with result files
    out: Path | None = None                          # where the report is written (its own --out)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DepthpruneError(f"could not read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DepthpruneError(f"{path} does not hold a JSON object")
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_prune_report(path: Path, prune: dict) -> None:
    """depthprune.json must agree with itself: layer indices in range, one score per original layer."""
    before, after = prune.get("num_layers_before"), prune.get("num_layers_after")
    removed, scores = prune.get("removed_layers"), prune.get("scores")
    if not (_is_int(before) and _is_int(after) and 0 < after <= before):
        raise DepthpruneError(f"{path}: num_layers_before/num_layers_after are not layer counts")
    if not isinstance(removed, list) or not all(_is_int(i) and 0 <= i < before for i in removed) \
            or len(set(removed)) != len(removed):
        raise DepthpruneError(f"{path}: removed_layers must be distinct layer indices between 0 and {before - 1}")
    if len(removed) != before - after:
        raise DepthpruneError(f"{path}: {len(removed)} removed layers but the layer count went {before} -> {after}")
    if not isinstance(scores, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores) \
            or (scores and len(scores) != before):
        raise DepthpruneError(f"{path}: scores must be a list of {before} numbers, one per original layer")


def _check_bench(path: Path, bench: dict) -> None:
    if "ratios" not in bench:
        return
    ok = (isinstance(bench.get("ratios"), dict) and isinstance(bench["ratios"].get("workloads"), dict)
          and isinstance(bench.get("baseline"), dict) and isinstance(bench.get("candidate"), dict)
          and isinstance(bench.get("labels"), list))
    if not ok:
        raise DepthpruneError(f"{path} is not a depthprune bench comparison (written by `depthprune bench --compare "
                              "--json` or `prune --bench`); remove or re-create it")


def _role(path: Path, data: dict, prune: dict, directory: Path) -> str | None:
    role = data.get("role")
    if role in ROLES:
        return role
    stem = path.stem.lower()
    if "dense" in stem or "baseline" in stem:
        return "dense"
    if "pruned" in stem:
        return "pruned"
    model = data.get("model")
    if isinstance(model, str):
        if model == prune.get("model"):
            return "dense"
        try:
            if Path(model).expanduser().resolve() == directory.resolve():
                return "pruned"
        except OSError:
            pass
    return None


def read_evals(directory: Path | str, prune: dict, extra: Sequence[Path] = ()) -> tuple[dict | None, dict, list[str]]:
    """Task metrics per role from ``DIR/eval/*.json`` and the ``extra`` result files; returns (evals, file -> role,
    eval commands)."""
    directory = Path(directory)
    folder = directory / "eval"
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    paths += list(extra)
    if not paths:
        return None, {}, []
    evals: dict = {"dense": {}, "pruned": {}, "meta": {}}
    files: dict = {}
    commands: list[str] = []
    for path in paths:
        data = _read_json(path)
        role = _role(path, data, prune, directory)
        tasks = eval_tasks(data)
        if role is None:
            files[path.name] = "ignored: no role (add \"role\": \"dense\" or \"pruned\")"
            log.warning("%s: cannot tell whether it is the dense or the pruned model; ignored", path)
            continue
        if not tasks:
            files[path.name] = "ignored: no task results"
            log.warning("%s holds no task results; ignored", path)
            continue
        files[path.name] = role
        evals[role].update(tasks)
        for key in META_KEYS:
            if data.get(key) is not None:
                seen = evals["meta"].setdefault(key, [])
                if data[key] not in seen:
                    seen.append(data[key])
        if isinstance(data.get("command"), str) and data["command"] not in commands:
            commands.append(data["command"])
    if not evals["dense"] and not evals["pruned"]:
        return None, files, commands
    # one value per setting, or all distinct ones when files differ (e.g. MMLU run with a smaller limit)
    evals["meta"] = {k: v[0] if len(v) == 1 else " / ".join(map(str, v)) for k, v in evals["meta"].items()}
    return evals, files, commands


def _extra_files(extra: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(eval result files, bench files) among the ``--with`` paths (a folder: its *.json)."""
    evals, benches = [], []
    for item in extra:
        path = Path(item).expanduser()
        if not path.exists():
            raise DepthpruneError(f"--with {path}: no such file or folder")
        for file in sorted(path.glob("*.json")) if path.is_dir() else [path]:
            data = _read_json(file)
            (benches if "ratios" in data or "workloads" in data else evals).append(file)
    return evals, benches


def load(directory: Path | str, extra: Sequence[str | Path] = ()) -> ReportInputs:
    """What a report shows: ``DIR/depthprune.json``, ``DIR/eval/*.json``, ``DIR/bench.json`` and the ``extra``
    result files (task results of ``depthprune eval``, a ``depthprune bench --compare`` JSON)."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DepthpruneError(f"{directory} is not a directory; give the output directory of `depthprune prune`")
    meta = directory / "depthprune.json"
    if not meta.is_file():
        raise DepthpruneError(f"{directory} has no depthprune.json; give the output directory of `depthprune prune`")
    prune = _read_json(meta)
    for key in ("removed_layers", "scores", "num_layers_before", "num_layers_after"):
        if key not in prune:
            raise DepthpruneError(f"{meta} lacks '{key}'; is it a depthprune prune report?")
    _check_prune_report(meta, prune)
    extra_evals, extra_benches = _extra_files(extra)
    evals, files, commands = read_evals(directory, prune, extra_evals)
    bench_path = extra_benches[-1] if extra_benches else directory / "bench.json"
    bench = None
    if bench_path.is_file():
        bench = _read_json(bench_path)
        _check_bench(bench_path, bench)
        if "ratios" not in bench:
            log.warning("%s is a single-model benchmark, not a comparison; speed ratios left out", bench_path)
            bench = None
    return ReportInputs(directory, prune, evals, files, commands, bench, [str(e) for e in extra])


# --- content shared by both renderings -------------------------------------------------------------------

def reproduce_command(prune: dict) -> tuple[str, bool]:
    """The recorded command line, or (for reports made through the API) an equivalent reconstructed one."""
    if prune.get("command"):
        return prune["command"], False
    cal = prune.get("calibration") or {}
    argv = ["depthprune", "prune", str(prune.get("model")), "--remove",
            str(prune["num_layers_before"] - prune["num_layers_after"]), "--metric", str(prune.get("metric", "bi"))]
    for flag, key in (("--data", "source"), ("--samples", "samples"), ("--seq-len", "seq_len"), ("--seed", "seed")):
        if cal.get(key) is not None:
            argv += [flag, str(cal[key])]
    for flag, key in (("--protect-first", "protect_first"), ("--protect-last", "protect_last")):
        if prune.get(key):
            argv += [flag, str(prune[key])]
    argv += ["--out", "OUT"]
    return shlex.join(argv), True


def _removed_table(prune: dict) -> Table:
    scores = prune["scores"]
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    rank = {layer: r for r, layer in enumerate(order)}
    rows = [[str(i), f"{scores[i]:.5f}", str(rank[i])] for i in prune["removed_layers"]]
    return Table("Removed layers", ["layer (0-based)", f"{prune.get('metric', 'score')}", "rank (0 = lowest)"], rows)


def _versions_table(inputs: ReportInputs) -> Table:
    rows = [[f"prune: {k}", str(v)] for k, v in (inputs.prune.get("versions") or {}).items()]
    if inputs.bench:
        rows += [[f"bench: {k}", str(v)] for k, v in (inputs.bench["baseline"].get("versions") or {}).items()]
    if inputs.evals and inputs.evals["meta"].get("lm_eval_version"):
        rows.append(["eval: lm-eval", str(inputs.evals["meta"]["lm_eval_version"])])
    return Table("Versions", ["component", "version"], rows)


def _commands(inputs: ReportInputs) -> list[tuple[str, str]]:
    cmd, reconstructed = reproduce_command(inputs.prune)
    note = " (equivalent command reconstructed from depthprune.json, which records none)" if reconstructed else ""
    out = [("prune" + note, cmd)]
    for c in inputs.eval_commands:
        if c != cmd:  # prune --eval-tasks records the prune command itself
            out.append(("task evaluation", c))
    if inputs.bench and inputs.bench.get("command") and inputs.bench["command"] != cmd:
        out.append(("speed", inputs.bench["command"]))
    argv = ["depthprune", "report", str(inputs.directory)]
    if inputs.extra:
        argv += ["--with", ",".join(inputs.extra)]
    out.append(("this report", shlex.join(argv + ["--out", str(inputs.out or "REPORT_DIR")])))
    return out


def _why(prune: dict) -> dict:
    """The parts of "what was removed and why"; the templates escape the user strings among them."""
    metric = prune.get("metric", "bi")
    cal = prune.get("calibration") or {}
    protect = [f"the first {prune['protect_first']}" if prune.get("protect_first") else "",
               f"the last {prune['protect_last']}" if prune.get("protect_last") else ""]
    return {"known": METRIC_WHY.get(metric), "metric": metric, "strategy": prune.get("strategy", "one-shot"),
            "removed": prune["num_layers_before"] - prune["num_layers_after"], "before": prune["num_layers_before"],
            "source": cal.get("source", "?"), "samples": cal.get("samples", "?"), "seq_len": cal.get("seq_len", "?"),
            "protect": " and ".join(p for p in protect if p)}


# --- plots --------------------------------------------------------------------------------------------------

def _make_plots(inputs: ReportInputs, folder: Path) -> dict[str, Path]:
    """Write the plots into ``folder``; name -> file."""
    prune = inputs.prune
    out: dict[str, Path] = {}
    out["scores"] = plot_layer_scores(prune["scores"], folder / "layer_scores.png", removed=prune["removed_layers"],
                                      metric=prune.get("metric", "bi"),
                                      title=f"{prune.get('model')}: {prune.get('metric', 'bi')} per layer "
                                            "(red = removed)")
    ppl = prune.get("perplexity") or {}
    ppl_pair = None
    if ppl.get("dense") and ppl.get("pruned"):
        ppl_pair = (ppl["dense"]["ppl"], ppl["pruned"]["ppl"])
    tasks = [(f"{t} {m}", d, p) for t, m, d, _, p, _ in task_rows(inputs.evals)]
    if ppl_pair or tasks:
        source = ((ppl.get("dense") or {}).get("settings") or {}).get("source", "")
        out["quality"] = plot_quality(ppl_pair, tasks, folder / "report_quality.png", ppl_source=source)
    if prune.get("search"):
        out["search"] = plot_search(prune["search"], folder / "report_search.png",
                                    title=f"{prune.get('model')}: prune --auto, validation perplexity")
    if inputs.bench:
        rows = []
        for r in inputs.bench["ratios"]["workloads"].values():
            label = f"prefill {r['seq_len']}" if r["kind"] == "prefill" else f"decode {r['new_tokens']}"
            noisy, _ = workload_noise(r)
            if noisy:
                label += "\n(unreliable)"
            rows.append((label, None if noisy else r.get("speedup"), r.get("ideal_speedup")))
        out["speed"] = plot_speed(rows, folder / "report_speed.png",
                                  title="speedup of the pruned model (measured vs ideal from FLOPs)")
    return out


# --- renderings ---------------------------------------------------------------------------------------------

def _title(prune: dict) -> str:
    n = prune["num_layers_before"] - prune["num_layers_after"]
    return f"{prune.get('model')}: {n} of {prune['num_layers_before']} layers removed"


def _context(inputs: ReportInputs) -> dict:
    """What both renderings show, as raw values (each template escapes for its format)."""
    prune = inputs.prune
    return {"model": prune.get("model"), "title": _title(prune), "why": _why(prune),
            "removed": ", ".join(str(i) for i in prune["removed_layers"]), "no_evals": inputs.evals is None,
            "commands": _commands(inputs), "eval_files": inputs.eval_files}


def render_markdown(inputs: ReportInputs, images: dict[str, str]) -> str:
    """report.md; ``images`` maps plot names to file names relative to the report."""
    speed = speed_table(inputs.bench)
    return ENV.get_template("report.md.j2").render(
        **_context(inputs), images=images, removed_table=_removed_table(inputs.prune).to_markdown(),
        quality=quality_table(inputs.prune, inputs.evals).to_markdown(),
        speed=speed.to_markdown() if speed is not None else None, versions=_versions_table(inputs).to_markdown(),
        search=search_table(inputs.prune["search"]).to_markdown() if inputs.prune.get("search") else None)


CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1080px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45;background:#fff}
h1{font-size:1.6em;border-bottom:2px solid #1f77b4;padding-bottom:.3em}
h2{font-size:1.25em;margin-top:1.6em;color:#1f4e79}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#eef3f8}td:first-child,th:first-child{text-align:left}
tbody tr:nth-child(even){background:#f8f8f8}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
pre{background:#f4f4f4;padding:.6em;overflow-x:auto;border-radius:4px}
.note{color:#555;font-size:.88em}.removed{color:#d62728;font-weight:bold}
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(inputs: ReportInputs, images: dict[str, Path]) -> str:
    """report.html: self-contained (plots embedded as data URIs, inline CSS)."""
    return ENV.get_template("report.html.j2").render(
        **_context(inputs), images={name: _data_uri(path) for name, path in images.items()}, css=CSS,
        removed_table=_removed_table(inputs.prune), quality=quality_table(inputs.prune, inputs.evals),
        speed=speed_table(inputs.bench), versions=_versions_table(inputs),
        search=search_table(inputs.prune["search"]) if inputs.prune.get("search") else None)


def render_report(inputs: ReportInputs, folder: Path, *, out: Path | None = None) -> list[str]:
    """Render report.md, report.html, the plots and the refreshed model card into ``folder`` (the report's staged
    output); returns the file names. Files that disagree or are malformed give one sentence."""
    inputs.out = out
    try:
        made = _make_plots(inputs, folder)
        md = render_markdown(inputs, {k: v.name for k, v in made.items()})
        page = render_html(inputs, made)
        card = model_card(inputs.prune, evals=inputs.evals, bench=inputs.bench)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise DepthpruneError(f"the files in {inputs.directory} (depthprune.json, bench.json, eval/*.json) are "
                              f"malformed or disagree ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); re-create them with depthprune"
                              ) from exc
    (folder / "report.md").write_text(md, encoding="utf-8")
    (folder / "report.html").write_text(page, encoding="utf-8")
    (folder / "README.md").write_text(card, encoding="utf-8")
    return sorted([p.name for p in made.values()] + ["report.md", "report.html", "README.md"])


__all__ = ["ReportInputs", "load", "read_evals", "render_html", "render_markdown", "render_report",
           "reproduce_command"]
