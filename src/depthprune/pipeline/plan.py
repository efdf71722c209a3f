"""From a recipe to a plan: everything that can be known without weights, checked once for every command.

``plan(recipe)`` is pure of model and data work: it reads configs, safetensors and GGUF headers and the file
system, never weights or text. It

1. type-checks the recipe against its one declaration (:mod:`depthprune.recipe.schema`);
2. resolves the model (:func:`depthprune.io.sources.inspect_source`: remote code refused without the flag, files
   that lie refused) and every other input of the run;
3. checks every value that another module or the model's shape decides (metric and strategy, counts against the
   layer count, data specs, task names, optional dependencies);
4. chooses the executor (:data:`EXECUTORS`): the fastest one that honours every field the run sets. A field no
   executor of the command can honour is refused in one sentence naming the conflict; none is ever dropped;
5. lists the stages the runner executes (:mod:`depthprune.pipeline.stages`), in order;
6. declares every output and checks it with :func:`depthprune.io.writer.check_output` (never an input, never
   someone else's file, parent writable).

Only when the plan is accepted does :func:`depthprune.pipeline.runner.execute` touch the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from depthprune.arch.skeleton import meta_skeleton
from depthprune.errors import DepthpruneError
from depthprune.evaluation.lmeval import check_tasks, lm_eval_available
from depthprune.importance.distributed import is_main_process, launched_by_torchrun, launched_world_size, shard_sizes
from depthprune.importance.metrics import LOSS_METRICS, STREAMING_METRICS
from depthprune.importance.streamed import memory_available_bytes
from depthprune.io.data import validate_spec
from depthprune.io.formats.gguf_export import check_exportable_config
from depthprune.io.gguf import gguf_architecture, read_header as read_gguf_header
from depthprune.io.guards.settings import check_device
from depthprune.io.sources import ModelSource, in_memory_source, inspect_source, read_output_record
from depthprune.io.safetensors import stored_names
from depthprune.io.writer import OutputSpec, check_output
from depthprune.quantization.weights import check_method, check_quantizable
from depthprune.recipe.schema import (Recipe, command_fields, flag_of, stage_of)
from depthprune.repair.families import fold_spec, lora_targets
from depthprune.repair.linear import unstored_fold_target
from depthprune.selection.counts import removal_count
from depthprune.selection.laco import LacoSettings
from depthprune.selection.strategies import resolve
from depthprune.pipeline.sweep import combinations
from depthprune.surgery.gguf_cut import check_removal as check_gguf_removal, gguf_output_paths
from depthprune.surgery.in_memory import structure_refusal

log = logging.getLogger(__name__)

DTYPE_WIDTH = {"float32": 4, "bfloat16": 2, "float16": 2}
STREAM_HEADROOM = 0.8  # auto streams when the weights would take more than this share of the available memory


@dataclass
class Plan:
    """What a run will do, decided before any model or data work."""

    recipe: Recipe
    source: ModelSource
    executor: str
    stages: list[str]
    outputs: list[OutputSpec] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # why this executor, what a recipe file was not allowed to do
    removal_count: int | None = None                  # layers to remove (prune, from --remove/--ratio)
    metric: str | None = None                         # the resolved metric
    dense: ModelSource | None = None                  # repair: the dense model the output was pruned from
    record: dict | None = None                        # repair/report: the input output's depthprune.json
    distributed: bool = False

    @property
    def command(self) -> str:
        return self.recipe.command

    def describe(self) -> str:
        """One line for the user: the executor and the stages."""
        return f"{self.command} via {self.executor}: {' -> '.join(self.stages)}"

    def to_json(self) -> dict:
        return {"command": self.command, "executor": self.executor, "stages": list(self.stages),
                "notes": list(self.notes), "distributed": self.distributed}


# --------------------------------------------------------------------------------------------- executors


@dataclass(frozen=True)
class Executor:
    """A way to run a command: where the weights live while it runs, and how the result is cut and written."""

    name: str
    description: str


EXECUTORS = {
    "in-memory": Executor("in-memory", "the whole model in memory"),
    "on-disk": Executor("on-disk", "the checkpoint's kept tensors copied byte for byte; no forward pass"),
    "layer-streamed": Executor("layer-streamed", "one decoder layer in memory at a time, then cut on disk"),
    "gguf-cut": Executor("gguf-cut", "the GGUF file's kept blocks copied byte for byte (quantization kept)"),
}


def _needs_forward(recipe: Recipe) -> bool:
    sel, ev = recipe.selection, recipe.evaluation
    return (sel.layers is None and sel.scores is None) or bool(ev.ppl or ev.tasks or ev.bench)


def _weights_change(recipe: Recipe) -> bool:
    return bool(recipe.repair.methods or recipe.quantization.method
                or (recipe.selection.layers is None and recipe.selection.strategy == "laco"))


def _refusal(recipe: Recipe, source: ModelSource, executor: str) -> str | None:
    """Why ``executor`` cannot honour ``recipe`` (one clause naming the conflict), or None when it can."""
    rec, out, sel = recipe, recipe.output, recipe.selection
    cmd = rec.command
    if executor == "in-memory":
        return None
    if rec.search.auto:
        return "--auto repairs and validates candidate models, which needs the whole model in memory"
    if out.path is None and cmd == "prune":
        return "it writes its result straight to the output path, and none was given (the result stays in memory)"
    if executor == "gguf-cut":
        if cmd != "prune" or out.format != "gguf":
            return "it writes GGUF files only"
        if source.gguf is None:
            return f"the model {source.spec} is not a GGUF file"
        if _weights_change(rec):
            changed = [flag_of(s, f, cmd) for s, f in (("repair", "methods"), ("quantization", "method"))
                       if getattr(getattr(rec, s), f)] or ["--strategy laco"]
            return f"{changed[0]} changes the weights, and a byte-for-byte cut keeps them as they are"
        if out.gguf_type != "f16":
            return (f"--gguf-type {out.gguf_type} asks for re-encoded tensors, and a byte-for-byte cut keeps the "
                    "source file's own quantization")
        if out.save_dtype != "auto":
            return "--save-dtype applies to Hugging Face checkpoints, not to a GGUF cut"
        return None
    # on-disk and layer-streamed: a local safetensors checkpoint, cut on disk
    if source.kind != "local" or not source.safetensors:
        return f"it needs a local safetensors checkpoint directory, and {source.spec} is a {source.kind} model"
    if cmd == "prune" and out.format != "hf":
        return "it writes Hugging Face checkpoints; GGUF export needs the model in memory"
    for section, name in (("quantization", "method"), ("evaluation", "ppl"), ("evaluation", "tasks"),
                          ("evaluation", "bench")):
        if getattr(getattr(rec, section), name):
            return f"{flag_of(section, name, cmd)} needs the whole model in memory"
    rep = rec.repair
    if "lora" in rep.methods:
        return "--repair lora trains the whole model, which needs it in memory"
    if out.save_dtype not in ("auto", source.source_dtype):
        return (f"--save-dtype {out.save_dtype} would convert the weights, and a byte-for-byte cut keeps the "
                f"checkpoint's {source.source_dtype or 'own'} dtype")
    if executor == "on-disk":
        if rep.methods:
            return "--repair linear fits its maps on the model's activations, which needs a forward pass"
        if cmd != "prune" or (sel.layers is None and sel.scores is None):
            return "it chooses no layers (give --layers or --scores)"
        return None
    # layer-streamed: linear repair is fitted from streamed activations (lstsq; folded into the kept layers)
    if rep.methods and rep.objective != "lstsq":
        return (f"--repair-objective {rep.objective} refines the map on activations kept in memory; streamed "
                "linear repair fits lstsq")
    if rep.methods:
        missing = _unstored_fold_target(recipe, source)
        if missing is not None:
            return (f"--repair linear writes its folded map in place of {missing}, which this checkpoint stores under "
                    "other names (transformers converts them on load)")
    if not rep.methods and (sel.layers is not None or (cmd == "prune" and sel.scores is not None)):
        return "nothing needs scoring"
    if recipe.calibration.data == "self":
        return "'self' calibration text is generated by the whole model"
    if not _needs_scoring(recipe):
        return None
    if (cmd == "prune" and sel.strategy != "one-shot") or (cmd == "score" and sel.strategy not in (None, "one-shot")):
        return (f"strategy '{sel.strategy}' re-scores the pruned model, which needs it in memory (layer streaming "
                "scores once: strategy one-shot)")
    metric = resolve(sel.metric, sel.strategy) if cmd == "prune" else (sel.metric or "bi")
    if metric in LOSS_METRICS:
        how = ("needs a backward pass through the whole model" if metric == "taylor"
               else "re-runs every layer for each candidate")
        return f"metric '{metric}' {how}, which one layer at a time cannot do"
    return None


def _unstored_fold_target(recipe: Recipe, source: ModelSource) -> str | None:
    if source.config is None or source.path is None:
        return None
    try:
        skeleton = meta_skeleton(source.config, recipe.runtime.trust_remote_code)
        return unstored_fold_target(skeleton, stored_names(source.path))
    except DepthpruneError:
        return None  # a family the repair cannot fold at all: the repair check says so in its own words


def _needs_scoring(recipe: Recipe) -> bool:
    sel = recipe.selection
    return sel.layers is None and (recipe.command != "prune" or sel.scores is None)


def _does_not_fit(recipe: Recipe, source: ModelSource) -> bool:
    need = source.memory_bytes(DTYPE_WIDTH[recipe.runtime.dtype])
    available = memory_available_bytes()
    if need is None or available is None:
        return False
    log.info("weights need %.2f GiB at %s, %.2f GiB available", need / 2**30, recipe.runtime.dtype,
             available / 2**30)
    return need > STREAM_HEADROOM * available


def choose_executor(recipe: Recipe, source: ModelSource) -> tuple[str, list[str]]:
    """The executor for ``recipe`` and the notes saying why; one sentence when none can honour it."""
    cmd, mode = recipe.command, recipe.runtime.offload
    if cmd not in ("prune", "score"):
        return "in-memory", []
    if mode == "none":
        candidates = ["gguf-cut", "in-memory"] if cmd == "prune" else ["in-memory"]
    elif mode == "layers":
        candidates = ["on-disk", "layer-streamed"] if cmd == "prune" else ["layer-streamed"]
    else:
        candidates = ["gguf-cut", "on-disk", "layer-streamed", "in-memory"] if cmd == "prune" else \
            ["layer-streamed", "in-memory"]
    reasons = {}
    for name in candidates:
        why = _refusal(recipe, source, name)
        if why is None and name == "layer-streamed" and mode == "auto" and not _does_not_fit(recipe, source):
            why = "the weights fit in memory"
        if why is None:
            notes = [f"{name}: {EXECUTORS[name].description}"]
            skipped = [f"{n} not used: {r}" for n, r in reasons.items() if r != "it writes GGUF files only"]
            return name, notes + skipped
        reasons[name] = why
    if mode == "layers":
        last = candidates[-1]
        raise DepthpruneError(f"--offload layers cannot run this {cmd}: {reasons[last]}; drop --offload layers or "
                              "the conflicting flag")
    raise DepthpruneError(f"this {cmd} cannot run: {'; '.join(reasons.values())}")  # pragma: no cover


# --------------------------------------------------------------------------------------------- stages per command


def stages_for(recipe: Recipe, executor: str, *, needs_calibration: bool) -> list[str]:
    cmd, ev, sel = recipe.command, recipe.evaluation, recipe.selection
    if cmd == "prune":
        if executor == "on-disk":
            return ["select", "write"]
        if executor == "layer-streamed":
            return ["stream", "calibrate"] + (["score"] if _needs_scoring(recipe) else []) + ["select"] + \
                (["repair"] if recipe.repair.methods else []) + ["write"]
        if executor == "gguf-cut" and not _needs_forward(recipe):
            return ["select", "write"]
        stages = ["load"]
        if needs_calibration:
            stages.append("calibrate")
        if recipe.search.auto:  # the search scores, selects, cuts and repairs, candidate by candidate
            stages.append("search")
            if recipe.quantization.method:
                stages.append("quantize")
            if ev.ppl or ev.tasks:
                stages += ["evaluate-dense", "evaluate-pruned"]
            if ev.bench:
                stages.append("bench")
            return stages + ["write"]
        if sel.layers is None and sel.scores is None:
            stages.append("score")
        stages.append("select")
        if ev.ppl or ev.tasks:
            stages.append("evaluate-dense")
        stages.append("cut")
        if recipe.repair.methods:
            if ev.ppl:
                stages.append("evaluate-unrepaired")
            stages.append("repair")
        if recipe.quantization.method:
            stages.append("quantize")
        if ev.ppl or ev.tasks:
            stages.append("evaluate-pruned")
        if ev.bench:
            stages.append("bench")
        return stages + ["write"]
    if cmd == "score":
        return (["stream"] if executor == "layer-streamed" else ["load"]) + ["calibrate", "score", "select", "write"]
    if cmd == "sweep":
        return ["load", "calibrate", "sweep", "write"]
    if cmd == "heads":
        stages = ["load", "calibrate", "head-score"]
        if recipe.heads.remove_per_layer is not None:
            stages.append("head-cut")
        return stages + ["write"]
    if cmd == "repair":
        stages = ["load-repair"]
        if "linear" in recipe.repair.methods:
            stages.append("calibrate")
        if ev.ppl:
            stages.append("evaluate-unrepaired")
        stages += ["repair"]
        if ev.ppl:
            stages.append("evaluate-pruned")
        return stages + ["write"]
    if cmd == "eval":
        return ["load", "evaluate", "write"]
    if cmd == "bench":
        return ["load", "bench", "write"]
    if cmd == "report":
        return ["write"]
    raise DepthpruneError(f"unknown command '{cmd}'")  # pragma: no cover - the schema refuses it


# --------------------------------------------------------------------------------------------- checks


def _check_fields_belong(recipe: Recipe, stages: list[str], given: set[str] = frozenset()) -> None:
    """Every field the run sets is taken by its command and consumed by a stage of the plan (or describes what the
    caller ``given`` in its place: a ready calibration set is recorded with its settings)."""
    cmd = recipe.command
    accepted = set(command_fields(cmd))
    consumed = set(stages) | {"write", "load"} | set(given)
    aliases = {"evaluate": {"evaluate-dense", "evaluate-pruned", "evaluate-unrepaired", "evaluate", "sweep",
                            "head-cut"},
               "calibrate": {"calibrate"}, "score": {"score", "stream", "sweep"},
               "select": {"select", "sweep", "search"}, "bench": {"bench"}, "repair": {"repair", "search"},
               "quantize": {"quantize"}, "sweep": {"sweep"}, "head-score": {"head-score"},
               "head-cut": {"head-cut"}, "write": {"write"}, "load": {"load", "load-repair", "stream"}}
    for section, name in recipe.active_fields():
        flag = flag_of(section, name, cmd)
        if (section, name) not in accepted:
            raise DepthpruneError(f"{flag} is not an option of `depthprune {cmd}` (recipe field {section}.{name}); "
                                  f"drop it")
        stage = stage_of(section, name)
        if cmd == "prune" and section == "calibration":
            continue  # recorded with the output: `depthprune repair --method linear` fits its maps on it later
        if not (aliases.get(stage, {stage}) & consumed):
            raise DepthpruneError(f"{flag} has no effect in this {cmd} (nothing in it {stage}s); drop it")


def _check_spec(spec: str | None, flag: str, *, allow_self: bool = False) -> None:
    if spec is not None:
        try:
            validate_spec(spec, allow_self=allow_self)
        except DepthpruneError as exc:
            raise DepthpruneError(f"{flag}: {exc}") from None


def _config_view(source: ModelSource):
    """The source's config, or as much of it as the planner knows (the model type of a GGUF source)."""
    return source.config if source.config is not None else SimpleNamespace(model_type=source.model_type)


