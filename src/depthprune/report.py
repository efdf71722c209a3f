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
import html
import json
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DepthpruneError
from .export import model_card, write_file_atomic
from .plots import plot_layer_scores, plot_quality, plot_speed
from .summary import workload_noise, Table, eval_tasks, quality_table, speed_table, task_rows

log = logging.getLogger(__name__)

ROLES = ("dense", "pruned")
META_KEYS = ("lm_eval_version", "num_fewshot", "limit")

METRIC_WHY = {
    "bi": "Block Influence (ShortGPT, arXiv 2403.03853): BI = 1 - mean cosine similarity between a layer's "
          "input and output hidden states over the calibration tokens. A low BI means the layer barely "
          "changes the residual stream, so the layers with the lowest BI were removed.",
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


@dataclass
class ReportPaths:
    markdown: Path
    html: Path
    model_card: Path
    images: list[Path]


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


def read_evals(directory: Path | str, prune: dict) -> tuple[dict | None, dict, list[str]]:
    """Task metrics per role from ``DIR/eval/*.json``; returns (evals, file -> role, eval commands)."""
    directory = Path(directory)
    folder = directory / "eval"
    if not folder.is_dir():
        return None, {}, []
    evals: dict = {"dense": {}, "pruned": {}, "meta": {}}
    files: dict = {}
    commands: list[str] = []
    for path in sorted(folder.glob("*.json")):
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


def load(directory: Path | str) -> ReportInputs:
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
    evals, files, commands = read_evals(directory, prune)
    bench = None
    if (directory / "bench.json").is_file():
        bench = _read_json(directory / "bench.json")
        _check_bench(directory / "bench.json", bench)
        if "ratios" not in bench:
            log.warning("%s is a single-model benchmark, not a comparison; speed ratios left out",
                        directory / "bench.json")
            bench = None
    return ReportInputs(directory, prune, evals, files, commands, bench)


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
    out.append(("this report", shlex.join(["depthprune", "report", str(inputs.directory)])))
    return out


def _why(prune: dict) -> str:
    metric = prune.get("metric", "bi")
    text = METRIC_WHY.get(metric, f"Each layer was scored with the `{metric}` metric; the lowest-scoring layers "
                                  "were removed.")
    n = prune["num_layers_before"] - prune["num_layers_after"]
    cal = prune.get("calibration") or {}
    extra = (f" Strategy `{prune.get('strategy', 'one-shot')}` removed {n} of {prune['num_layers_before']} layers. "
             f"Calibration: {cal.get('source', '?')}, {cal.get('samples', '?')} sequences × "
             f"{cal.get('seq_len', '?')} tokens.")
    protect = [f"the first {prune['protect_first']}" if prune.get("protect_first") else "",
               f"the last {prune['protect_last']}" if prune.get("protect_last") else ""]
    protect = " and ".join(p for p in protect if p)
    if protect:
        extra += f" Protected from removal: {protect} layers."
    return text + extra


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


def render_markdown(inputs: ReportInputs, images: dict[str, str]) -> str:
    """report.md; ``images`` maps plot names to file names relative to the report."""
    prune = inputs.prune
    removed = ", ".join(str(i) for i in prune["removed_layers"])
    lines = [f"# {_title(prune)}", "",
             f"Removed layers (0-based, original numbering): **{removed}**.", "",
             "## What was removed and why", "", _why(prune), ""]
    if "scores" in images:
        lines += [f"![layer scores]({images['scores']})", ""]
    lines += _removed_table(prune).to_markdown() + [""]
    lines += ["## Quality", ""] + quality_table(prune, inputs.evals).to_markdown() + [""]
    if "quality" in images:
        lines += [f"![quality]({images['quality']})", ""]
    if inputs.evals is None:
        lines += ["No task accuracy yet: run `depthprune eval DIR --tasks piqa,hellaswag --role pruned` and "
                  "`depthprune eval DENSE --tasks piqa,hellaswag --role dense --results DIR/eval`, or "
                  "`depthprune prune ... --eval-tasks piqa,hellaswag`, then `depthprune report DIR` again.", ""]
    lines += ["## Speed", ""]
    speed = speed_table(inputs.bench)
    if speed is None:
        lines += ["No speed measurement yet: run `depthprune prune --bench`, or "
                  "`depthprune bench DIR --compare DENSE --json DIR/bench.json`.", ""]
    else:
        lines += speed.to_markdown() + [""]
        if "speed" in images:
            lines += [f"![speed]({images['speed']})", ""]
    lines += ["## Reproduce", ""]
    for label, cmd in _commands(inputs):
        lines += [f"{label}:", "", "```sh", cmd, "```", ""]
    lines += _versions_table(inputs).to_markdown() + [""]
    if inputs.eval_files:
        lines += ["Evaluation files: " + ", ".join(f"`{k}` ({v})" for k, v in inputs.eval_files.items()) + ".", ""]
    return "\n".join(lines)


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
    prune = inputs.prune
    esc = html.escape

    def img(name: str, alt: str) -> str:
        return f"<img alt='{esc(alt)}' src='{_data_uri(images[name])}'>" if name in images else ""

    removed = ", ".join(str(i) for i in prune["removed_layers"])
    parts = [f"<h1>{esc(_title(prune))}</h1>",
             f"<p>Removed layers (0-based, original numbering): <span class='removed'>{esc(removed)}</span>.</p>",
             "<h2>What was removed and why</h2>", f"<p>{esc(_why(prune).replace('`', ''))}</p>",
             img("scores", "layer scores"),
             _removed_table(prune).to_html(),
             "<h2>Quality</h2>", quality_table(prune, inputs.evals).to_html(), img("quality", "quality")]
    if inputs.evals is None:
        parts.append("<p class='note'>No task accuracy yet: run <code>depthprune eval DIR --tasks piqa,hellaswag "
                     "--role pruned</code> and <code>depthprune eval DENSE --tasks piqa,hellaswag --role dense "
                     "--results DIR/eval</code>, or <code>depthprune prune ... --eval-tasks piqa,hellaswag</code>, "
                     "then <code>depthprune report DIR</code> again.</p>")
    parts.append("<h2>Speed</h2>")
    speed = speed_table(inputs.bench)
    if speed is None:
        parts.append("<p class='note'>No speed measurement yet: run depthprune prune --bench, or depthprune bench "
                     "DIR --compare DENSE --json DIR/bench.json.</p>")
    else:
        parts += [speed.to_html(), img("speed", "speed")]
    parts.append("<h2>Reproduce</h2>")
    for label, cmd in _commands(inputs):
        parts.append(f"<p>{esc(label)}:</p><pre>{esc(cmd)}</pre>")
    parts.append(_versions_table(inputs).to_html())
    if inputs.eval_files:
        parts.append("<p class='note'>Evaluation files: " +
                     esc(", ".join(f"{k} ({v})" for k, v in inputs.eval_files.items())) + ".</p>")
    body = "\n".join(p for p in parts if p)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{esc(_title(prune))}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


OWN_PLOTS = {"report_quality.png", "report_speed.png"}


def write_report(directory: Path | str) -> ReportPaths:
    """Write report.md, report.html, the plots, and refresh README.md in ``directory`` (each file atomically).

    Everything is rendered before anything is written: files that disagree or are malformed give
    one sentence naming the directory and leave it as it was.
    """
    import tempfile

    inputs = load(directory)
    folder = inputs.directory
    with tempfile.TemporaryDirectory(prefix="depthprune-report-") as tmp:
        try:
            made = _make_plots(inputs, Path(tmp))
            md = render_markdown(inputs, {k: v.name for k, v in made.items()})
            page = render_html(inputs, made)
            card = model_card(inputs.prune, evals=inputs.evals, bench=inputs.bench)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise DepthpruneError(f"the files in {folder} (depthprune.json, bench.json, eval/*.json) are malformed or "
                                  f"disagree ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                  "re-create them with depthprune") from exc
        images = {}
        for name, path in made.items():
            data = path.read_bytes()
            images[name] = write_file_atomic(folder / path.name, lambda p, data=data: p.write_bytes(data))
    for stale in OWN_PLOTS - {p.name for p in images.values()}:  # e.g. bench.json was removed since
        (folder / stale).unlink(missing_ok=True)
    md_path = write_file_atomic(folder / "report.md", lambda p: p.write_text(md, encoding="utf-8"))
    html_path = write_file_atomic(folder / "report.html", lambda p: p.write_text(page, encoding="utf-8"))
    card_path = write_file_atomic(folder / "README.md", lambda p: p.write_text(card, encoding="utf-8"))
    return ReportPaths(md_path, html_path, card_path, list(images.values()))