def _check_selection(recipe: Recipe, source: ModelSource) -> tuple[int | None, str | None]:
    sel, cmd = recipe.selection, recipe.command
    total = source.num_layers
    if sel.layers is not None:
        if sel.remove is not None or sel.ratio is not None:
            raise DepthpruneError("give either explicit layers (--layers) or a count (--remove/--ratio), not both")
        if sel.scores is not None:
            raise DepthpruneError("give either explicit layers (--layers) or a scores file (--scores), not both")
        if total is not None:
            bad = [i for i in sel.layers if i >= total]
            if bad:
                raise DepthpruneError(f"layer(s) {bad} do not exist: the model has {total} layers (0-based, "
                                      f"0..{total - 1})")
            if len(sel.layers) >= total:
                raise DepthpruneError(f"cannot remove all {total} layers; keep at least one")
        for name in ("metric", "laco"):
            if getattr(sel, name) is not None:
                raise DepthpruneError(f"{flag_of('selection', name, cmd)} chooses layers, and --layers names them "
                                      "already; drop one")
        if sel.strategy != "one-shot":
            raise DepthpruneError("--strategy chooses layers, and --layers names them already; drop one")
        if sel.protect_first or sel.protect_last:
            raise DepthpruneError("--protect-first/--protect-last guard a choice of layers, and --layers names them "
                                  "already; drop one")
        return None, None
    if cmd == "score":
        if (sel.strategy is None) != (sel.remove is None):
            raise DepthpruneError("give both --strategy and --remove to preview a selection, or neither")
        metric = sel.metric or "bi"
        if sel.strategy is not None:
            resolve(metric, sel.strategy)
        count = None
        if sel.remove is not None and total is not None:
            count = removal_count(total, remove=sel.remove)
        return count, metric
    if (sel.remove is None) == (sel.ratio is None):
        raise DepthpruneError("give --remove N, --ratio R or --layers I,J,...")
    metric = resolve(sel.metric, sel.strategy)
    if sel.laco is not None:
        if sel.strategy != "laco":
            raise DepthpruneError("--laco sets LaCo's search; it needs --strategy laco")
        LacoSettings.parse(sel.laco)
    count = None
    if total is not None:
        count = removal_count(total, remove=sel.remove, ratio=sel.ratio)
        protected = min(sel.protect_first, total) + min(sel.protect_last, total)
        if count > total - min(protected, total):
            raise DepthpruneError(f"cannot remove {count} layers: only {max(total - protected, 0)} of {total} are not "
                                  f"protected (--protect-first {sel.protect_first}, --protect-last {sel.protect_last})")
    if sel.scores is not None:
        if sel.strategy not in ("one-shot", "block") or (sel.strategy == "block" and metric.startswith("angular")):
            raise DepthpruneError(f"a scores file can drive 'one-shot' (or 'block' with bi/relative-magnitude), not "
                                  f"'{sel.strategy}' with '{metric}', which scores the model itself")
    return count, metric


# repair fields --auto cannot honour, and why (the rest, LoRA's rank, lr, seed, ..., apply to its LoRA candidates)
AUTO_REFUSES = {
    ("repair", "methods"): "--auto chooses the repair itself; drop it (narrow the choice with --auto-repairs)",
    ("repair", "objective"): "--auto tries both linear objectives; drop it (narrow the choice with --auto-repairs)",
    ("repair", "data"): "--auto trains LoRA on the calibration windows it does not validate on, so that no "
                        "candidate is judged on text it was fitted to; drop it (give more --samples instead)",
    ("repair", "seq_len"): "--auto trains LoRA on the calibration windows (their length is --seq-len); drop it",
    ("repair", "eval_every"): "--auto stops LoRA by its budget, not by held-out checks; drop it",
    ("selection", "layers"): "--auto chooses the layers; give a count (--remove or --ratio) instead",
    ("selection", "scores"): "--auto scores the model itself; drop --scores",
    ("selection", "strategy"): "--auto compares several selections itself; drop --strategy",
    ("selection", "metric"): "--auto compares several selections itself; drop --metric",
    ("selection", "laco"): "--auto compares several selections itself; drop --laco",
}


def _check_search_fields(recipe: Recipe) -> None:
    """``prune --auto``: the fields it cannot honour (checked before the model is looked at)."""
    if not recipe.search.auto:
        return
    for section, name in recipe.active_fields():
        why = AUTO_REFUSES.get((section, name))
        if why:
            raise DepthpruneError(f"{flag_of(section, name, recipe.command)}: {why}")
    if recipe.calibration.data == "self":
        raise DepthpruneError("--auto validates on held-out calibration text, and 'self' text is the model's own "
                              "output; give --data a text SPEC")


def _check_search(recipe: Recipe, source: ModelSource) -> None:
    """``prune --auto``: the repairs it can try on this family; one asked for by name and impossible is refused
    (the default list drops it, and the search records why)."""
    search = recipe.search
    if not search.auto:
        return
    explicit = ("search", "repairs") in recipe.active_fields()
    config = _config_view(source)
    for repair in search.repairs:
        try:
            if repair in ("linear", "cosine"):
                fold_spec(config)
            if repair == "lora":
                import peft  # noqa: F401  (an optional dependency: present or not)
                lora_targets(config)
        except (DepthpruneError, ImportError) as exc:
            if explicit:
                why = "it needs peft: pip install 'depthprune[repair]'" if isinstance(exc, ImportError) else str(exc)
                raise DepthpruneError(f"--auto-repairs {repair}: {why}") from None


def _check_repair(recipe: Recipe, source: ModelSource, removed: list[int] | None) -> None:
    rep, cmd = recipe.repair, recipe.command
    if cmd == "repair" and not rep.methods:
        raise DepthpruneError(f"depthprune repair needs {flag_of('repair', 'methods', cmd)} (linear, lora or "
                              "linear,lora); without one there is nothing to repair")
    if not rep.methods:
        return
    if recipe.selection.strategy == "laco" and recipe.selection.layers is None and "linear" in rep.methods:
        raise DepthpruneError("linear repair fits its map on the unmerged model's activations, which LaCo's merged "
                              "layers no longer produce; use --repair lora with --strategy laco")
    if "lora" in rep.methods:
        try:
            import peft  # noqa: F401  (an optional dependency: present or not)
        except ImportError:
            raise DepthpruneError("lora repair needs peft: pip install 'depthprune[repair]'") from None
        _check_spec(rep.data, flag_of("repair", "data", cmd))
    config = _config_view(source)
    if "linear" in rep.methods:
        fold_spec(config)
    if "lora" in rep.methods:
        lora_targets(config)
    if removed and "linear" in rep.methods and 0 in removed:
        raise DepthpruneError("linear repair folds its map into the layer before each removed run, and layer 0 has "
                              "none before it; keep layer 0 or use --repair lora")


def _check_evaluation(recipe: Recipe) -> None:
    ev, cmd = recipe.evaluation, recipe.command
    _check_spec(ev.ppl, flag_of("evaluation", "ppl", cmd))
    if ev.tasks is not None:
        if not lm_eval_available():
            raise DepthpruneError(f"{flag_of('evaluation', 'tasks', cmd)} needs lm-evaluation-harness: "
                                  "pip install 'depthprune[eval]'")
        check_tasks(ev.tasks, ev.data_dir, flag=flag_of("evaluation", "data_dir", cmd))
    elif ev.data_dir is not None or ev.limit is not None or ev.num_fewshot is not None:
        names = [flag_of("evaluation", n, cmd) for n in ("limit", "num_fewshot", "data_dir")
                 if getattr(ev, n) is not None]
        raise DepthpruneError(f"{names[0]} sets how lm-eval tasks run; give {flag_of('evaluation', 'tasks', cmd)} "
                              "too, or drop it")


def _check_output_format(recipe: Recipe, source: ModelSource, executor: str) -> None:
    out = recipe.output
    if recipe.command != "prune":
        return
    if out.format == "gguf":
        if recipe.quantization.method is not None:
            raise DepthpruneError("--quantize makes torchao checkpoints (--format hf); for a quantized GGUF use "
                                  "--gguf-type q8_0 instead")
        if out.save_dtype != "auto":
            raise DepthpruneError("--save-dtype applies to Hugging Face checkpoints; for GGUF choose --gguf-type")
        if executor == "in-memory":
            check_exportable_config(_config_view(source), out.gguf_type)
    elif out.gguf_type != "f16":
        raise DepthpruneError("--gguf-type sets the precision of a GGUF output; give --format gguf (or an --out "
                              "ending in .gguf) too, or drop it")
    if recipe.quantization.method is not None:
        check_method(recipe.quantization.method, recipe.quantization.group_size)
        if source.config is not None:
            check_quantizable(meta_skeleton(source.config, recipe.runtime.trust_remote_code))
        if out.save_dtype != "auto":
            raise DepthpruneError("--save-dtype cannot be combined with --quantize: quantized weights are saved as "
                                  "they are (choose the float dtype with --dtype)")


# --------------------------------------------------------------------------------------------- outputs


def _outputs(recipe: Recipe, plan: Plan, require_output: bool) -> list[OutputSpec]:
    cmd, out = recipe.command, recipe.output
    over = out.overwrite
    if cmd in ("prune", "sweep", "heads", "repair", "report", "score") and out.path is None:
        if not require_output or (cmd == "score" and plan.distributed and not is_main_process()):
            return []  # the Python API keeps the result in memory
        raise DepthpruneError(f"give --out {'FILE.json' if cmd == 'score' else 'DIR'} for the {cmd} output")
    if cmd == "prune":
        path = Path(out.path).expanduser()
        if out.format == "gguf" and path.suffix.lower() == ".gguf":
            gguf, record = gguf_output_paths(path)
            return [OutputSpec("prune", gguf, kind="files", files=(gguf, record), record=record, overwrite=over)]
        return [OutputSpec("prune", path, overwrite=over)]
    if cmd == "score":
        path = Path(out.path).expanduser()
        if path.suffix.lower() == ".png":
            raise DepthpruneError(f"--out {path} names the scores JSON, and the plot goes beside it as NAME.png; "
                                  "give --out a .json name")
        png = path.with_suffix(".png")
        return [OutputSpec("score", path, kind="files", files=(path, png), record=path, overwrite=over)]
    if cmd in ("sweep", "heads", "repair", "report"):
        return [OutputSpec(cmd, Path(out.path).expanduser(), overwrite=over)]
    specs = []
    if cmd == "eval":
        ev = recipe.evaluation
        if ev.tasks is not None:
            results = Path(out.results).expanduser() if out.results else Path("eval-results")
            role = ev.role or ("pruned" if plan.source.kind == "local" and plan.source.path is not None
                               and (plan.source.path / "depthprune.json").is_file() else "dense")
            name = f"{role}-{'_'.join(ev.tasks)}.json"
            if len(name) > 120:
                name = f"{role}-{len(ev.tasks)}tasks.json"
            specs.append(OutputSpec("eval", results / name, kind="files", files=(results / name,),
                                    overwrite=True, flag="--results"))
        if out.json_file is not None:
            if ev.ppl is None:
                raise DepthpruneError("--json writes the perplexity result; give --ppl too")
            path = Path(out.json_file).expanduser()
            specs.append(OutputSpec("eval", path, kind="files", files=(path,), overwrite=True, flag="--json"))
        return specs
    if cmd == "bench" and out.json_file is not None:
        path = Path(out.json_file).expanduser()
        specs.append(OutputSpec("bench", path, kind="files", files=(path,), overwrite=True, flag="--json"))
    return specs


# --------------------------------------------------------------------------------------------- the planner


def plan(recipe: Recipe, *, model=None, calibration=None, scores=None, recipe_source: str | Path | None = None,
         extra_inputs: tuple = (), require_output: bool = True) -> Plan:
    """Check ``recipe`` without touching weights or text and decide how it runs (see the module doc).

    ``model``: an in-memory transformers model to run on instead of loading ``recipe.model``;
    ``calibration`` (a CalibrationSet) and ``scores`` (a ScoreReport) replace the calibration and scoring
    stages' own work; ``recipe_source``: the recipe file the recipe came from (an input: never written over).
    """
    recipe.validate()
    cmd = recipe.command
    rt = recipe.runtime
    if rt.device != "auto":
        check_device(rt.device)
    notes = [f"a recipe file cannot grant {g}: pass the flag to allow it" for g in recipe.file_grants]
    # what needs no model at all is checked before the model is even looked at (a Hub id costs a round trip)
    if cmd in ("prune", "score"):
        _check_search_fields(recipe)
        _check_selection(recipe, ModelSource(recipe.model, "unknown"))
    if cmd == "sweep":
        combinations(recipe.sweep.metrics, recipe.sweep.strategies)
    record = dense = None
    if cmd in ("repair", "report"):
        record = read_output_record(recipe.model, "a depthprune output directory" if cmd == "repair"
                                    else "a depthprune output directory to report on")
    if model is not None:
        source = in_memory_source(model)
    elif cmd == "report":
        source = ModelSource(recipe.model, "output", path=Path(recipe.model).expanduser().resolve(),
                             inputs=(Path(recipe.model).expanduser().resolve(),))
    else:
        source = inspect_source(recipe.model, trust_remote_code=rt.trust_remote_code)
    inputs: list = [*source.inputs, recipe_source, *extra_inputs]
    if cmd == "repair":
        _recorded_calibration(recipe, record)
        dense = _dense_source(record, recipe)
        inputs += list(dense.inputs) if dense is not None else []
    if launched_by_torchrun() and cmd != "score":
        raise DepthpruneError(f"{cmd} writes one result: run it in one process (torchrun is for `depthprune score`)")
    if launched_by_torchrun() and calibration is None and scores is None:
        # every process needs at least one calibration sample: refused here, before any model loads (the score
        # stage checks again on the windows actually built, which a short text can make fewer than --samples)
        shard_sizes(recipe.calibration.samples, launched_world_size())

    count = metric = None
    removed = None
    if cmd in ("prune", "score"):
        count, metric = _check_selection(recipe, source)
        removed = list(recipe.selection.layers) if recipe.selection.layers is not None else None
        if removed is not None and source.config is not None:
            reason = structure_refusal(source.config, sorted(removed), trust_remote_code=rt.trust_remote_code)
            if reason:
                raise DepthpruneError(reason)
        if removed is not None and source.gguf is not None and recipe.output.format == "gguf":
            check_gguf_removal(*_gguf_removal_args(source, removed))  # the GGUF's own index-derived kinds
        if recipe.selection.scores is not None:
            inputs.append(recipe.selection.scores)
            if scores is None and not Path(recipe.selection.scores).expanduser().is_file():
                raise DepthpruneError(f"scores file {recipe.selection.scores} does not exist")
    if cmd == "repair":
        removed = list(record.get("removed_layers") or [])
    uses_calibration = _uses_calibration(recipe)
    if uses_calibration and calibration is None and scores is None:
        _check_spec(recipe.calibration.data, flag_of("calibration", "data", cmd), allow_self=True)
        inputs.append(recipe.calibration.data)
    _check_repair(recipe, dense or source, removed)
    _check_search(recipe, dense or source)
    _check_evaluation(recipe)
    for spec in (recipe.repair.data, recipe.evaluation.ppl, recipe.evaluation.data_dir, recipe.bench.compare):
        inputs.append(spec)
    if recipe.selection.block_sizes is not None:
        if not (metric or "").startswith("angular"):
            raise DepthpruneError(f"--block-sizes scores blocks of layers with the angular metrics; metric "
                                  f"'{metric}' scores single layers: use --metric angular or drop --block-sizes")
        if source.num_layers is not None and not all(1 <= n <= source.num_layers for n in recipe.selection.block_sizes):
            raise DepthpruneError(f"angular block sizes must be between 1 and {source.num_layers} for a "
                                  f"{source.num_layers}-layer model")
    if cmd == "report":
        inputs += [Path(p).expanduser() for p in recipe.output.evidence or ()]
    if cmd == "sweep":
        _check_sweep(recipe, source)
    if cmd == "heads":
        _check_heads(recipe, source)
    if cmd == "eval" and recipe.evaluation.ppl is None and recipe.evaluation.tasks is None:
        raise DepthpruneError("give --ppl SPEC and/or --tasks NAMES")
    if cmd == "bench" and recipe.bench.compare is not None:
        inputs += list(inspect_source(recipe.bench.compare, trust_remote_code=rt.trust_remote_code).inputs)

    executor, why = choose_executor(recipe, source)
    if model is not None and executor != "in-memory":
        executor, why = "in-memory", ["in-memory: the model was given in memory"]
    _check_output_format(recipe, source, executor)
    stages = stages_for(recipe, executor, needs_calibration=uses_calibration and calibration is None
                        and scores is None)
    if calibration is not None and "calibrate" in stages:
        stages.remove("calibrate")
    if scores is not None and "score" in stages:
        stages.remove("score")
    _check_fields_belong(recipe, stages, given={"calibrate"} if calibration is not None or scores is not None
                         else set())
    p = Plan(recipe, source, executor, stages, inputs=[], notes=notes + why, removal_count=count, metric=metric,
             dense=dense, record=record, distributed=launched_by_torchrun())
    p.inputs = [Path(i).expanduser().resolve() for i in inputs if isinstance(i, (str, Path)) and i
                and not str(i).startswith("hf:") and Path(i).expanduser().exists()]
    p.outputs = _outputs(recipe, p, require_output)
    for spec in p.outputs:
        check_output(spec, p.inputs)
    return p


def _uses_calibration(recipe: Recipe) -> bool:
    cmd, sel = recipe.command, recipe.selection
    if cmd in ("score", "sweep", "heads"):
        return True
    if cmd == "prune":
        return (sel.layers is None and sel.scores is None) or "linear" in recipe.repair.methods
    if cmd == "repair":
        return "linear" in recipe.repair.methods
    return False


def _gguf_removal_args(source: ModelSource, removed: list[int]):
    header = read_gguf_header(source.gguf)
    arch, blocks = gguf_architecture(header)
    return arch, blocks, sorted(removed), header.get(f"{arch}.attention.sliding_window")


def _recorded_calibration(recipe: Recipe, record: dict) -> None:
    """Repair: calibration fields the command line left at their defaults take the original run's values (the
    linear map is fitted on the text the layers were chosen on, unless the user says otherwise)."""
    if "linear" not in recipe.repair.methods:
        return
    active = {name for section, name in recipe.active_fields() if section == "calibration"}
    recorded = (record.get("recipe") or {}).get("calibration") if isinstance(record.get("recipe"), dict) else None
    if not isinstance(recorded, dict):
        cal = record.get("calibration") if isinstance(record.get("calibration"), dict) else {}
        recorded = {"data": cal.get("source"), "samples": cal.get("requested_samples", cal.get("samples")),
                    "seq_len": cal.get("seq_len"), "seed": cal.get("seed")}
    values = {k: v for k, v in recorded.items() if k in type(recipe.calibration).model_fields
              and k not in active and v is not None}
    if values.get("data") in (None, "tensors"):
        if "data" not in active:
            raise DepthpruneError(f"{recipe.model}/depthprune.json records no calibration text linear repair could "
                                  "read again; give --data SPEC")
        values.pop("data", None)
    try:
        recipe.replace("calibration", **values)
    except DepthpruneError as exc:
        raise DepthpruneError(f"{recipe.model}/depthprune.json records a calibration that cannot be used ({exc}); "
                              "give --data SPEC") from None


def _dense_source(record: dict, recipe: Recipe) -> ModelSource | None:
    """Repair: the dense model a depthprune output was pruned from (needed by linear repair and distillation)."""
    rep = recipe.repair
    if not ("linear" in rep.methods or rep.distill):
        return None
    spec = record.get("model")
    if not isinstance(spec, str) or not spec:
        raise DepthpruneError(f"{recipe.model}/depthprune.json records no source model; linear repair and "
                              "distillation need the dense model")
    path = Path(spec).expanduser()
    if not path.is_absolute() and not path.exists():  # older records: relative to where prune ran
        beside = Path(recipe.model).expanduser().resolve().parent / spec
        if beside.exists():
            path = beside
    target = str(path) if path.exists() else spec
    try:
        source = inspect_source(target, trust_remote_code=recipe.runtime.trust_remote_code)
    except DepthpruneError as exc:
        raise DepthpruneError(f"the source model recorded in {recipe.model}/depthprune.json ('{spec}') cannot be "
                              f"used ({exc}); linear repair and distillation need the dense model") from None
    total = record.get("num_layers_before")
    if isinstance(total, int) and source.num_layers is not None and source.num_layers != total:
        raise DepthpruneError(f"the recorded source model '{spec}' has {source.num_layers} layers but the output "
                              f"was pruned from a {total}-layer model")
    return source


def _check_sweep(recipe: Recipe, source: ModelSource) -> None:
    sw = recipe.sweep
    if recipe.evaluation.ppl is None:
        raise DepthpruneError("give --ppl SPEC: the sweep measures perplexity at every point")
    if (sw.max_remove is None) == (sw.counts is None):
        raise DepthpruneError("give exactly one of --max-remove N or --counts N1,N2,...")
    total = source.num_layers
    chosen = list(range(1, sw.max_remove + 1)) if sw.max_remove is not None else sorted(set(sw.counts))
    if total is not None and (chosen[0] < 1 or chosen[-1] >= total):
        raise DepthpruneError(f"layers to remove must be between 1 and {total - 1} for a {total}-layer model")
    if recipe.selection.laco is not None:
        LacoSettings.parse(recipe.selection.laco)
    unknown = [m for m in sw.metrics if m not in STREAMING_METRICS and m not in LOSS_METRICS]
    if unknown:  # pragma: no cover - the schema's vocabulary and the registry agree (tested)
        raise DepthpruneError(f"unknown metric '{unknown[0]}'")


def _check_heads(recipe: Recipe, source: ModelSource) -> None:
    h = recipe.heads
    config = source.config
    heads = getattr(config, "num_attention_heads", None)
    if h.remove_per_layer is not None and isinstance(heads, int):
        # counts beyond what a layer has are refused, never clamped; all of a layer's KV groups is the layer itself
        groups = getattr(config, "num_key_value_heads", None) or heads
        have, unit = (groups, "KV groups") if h.remove_unit == "group" else (heads, "query heads")
        if h.remove_per_layer >= have:
            more = "more than" if h.remove_per_layer > have else "all of"
            raise DepthpruneError(f"--remove-per-layer {h.remove_per_layer} is {more} the {have} {unit} each layer "
                                  f"of this model has: give at most {have - 1}, or remove whole layers with "
                                  "depthprune prune")
    if h.remove_per_layer is not None and (h.select_by not in h.metrics or h.remove_unit not in h.units):
        raise DepthpruneError(f"--select-by {h.select_by} --remove-unit {h.remove_unit} needs those scores: add "
                              f"{h.select_by} to --metrics and {h.remove_unit} to --units")
    if recipe.calibration.samples < 2:
        raise DepthpruneError("heads splits the calibration into two disjoint halves: give --samples 2 or more")


__all__ = ["EXECUTORS", "Executor", "Plan", "choose_executor", "plan", "stages_for"]
