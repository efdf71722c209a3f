"""Every run of every command, described as one plain, serialisable recipe: the one declaration of each field.

A field is declared once, here, with its type, bounds, default, help text, the command-line flag that sets it,
the commands that accept it (with a per-command flag name or default where a command differs) and the pipeline
stage that consumes it. From these declarations come:

* the command-line options of every command (:mod:`depthprune.cli.options` builds the typer parameters);
* the type checks of recipe files (pydantic, strict: ``"two"`` is not an int, ``"yes"`` not a bool, no NaN/inf,
  unknown fields refused);
* the JSON schema (:meth:`Recipe.json_schema`) and the recipe table in ``docs/recipe.md``;
* the planner's check that every field a run sets is consumed by a stage of its plan
  (:mod:`depthprune.pipeline.plan`): a flag is honoured or refused, never dropped.

Checks that need no other module (types, ranges, one field against another) live here; everything that needs the
file system, the model's config or another module's registry is the planner's.

Two fields can only be granted from the command line or from Python, never by a recipe file: ``trust_remote_code``
and ``overwrite`` (:meth:`Recipe.from_file` clears them). A recipe file cannot make a model's code run, and
cannot replace an output the user did not name.
"""

from __future__ import annotations

import contextvars
import json
import math
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from depthprune.errors import DepthpruneError

RECIPE_VERSION = 2
READABLE_VERSIONS = (1, 2)

COMMANDS = ("prune", "score", "sweep", "heads", "repair", "eval", "bench", "report")
Command = Literal["prune", "score", "sweep", "heads", "repair", "eval", "bench", "report"]

# Vocabularies. The registries of the stages that implement them are checked against these in the tests.
METRICS = ("bi", "angular", "angular-all", "relative-magnitude", "reverse-order", "random", "ppl", "taylor")
STRATEGIES = ("one-shot", "iterative", "block", "greedy-ppl", "laco")
HEAD_METRICS = ("loss", "oproj-norm")
HEAD_UNITS = ("group", "query")
REPAIR_METHODS = ("linear", "lora")
AUTO_REPAIRS = ("none", "linear", "cosine", "lora")
QUANT_METHODS = ("int8", "int4")
OUTPUT_FORMATS = ("hf", "gguf")
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
DTYPES = ("float32", "bfloat16", "float16")
SAVE_DTYPES = ("auto",) + DTYPES
OFFLOAD_MODES = ("none", "layers", "auto")
ROLES = ("dense", "pruned")

Metric = Literal["bi", "angular", "angular-all", "relative-magnitude", "reverse-order", "random", "ppl", "taylor"]
Strategy = Literal["one-shot", "iterative", "block", "greedy-ppl", "laco"]

GRANTS = (("output", "overwrite"), ("runtime", "trust_remote_code"))

# (where the values come from, command): "flags" makes error sentences name command-line flags
VALIDATING: contextvars.ContextVar = contextvars.ContextVar("depthprune_recipe_validating",
                                                            default=("recipe", "prune"))


def opt(default: Any = None, help: str = "", *, stage: str, commands: dict | tuple = (), flag: str | None = None,
        parse: str | None = None, metavar: str | None = None, default_factory=None, **constraints) -> Any:
    """Declare one recipe field.

    ``commands``: the commands that take the field, as a tuple of names or ``{name: overrides}`` where overrides
    may set ``flag``, ``default``, ``help`` or ``metavar`` for that command. ``stage``: the pipeline stage that
    consumes it. ``parse``: how the command line spells a list (``csv`` for names, ``csv-int`` for numbers).
    """
    if isinstance(commands, tuple):
        commands = {c: {} for c in commands}
    extra = {"stage": stage, "commands": commands, "flag": flag, "parse": parse, "metavar": metavar}
    if default_factory is not None:
        return Field(default_factory=default_factory, description=help, json_schema_extra=extra, **constraints)
    return Field(default, description=help, json_schema_extra=extra, **constraints)


CAL_COMMANDS = {"prune": {}, "score": {}, "repair": {}}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False,
                              frozen=False)

    def __init__(self, **data):
        """A bad value is one sentence (a DepthpruneError) naming the field, or the flag when the values came from
        a command line (:data:`VALIDATING`)."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            where, command = VALIDATING.get()
            raise DepthpruneError(validation_sentence(exc, where, command, section=_section_name(type(self)))
                                  ) from None


class CalibrationRecipe(Section):
    """Text the importance scores (and linear repair maps) are measured on (see :mod:`depthprune.io.data`)."""

    data: str = opt("builtin", "Calibration SPEC: file/dir (.txt/.jsonl/.parquet), hf:NAME[:CONFIG][:SPLIT], builtin "
                    "or self.", stage="calibrate", metavar="SPEC",
                    commands={**CAL_COMMANDS, "sweep": {}, "heads": {}}, min_length=1)
    samples: int = opt(128, "Number of calibration sequences.", stage="calibrate", ge=1, metavar="N",
                       commands={**CAL_COMMANDS, "sweep": {"default": 32},
                                 "heads": {"default": 16, "help": "Calibration sequences (split into two disjoint "
                                                                  "halves)."}})
    seq_len: int = opt(512, "Tokens per calibration sequence.", stage="calibrate", ge=1, metavar="T",
                       commands={**CAL_COMMANDS, "sweep": {"default": 256}, "heads": {"default": 128}})
    batch_size: int = opt(8, "Sequences per forward pass.", stage="calibrate", ge=1, metavar="B",
                          commands={**CAL_COMMANDS, "sweep": {}, "heads": {}})
    seed: int = opt(0, "Seed for choosing calibration windows / generating 'self' text.", stage="calibrate",
                    ge=0, le=2**63 - 1, metavar="S", commands={**CAL_COMMANDS, "sweep": {}, "heads": {}})
    text_field: str = opt("text", "Field/column holding the text in .jsonl/.parquet/hf data.", stage="calibrate",
                          metavar="NAME", commands={**CAL_COMMANDS, "sweep": {}, "heads": {}}, min_length=1)


class SelectionRecipe(Section):
    """Which layers go: a count (``remove`` or ``ratio``) chosen by ``metric``/``strategy``, or explicit ``layers``."""

    remove: Optional[int] = opt(None, "Number of layers to remove.", stage="select", ge=1, metavar="N",
                                commands={"prune": {}, "score": {"help": "With --strategy: number of layers to "
                                                                         "preview removing."}})
    ratio: Optional[float] = opt(None, "Share of layers to remove (floor of R x layers).", stage="select",
                                 gt=0.0, lt=1.0, metavar="R", commands=("prune",))
    layers: Optional[list[int]] = opt(None, "Remove exactly these 0-based layers (comma-separated); no scoring.",
                                      stage="select", parse="csv-int", metavar="I,J,..", commands=("prune",))
    scores: Optional[str] = opt(None, "Choose the --remove/--ratio layers from a scores JSON written by `depthprune "
                                "score` (no scoring).", stage="select", flag="--scores", metavar="FILE",
                                commands=("prune",))
    metric: Optional[Metric] = opt(None, "Importance metric: bi, angular, angular-all, relative-magnitude, ppl, "
                                   "taylor, reverse-order, random. Default: bi (one-shot, iterative), angular "
                                   "(block), ppl (greedy-ppl).", stage="score", metavar="NAME",
                                   commands={"prune": {}, "score": {"default": "bi"}})
    strategy: Optional[Strategy] = opt("one-shot", "Strategy: one-shot, iterative, block, greedy-ppl or laco (merge layers).",
                             stage="select", metavar="NAME",
                             commands={"prune": {}, "score": {"default": None, "help": "With --remove: preview "
                                       "which layers this strategy (one-shot, iterative, block, greedy-ppl) would "
                                       "remove."}})
    block_sizes: Optional[list[int]] = opt(None, "Angular metrics: also score every contiguous block of these "
                                           "sizes (comma-separated).", stage="score", parse="csv-int",
                                           metavar="N,M,..", commands=("score",))
    protect_first: int = opt(0, "Never remove the first K layers.", stage="select", ge=0, metavar="K",
                             commands=("prune", "score", "sweep"))
    protect_last: int = opt(0, "Never remove the last K layers.", stage="select", ge=0, metavar="K",
                            commands=("prune", "score", "sweep"))
    laco: Optional[str] = opt(None, "LaCo settings for --strategy laco: C=3,L=1,H=LAST,I=1,T=0.5 (merge size, "
                              "lowest/highest layer, interval, similarity threshold).", stage="select",
                              metavar="C=..,T=..", commands=("prune", "sweep"))

    @model_validator(mode="after")
    def _one_way_to_choose(self):
        if self.remove is not None and self.ratio is not None:
            raise ValueError("give either a count (--remove) or a share (--ratio) of layers, not both")
        if self.layers is not None and (self.remove is not None or self.ratio is not None):
            raise ValueError("give either explicit layers or a count (--layers, or --remove/--ratio), not both")
        if self.layers is not None:
            if not self.layers:
                raise ValueError("the explicit layer list is empty; name at least one layer to remove")
            if any(i < 0 for i in self.layers):
                raise ValueError(f"layers must be 0-based whole numbers, got {self.layers}")
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"the layer list names a layer twice: {self.layers}")
        return self


class SweepRecipe(Section):
    """``depthprune sweep``: which metric/strategy lines and which removal counts."""

    metrics: list[Metric] = opt(None, "Comma-separated metrics, one sweep line each.", stage="sweep", parse="csv", metavar="NAMES",
                                commands=("sweep",), min_length=1,
                                default_factory=lambda: ["bi", "angular", "relative-magnitude", "ppl", "taylor",
                                                         "reverse-order", "random"])
    strategies: list[Strategy] = opt(None, "Comma-separated strategies, one sweep line each.", stage="sweep", parse="csv", metavar="NAMES", commands=("sweep",),
                                     min_length=1, default_factory=lambda: ["one-shot"])
    max_remove: Optional[int] = opt(None, "Remove 1..N layers (give this or --counts).", stage="sweep", ge=1, metavar="N",
                                    commands=("sweep",))
    counts: Optional[list[int]] = opt(None, "Instead of --max-remove: comma-separated layer counts.", stage="sweep",
                                      parse="csv-int", metavar="N1,N2,..", commands=("sweep",), min_length=1)


class HeadsRecipe(Section):
    """``depthprune heads``: attention head / KV group importance and removal of the lowest units."""

    metrics: list[Literal["loss", "oproj-norm"]] = opt(
        None, "Head scores: loss (masked loss increase), oproj-norm.", stage="head-score", parse="csv",
        metavar="NAMES", commands=("heads",), min_length=1, default_factory=lambda: ["loss", "oproj-norm"])
    units: list[Literal["group", "query"]] = opt(
        None, "group (KV group), query (query head), or both.", stage="head-score", parse="csv", metavar="UNITS",
        commands=("heads",), min_length=1, default_factory=lambda: ["group", "query"])
    remove_per_layer: Optional[int] = opt(None, "Also remove the K least important units of every layer.",
                                          stage="head-cut", ge=1, metavar="K", commands=("heads",))
    remove_unit: Literal["group", "query"] = opt("group", "Unit removed by --remove-per-layer: group or query.",
                                                 stage="head-cut", metavar="UNIT", commands=("heads",))
    select_by: Literal["loss", "oproj-norm"] = opt("loss", "Score that picks the units to remove: loss or "
                                                   "oproj-norm.", stage="head-cut", metavar="NAME",
                                                   commands=("heads",))


class RepairRecipe(Section):
    """Repair after removal; ``methods=[]`` (default) is off. ``linear`` then ``lora`` when both are given.

    linear: a map per removed run fitted on the dense model's calibration activations (``objective`` lstsq or
    cosine, ``ridge``), folded into the layer before the run. lora: peft LoRA on ``data`` for ``tokens`` tokens
    (next-token loss, or KL to the dense model with ``distill``), merged into the weights.
    """

    methods: list[Literal["linear", "lora"]] = opt(
        None, "Repair after removal: linear, lora or linear,lora (off by default).", stage="repair", parse="csv",
        flag="--repair", metavar="METHODS", default_factory=list,
        commands={"prune": {}, "repair": {"flag": "--method", "help": "linear, lora or linear,lora."}})
    objective: Literal["lstsq", "cosine"] = opt("lstsq", "Linear repair objective: lstsq or cosine.", stage="repair",
                                                flag="--repair-objective", metavar="NAME",
                                                commands=("prune", "repair"))
    ridge: Optional[float] = opt(None, "Ridge of the linear map (default: chosen per removed run by 2-fold "
                                 "cross-validation).", stage="repair", ge=0.0, flag="--repair-ridge", metavar="X",
                                 commands=("prune", "repair"))
    cosine_steps: int = opt(30, "L-BFGS steps of the cosine objective.", stage="repair", ge=1,
                            flag="--repair-cosine-steps", metavar="N", commands=("prune", "repair"))
    data: Optional[str] = opt(None, "Text SPEC for lora repair (keep it disjoint from --eval-ppl).", stage="repair",
                              flag="--repair-data", metavar="SPEC", commands=("prune", "repair"), min_length=1)
    tokens: int = opt(32768, "LoRA training budget in tokens.", stage="repair", ge=1, flag="--repair-tokens",
                      metavar="N", commands=("prune", "repair"))
    seq_len: int = opt(256, "LoRA training window length.", stage="repair", ge=2, flag="--repair-seq-len",
                       metavar="T", commands=("prune", "repair"))
    distill: bool = opt(False, "LoRA: KL to the dense model's next-token distribution instead of next-token loss.",
                        stage="repair", flag="--distill", commands=("prune", "repair"))
    rank: int = opt(8, "LoRA rank.", stage="repair", ge=1, flag="--repair-rank", metavar="R",
                    commands=("prune", "repair"))
    alpha: float = opt(16.0, "LoRA alpha.", stage="repair", gt=0.0, flag="--repair-alpha", metavar="A",
                       commands=("prune", "repair"))
    lr: float = opt(1e-3, "LoRA learning rate.", stage="repair", gt=0.0, le=10.0, flag="--repair-lr", metavar="LR",
                    commands=("prune", "repair"))
    batch_size: int = opt(4, "LoRA windows per step.", stage="repair", ge=1, flag="--repair-batch-size", metavar="B",
                          commands=("prune", "repair"))
    eval_every: int = opt(10, "LoRA steps between held-out loss checks.", stage="repair", ge=1,
                          flag="--repair-eval-every", metavar="K", commands=("prune", "repair"))
    seed: int = opt(0, "Seed of the LoRA run.", stage="repair", ge=0, le=2**63 - 1, flag="--repair-seed",
                    metavar="S", commands=("prune", "repair"))

    @model_validator(mode="after")
    def _methods(self):
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"a repair method is named twice: {','.join(self.methods)}")
        if self.methods and self.methods != [m for m in REPAIR_METHODS if m in self.methods]:
            raise ValueError("repair methods run linear first, then lora: write linear,lora")
        if "lora" in self.methods:
            if self.data is None:
                raise ValueError("lora repair needs text to train on: give --repair-data SPEC")
            if self.tokens < self.seq_len:
                raise ValueError(f"--repair-tokens {self.tokens} is less than one window of {self.seq_len} tokens")
        return self


_DURATION = re.compile(r"^\s*(?:(?P<h>\d+(?:\.\d+)?)\s*h)?\s*(?:(?P<m>\d+(?:\.\d+)?)\s*m(?:in)?)?\s*"
                       r"(?:(?P<s>\d+(?:\.\d+)?)\s*s?)?\s*$", re.IGNORECASE)
MAX_BUDGET_S = 7 * 24 * 3600


def parse_duration(text: str) -> float:
    """Seconds in a duration written ``90``, ``90s``, ``20m``, ``1h``, ``1h30m`` or ``1.5h``; ValueError otherwise."""
    match = _DURATION.match(text or "")
    if not match or not any(match.group(k) for k in "hms"):
        raise ValueError(f"--budget must be a duration such as 90s, 20m or 1h30m, got '{text}'")
    seconds = sum(float(match.group(k) or 0) * f for k, f in (("h", 3600), ("m", 60), ("s", 1)))
    if not 0 < seconds <= MAX_BUDGET_S:
        raise ValueError(f"--budget must be more than 0 and at most 7 days, got '{text}'")
    return seconds


class SearchRecipe(Section):
    """``prune --auto``: which layers go and which repair heals them, searched within a wall-time budget.

    Candidates (removal sets from several selections, each with each repair) are compared on calibration windows
    held out from every fit: scoring, linear maps and LoRA see only the other windows. The best candidate is saved
    as a plain checkpoint and the whole search is recorded.
    """

    auto: bool = opt(False, "Search which layers go and how to repair them within --budget, validated on "
                     "calibration windows kept out of every fit; saves the best plain checkpoint.", stage="search",
                     flag="--auto", commands=("prune",))
    budget: str = opt("20m", "Wall-time budget of --auto: 90s, 20m, 1h30m (loading, search and saving; --eval-* "
                      "measurements are extra).", stage="search", flag="--budget", metavar="DURATION",
                      commands=("prune",), min_length=1)
    validation: float = opt(0.25, "Share of the calibration windows --auto holds out to validate on (at least 2 "
                            "windows).", stage="search", flag="--auto-validation", gt=0.0, lt=1.0, metavar="F",
                            commands=("prune",))
    repairs: list[Literal["none", "linear", "cosine", "lora"]] = opt(
        None, "Repairs --auto tries: none, linear, cosine, lora (LoRA after the linear map).", stage="search",
        parse="csv", flag="--auto-repairs", metavar="NAMES", commands=("prune",), min_length=1,
        default_factory=lambda: list(AUTO_REPAIRS))

    @model_validator(mode="after")
    def _budget(self):
        parse_duration(self.budget)
        if len(set(self.repairs)) != len(self.repairs):
            raise ValueError(f"a repair is named twice in --auto-repairs: {','.join(self.repairs)}")
        return self

    @property
    def budget_seconds(self) -> float:
        return parse_duration(self.budget)


class QuantizationRecipe(Section):
    """Weight-only quantization of the pruned model (torchao; see :mod:`depthprune.quantization`)."""

    method: Optional[Literal["int8", "int4"]] = opt(None, "Weight-only quantization of the pruned model (torchao): "
                                                    "int8 or int4.", stage="quantize", flag="--quantize",
                                                    metavar="METHOD", commands=("prune",))
    group_size: int = opt(32, "Inputs per scale for --quantize int4.", stage="quantize", ge=1,
                          flag="--quant-group-size", metavar="N", commands=("prune",))

    @model_validator(mode="after")
    def _power_of_two(self):
        if self.group_size & (self.group_size - 1):
            raise ValueError(f"--quant-group-size must be a power of two, not {self.group_size}")
        return self


class EvaluationRecipe(Section):
    """What is measured on the dense and the pruned model, side by side."""

    ppl: Optional[str] = opt(None, "Text SPEC: perplexity of dense and pruned model, side by side.",
                             stage="evaluate", flag="--eval-ppl", metavar="SPEC", min_length=1,
                             commands={"prune": {}, "repair": {"help": "Text SPEC: perplexity before and after "
                                                                        "repair."},
                                       "sweep": {"flag": "--ppl", "help": "Text SPEC to measure perplexity on "
                                                 "(required)."},
                                       "heads": {"flag": "--ppl", "help": "Text SPEC: perplexity dense vs heads "
                                                                          "removed."},
                                       "eval": {"flag": "--ppl", "help": "Text SPEC to measure perplexity on."}})
    ppl_seq_len: int = opt(512, "Window length for perplexity.", stage="evaluate", ge=1, metavar="T",
                           commands={"prune": {}, "repair": {}, "sweep": {}, "heads": {},
                                     "eval": {"flag": "--seq-len", "help": "Perplexity window length."}})
    ppl_max_tokens: int = opt(40_000, "Token budget for perplexity.", stage="evaluate", ge=1, metavar="N",
                              commands={"prune": {}, "repair": {}, "sweep": {"default": 16_384},
                                        "heads": {"default": 4096},
                                        "eval": {"flag": "--max-tokens", "help": "Perplexity token budget."}})
    batch_size: int = opt(1, "Windows (perplexity) or requests (lm-eval) per forward pass.", stage="evaluate", ge=1,
                          metavar="B", commands={"eval": {"flag": "--batch-size"}})
    text_field: str = opt("text", "Field/column holding the text in .jsonl/.parquet/hf data.", stage="evaluate",
                          metavar="NAME", min_length=1, commands={"eval": {"flag": "--text-field"}})
    tasks: Optional[list[str]] = opt(None, "lm-eval tasks for dense and pruned, side by side (saved in DIR/eval/): "
                                     "mmlu, hellaswag, piqa, arc_easy, arc_challenge, boolq, winogrande, "
                                     "lambada_openai, openbookqa, cmmlu.", stage="evaluate", parse="csv",
                                     metavar="NAMES", min_length=1,
                                     commands={"prune": {"flag": "--eval-tasks"},
                                               "sweep": {"flag": "--tasks", "help": "lm-eval tasks run at every "
                                                         "point (e.g. mmlu,hellaswag): accuracy columns and a "
                                                         "second plot panel."},
                                               "eval": {"flag": "--tasks", "help": "lm-eval tasks, "
                                                        "comma-separated, e.g. mmlu, hellaswag, piqa, arc_easy, "
                                                        "arc_challenge, boolq, winogrande, lambada_openai, "
                                                        "openbookqa, cmmlu."}})
    limit: Optional[float] = opt(None, "lm-eval documents per task (whole number) or share (below 1).",
                                 stage="evaluate", gt=0.0, metavar="N",
                                 commands={"prune": {"flag": "--eval-limit"}, "sweep": {"flag": "--limit"},
                                           "eval": {"flag": "--limit"}})
    num_fewshot: Optional[int] = opt(None, "lm-eval few-shot examples.", stage="evaluate", ge=0, metavar="K",
                                     commands={"prune": {"flag": "--eval-num-fewshot"},
                                               "eval": {"flag": "--num-fewshot"}})
    data_dir: Optional[str] = opt(None, "Offline task data (layout in docs/lmeval-tasks.md; tests/fixtures/data is "
                                  "a small one).", stage="evaluate", metavar="DIR", min_length=1,
                                  commands={"prune": {"flag": "--eval-data-dir"}, "sweep": {"flag": "--task-data-dir"},
                                            "eval": {"flag": "--data-dir"}})
    role: Optional[Literal["dense", "pruned"]] = opt(None, "dense or pruned, recorded for `depthprune report` "
                                                     "(default: pruned if MODEL has depthprune.json).",
                                                     stage="evaluate", metavar="ROLE", commands=("eval",))
    bench: bool = opt(False, "Also measure dense vs pruned speed side by side; writes bench.json.", stage="bench",
                      commands=("prune",))

    @model_validator(mode="after")
    def _limit_whole(self):
        if self.limit is not None and self.limit >= 1 and self.limit != int(self.limit):
            raise ValueError(f"an lm-eval limit of 1 or more is a number of documents, a whole number; got {self.limit}")
        return self

    def task_options(self, batch_size: int) -> dict:
        limit = int(self.limit) if self.limit is not None and self.limit >= 1 else self.limit
        return {"limit": limit, "num_fewshot": self.num_fewshot, "data_dir": self.data_dir, "batch_size": batch_size}


class BenchRecipe(Section):
    """Speed measurement (``depthprune bench``, ``prune --bench``): see :mod:`depthprune.evaluation.speed`."""

    compare: Optional[str] = opt(None, "Baseline (e.g. the dense model) measured side by side in the same run; "
                                 "ratios are MODEL / BASELINE.", stage="bench", metavar="MODEL", min_length=1,
                                 commands=("bench",))
    seq_lens: list[int] = opt(None, "Prefill lengths, comma-separated ('' for none).", stage="bench",
                              parse="csv-int", metavar="T1,T2", default_factory=lambda: [128, 512],
                              commands={"bench": {}, "prune": {"flag": "--bench-seq-lens"}})
    decode_tokens: int = opt(32, "Greedy decode steps with KV cache (0: no decode).", stage="bench", ge=0,
                             metavar="N", commands={"bench": {}, "prune": {"flag": "--bench-decode-tokens"}})
    prompt_len: int = opt(128, "Prompt length before decoding.", stage="bench", ge=1, metavar="T",
                          commands=("bench",))
    batch_size: int = opt(1, "Sequences per forward pass.", stage="bench", ge=1, metavar="B",
                          commands={"bench": {"flag": "--batch-size"}})
    repeats: int = opt(5, "Timed repetitions per model and workload (median reported).", stage="bench", ge=1,
                       metavar="N", commands={"bench": {}, "prune": {"flag": "--bench-repeats"}})
    warmup: int = opt(1, "Untimed warm-up runs per model and workload.", stage="bench", ge=0, metavar="N",
                      commands=("bench",))
    labels: list[str] = opt(None, "Names for BASELINE,MODEL in tables.", stage="bench", parse="csv",
                            metavar="A,B", default_factory=lambda: ["dense", "pruned"], commands=("bench",),
                            min_length=2, max_length=2)
    threads: Optional[int] = opt(None, "CPU threads for torch during the measurement (default: torch's).",
                                 stage="bench", ge=1, metavar="N",
                                 commands={"bench": {}, "prune": {"flag": "--bench-threads"}})

    def options(self) -> dict:
        return {"seq_lens": list(self.seq_lens), "decode_tokens": self.decode_tokens, "prompt_len": self.prompt_len,
                "batch_size": self.batch_size, "repeats": self.repeats, "warmup": self.warmup,
                "threads": self.threads}


class OutputRecipe(Section):
    """Where and how the result is written (every file goes through :mod:`depthprune.io.writer`)."""

    path: Optional[str] = opt(None, "Output directory (or FILE.gguf / scores FILE.json).", stage="write",
                              flag="--out", metavar="PATH", min_length=1,
                              commands={c: {} for c in ("prune", "score", "sweep", "heads", "repair", "report")})
    overwrite: bool = opt(False, "Replace this command's own earlier output (or an empty directory); never "
                          "anything else.", stage="write",
                          commands={c: {} for c in ("prune", "score", "sweep", "heads", "repair", "eval", "bench",
                                                    "report")})
    format: Literal["hf", "gguf"] = opt("hf", "hf (transformers checkpoint, default) or gguf (from a GGUF source: "
                                        "the original quantized tensors of the kept blocks, byte for byte; default "
                                        "when --out ends in .gguf; from any other source: exported, see "
                                        "--gguf-type).", stage="write", metavar="FORMAT", commands=("prune",))
    gguf_type: Literal["f32", "f16", "bf16", "q8_0"] = opt("f16", "GGUF precision when a non-GGUF model is exported "
                                                           "with --format gguf: f32, f16, bf16, q8_0.", stage="write",
                                                           metavar="TYPE", commands=("prune",))
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "Dtype of the saved weights: auto (the dtype the model came in; bfloat16 for a quantized GGUF), "
        "float32, bfloat16 or float16.", stage="write", metavar="DTYPE", commands=("prune", "heads", "repair"))
    json_file: Optional[str] = opt(None, "Also write the results as JSON here.", stage="write", flag="--json",
                                   metavar="FILE",
                              min_length=1, commands={"eval": {}, "bench": {}})
    evidence: Optional[list[str]] = opt(None, "More result files or folders to report on (task results JSON from "
                                        "`depthprune eval`, bench.json from `depthprune bench --compare`), "
                                        "comma-separated.", stage="write", parse="csv", metavar="PATH,..",
                                        flag="--with", commands=("report",))
    results: Optional[str] = opt(None, "Directory for the task results JSON (default: ./eval-results; never inside "
                                 "an input).", stage="write", metavar="DIR", min_length=1, commands=("eval",))

    @model_validator(mode="after")
    def _gguf_suffix(self):
        if self.format != "gguf" and self.path is not None and self.path.lower().endswith(".gguf"):
            raise ValueError(f"output path {self.path} ends in .gguf but the output format is '{self.format}'; "
                             "use --format gguf or a directory path")
        return self


class RuntimeRecipe(Section):
    """How the model is loaded and run."""

    dtype: Literal["float32", "bfloat16", "float16"] = opt("float32", "Compute dtype: float32, bfloat16 or float16.",
                                                           stage="load", metavar="DTYPE", commands=COMMANDS[:-1])
    device: str = opt("cpu", "cpu, cuda, cuda:N, or auto (accelerate device_map).", stage="load", metavar="DEVICE",
                      commands=COMMANDS[:-1], min_length=1)
    trust_remote_code: bool = opt(False, "Allow a model's own Python code (auto_map) to run. Off by default: such "
                                  "models are refused. Never taken from a recipe file.", stage="load",
                                  commands=COMMANDS[:-1])
    offload: Literal["none", "layers", "auto"] = opt(
        "auto", "auto (default): the fastest path that fits (a checkpoint cut on disk when nothing needs a forward "
        "pass, layer streaming when the weights do not fit in memory), layers: one decoder layer at a time from a "
        "safetensors directory, none: the whole model in memory.", stage="load", metavar="MODE",
        commands=("prune", "score"))
    activation_budget_mb: Optional[int] = opt(
        None, "With layer streaming: activations kept in memory while scoring or fitting a linear repair (the rest "
        "is spilled to disk and read back in order). Default: a tenth of the weights at the compute dtype, at most "
        "1024.", stage="score", ge=1, metavar="MB", commands=("prune", "score"))


SECTIONS: dict[str, type[Section]] = {
    "calibration": CalibrationRecipe, "selection": SelectionRecipe, "sweep": SweepRecipe, "heads": HeadsRecipe,
    "repair": RepairRecipe, "search": SearchRecipe, "quantization": QuantizationRecipe, "evaluation": EvaluationRecipe,
    "bench": BenchRecipe, "output": OutputRecipe, "runtime": RuntimeRecipe,
}


class Recipe(BaseModel):
    """One run of one command, stage by stage. ``Recipe.load(path)`` / ``to_json()`` round-trip exactly."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)

    def __init__(self, **data):
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise DepthpruneError(validation_sentence(exc, "recipe", data.get("command", "prune"))) from None

    model: str = Field(..., min_length=1, description="Demo alias, .gguf file, local checkpoint dir or Hub id (for "
                       "repair: the pruned directory; for report: the output directory to report on).")
    command: Command = "prune"
    calibration: CalibrationRecipe = Field(default_factory=CalibrationRecipe)
    selection: SelectionRecipe = Field(default_factory=SelectionRecipe)
    sweep: SweepRecipe = Field(default_factory=SweepRecipe)
    heads: HeadsRecipe = Field(default_factory=HeadsRecipe)
    repair: RepairRecipe = Field(default_factory=RepairRecipe)
    search: SearchRecipe = Field(default_factory=SearchRecipe)
    quantization: QuantizationRecipe = Field(default_factory=QuantizationRecipe)
    evaluation: EvaluationRecipe = Field(default_factory=EvaluationRecipe)
    bench: BenchRecipe = Field(default_factory=BenchRecipe)
    output: OutputRecipe = Field(default_factory=OutputRecipe)
    runtime: RuntimeRecipe = Field(default_factory=RuntimeRecipe)
    version: int = RECIPE_VERSION

    @model_validator(mode="after")
    def _sections_agree(self):
        """Rules between sections that need no model (the planner checks the rest)."""
        out, quant = self.output, self.quantization
        if out.format == "gguf" and quant.method is not None:
            raise ValueError("--quantize makes torchao checkpoints (--format hf); for a quantized GGUF use "
                             "--gguf-type q8_0 instead")
        if out.format == "gguf" and out.save_dtype != "auto":
            raise ValueError("--save-dtype applies to Hugging Face checkpoints; for GGUF choose --gguf-type")
        if out.format != "gguf" and out.gguf_type != "f16":
            raise ValueError("--gguf-type sets the precision of a GGUF output; give --format gguf (or an --out "
                             "ending in .gguf) too, or drop it")
        if quant.method is not None and out.save_dtype != "auto":
            raise ValueError("--save-dtype cannot be combined with --quantize: quantized weights are saved as they "
                             "are (choose the float dtype with --dtype)")
        return self

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def for_command(cls, command: str, model: str, **sections: dict) -> "Recipe":
        """A recipe with the per-command defaults of ``command`` (e.g. sweep's 32 calibration samples), then
        ``sections`` (``{"calibration": {"samples": 8}}``) applied on top."""
        data: dict = {"model": model, "command": command}
        for name, section in SECTIONS.items():
            values = command_defaults(section, command)
            values.update(sections.get(name) or {})
            if values:
                data[name] = values
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise DepthpruneError(f"unknown recipe section(s) {', '.join(sorted(unknown))}; "
                                  f"known: {', '.join(SECTIONS)}")
        return cls.from_json(data, where="recipe")

    @classmethod
    def from_json(cls, data: Any, *, where: str = "recipe") -> "Recipe":
        """Build and type-check a recipe from plain data; any problem is one sentence naming the field."""
        if not isinstance(data, dict):
            raise DepthpruneError(f"a recipe must be a JSON object, got {type(data).__name__}")
        if "recipe" in data and isinstance(data["recipe"], dict):  # a previous run's depthprune.json
            data = data["recipe"]
        data = dict(data)
        version = data.get("version", RECIPE_VERSION)
        if version not in READABLE_VERSIONS:
            raise DepthpruneError(f"recipe version {version!r} is not supported by this depthprune "
                                  f"(it reads versions {', '.join(map(str, READABLE_VERSIONS))})")
        if version == 1:
            data = _upgrade_v1(data)
        data["version"] = RECIPE_VERSION
        try:
            return cls.model_validate(data, strict=True)
        except ValidationError as exc:
            raise DepthpruneError(validation_sentence(exc, where, data.get("command", "prune"))) from None

    @classmethod
    def from_file(cls, path: str | Path) -> "Recipe":
        """Read a recipe JSON file, or the recipe recorded in a previous run's ``depthprune.json`` (file or directory).

        A file never grants trust or overwriting: ``runtime.trust_remote_code`` and ``output.overwrite`` are
        cleared whatever the file says (:attr:`file_grants` keeps what it asked for, for the caller to mention).
        """
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / "depthprune.json"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DepthpruneError(f"recipe file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DepthpruneError(f"cannot read recipe file {path}: {exc}") from None
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise DepthpruneError(f"recipe file {path} is not valid JSON ({exc})") from None
        if isinstance(data, dict) and "removed_layers" in data and "recipe" not in data:
            raise DepthpruneError(f"{path} was written by a depthprune version that recorded no recipe; "
                                  "give the flags instead")
        recipe = cls.from_json(data, where=f"recipe file {path}")
        asked = [f"{s}.{f}" for s, f in GRANTS if getattr(getattr(recipe, s), f)]
        for section, name in GRANTS:
            setattr(getattr(recipe, section), name, False)
        object.__setattr__(recipe, "_file_grants", asked)
        return recipe

    load = from_file

    @property
    def file_grants(self) -> list[str]:
        """The grants (trust, overwrite) a recipe file asked for and did not get; empty for other recipes."""
        return list(getattr(self, "_file_grants", []))

    # -- use ---------------------------------------------------------------------------------------------------

    def to_json(self) -> dict:
        return self.model_dump(mode="json")

    def replace(self, section: str, **values) -> "Recipe":
        """Set fields of one section in place (``recipe.replace("selection", remove=4)``) and return the recipe;
        each value is type-checked as in a recipe file."""
        target = getattr(self, section, None)
        if not isinstance(target, Section):
            raise DepthpruneError(f"the recipe has no section '{section}'; known: {', '.join(SECTIONS)}")
        for name, value in values.items():
            if name not in type(target).model_fields:
                raise DepthpruneError(f"recipe section '{section}' has no field '{name}'")
            try:
                setattr(target, name, value)
            except ValidationError as exc:
                raise DepthpruneError(validation_sentence(exc, f"recipe.{section}", self.command)) from None
        return self

    def validate(self, **_ignored) -> "Recipe":
        """Re-check every section against its declaration (types, bounds, one field against another)."""
        Recipe.from_json(self.to_json())
        return self

    def active_fields(self) -> list[tuple[str, str]]:
        """(section, field) pairs whose value differs from this command's default: what the run asks for."""
        active = []
        for name, section_cls in SECTIONS.items():
            section = getattr(self, name)
            defaults = section_cls(**command_defaults(section_cls, self.command))
            for fname in section_cls.model_fields:
                if getattr(section, fname) != getattr(defaults, fname):
                    active.append((name, fname))
        return active

    @staticmethod
    def json_schema() -> dict:
        return Recipe.model_json_schema()


def _section_name(cls: type) -> str:
    return next((name for name, c in SECTIONS.items() if c is cls), cls.__name__)


# -- declarations as data (for the CLI, the planner and the docs) -----------------------------------------------


def field_info(section: type[Section], name: str) -> dict:
    """The declaration of one field: stage, commands, flag, parse, metavar, help, default."""
    f = section.model_fields[name]
    extra = dict(f.json_schema_extra or {})
    default = f.default_factory() if f.default_factory is not None else f.default
    return {**extra, "help": f.description or "", "default": default, "annotation": f.annotation}


def command_defaults(section: type[Section], command: str) -> dict:
    """The fields whose default differs for ``command`` (``{"samples": 32}`` for sweep's calibration)."""
    out = {}
    for name in section.model_fields:
        override = (field_info(section, name)["commands"].get(command) or {})
        if "default" in override:
            out[name] = override["default"]
    return out


def flag_of(section: str, name: str, command: str) -> str:
    """The command-line flag that sets ``section.name`` for ``command`` (``--eval-ppl``, ``--ppl``, ...)."""
    cls = SECTIONS.get(section)
    if cls is None or name not in cls.model_fields:
        return f"{section}.{name}"
    info = field_info(cls, name)
    override = info["commands"].get(command) or {}
    return override.get("flag") or info.get("flag") or "--" + name.replace("_", "-")


def command_fields(command: str) -> list[tuple[str, str]]:
    """The (section, field) pairs ``command`` accepts, in declaration order."""
    return [(s, n) for s, cls in SECTIONS.items() for n in cls.model_fields
            if command in field_info(cls, n)["commands"]]


def stage_of(section: str, name: str) -> str:
    return field_info(SECTIONS[section], name)["stage"]


def _upgrade_v1(data: dict) -> dict:
    """Version 1 kept bench options in ``evaluation.bench_options`` and had no command; move them."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    evaluation = data.get("evaluation")
    if isinstance(evaluation, dict) and "bench_options" in evaluation:
        options = evaluation.pop("bench_options") or {}
        if not isinstance(options, dict):
            raise DepthpruneError("recipe.evaluation.bench_options must be an object")
        bench = dict(data.get("bench") or {})
        for key, value in options.items():
            bench[key] = value
        if bench:
            data["bench"] = bench
    if isinstance(evaluation, dict) and isinstance(evaluation.get("tasks"), str):
        evaluation["tasks"] = [t.strip() for t in evaluation["tasks"].split(",") if t.strip()]
    runtime = data.get("runtime")
    if isinstance(runtime, dict) and runtime.get("offload") == "none" and "command" not in data:
        runtime["offload"] = "auto"  # version 1 had no fast-path choice: "none" was its default, not a request
    return data


def validation_sentence(exc: ValidationError, where: str, command: str = "prune", section: str | None = None) -> str:
    """One sentence for the first problem pydantic found, naming the flag (or recipe field) and the bad value.
    ``section``: the section the error's location is relative to (a section validated on its own)."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
    if section is not None:
        loc = [section, *loc]
    value = err.get("input")
    kind = err.get("type", "")
    if kind in ("value_error", "assertion_error"):
        message = str(err.get("ctx", {}).get("error", err.get("msg", ""))).removeprefix("Value error, ")
        return message
    if len(loc) >= 2 and loc[0] in SECTIONS:
        name = f"{flag_of(loc[0], loc[1], command)} ({where}.{loc[0]}.{loc[1]})" if where != "flags" else \
            flag_of(loc[0], loc[1], command)
    elif loc:
        name = f"{where}.{'.'.join(loc)}"
    else:
        name = where
    if kind == "extra_forbidden":
        field_name = loc[-1] if loc else "?"
        section = loc[0] if len(loc) > 1 else None
        known = list(SECTIONS[section].model_fields) if section in SECTIONS else list(Recipe.model_fields)
        return f"unknown field '{field_name}' in {where}{'.' + section if section else ''}; known: {', '.join(known)}"
    if kind == "missing":
        return f"{where} lacks the required field '{'.'.join(loc)}'"
    shown = _show(value)
    messages = {
        "int_type": "must be a whole number", "int_parsing": "must be a whole number",
        "float_type": "must be a number", "float_parsing": "must be a number",
        "bool_type": "must be true or false", "bool_parsing": "must be true or false",
        "string_type": "must be a string", "list_type": "must be a list", "dict_type": "must be an object",
        "model_type": "must be an object", "finite_number": "must be a finite number",
        "literal_error": "must be one of " + str(err.get("ctx", {}).get("expected", "")).replace("'", ""),
    }
    if kind == "literal_error" and loc and isinstance(value, str):
        nouns = {"metric": "metric", "strategy": "strategy", "metrics": "metric", "strategies": "strategy",
                 "methods": "repair method", "method": "quantization", "offload": "offload mode"}
        if loc[0] == "heads":
            nouns = {"metrics": "head metric", "units": "head unit", "remove_unit": "head unit",
                     "select_by": "head metric"}
        noun = nouns.get(loc[-1], loc[-1].replace("_", " "))
        return f"unknown {noun} '{value}' ({name}): choose one of " + \
            str(err.get("ctx", {}).get("expected", "")).replace("'", "")
    if kind in messages:
        return f"{name} {messages[kind]}, got {shown}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        low, high = _bounds(loc)
        if low is not None and high is not None:
            return f"{name} must be between {_num(low)} and {_num(high)}, got {shown}"
        bound = next(iter(err.get("ctx", {}).values()), "?")
        words = {"greater_than_equal": "at least", "greater_than": "more than", "less_than_equal": "at most",
                 "less_than": "less than"}[kind]
        return f"{name} must be {words} {bound}, got {shown}"
    if kind in ("too_short", "string_too_short"):
        return f"{name} must not be empty"
    if kind == "too_long":
        return f"{name} has too many entries, got {shown}"
    return f"{name}: {err.get('msg', 'invalid value')} (got {shown})"


def _bounds(loc: list[str]) -> tuple[Any, Any]:
    """(lower, upper) bound of a field with both (``ratio``: 0 < R < 1), else Nones."""
    if len(loc) < 2 or loc[0] not in SECTIONS or loc[1] not in SECTIONS[loc[0]].model_fields:
        return None, None
    low = high = None
    for item in SECTIONS[loc[0]].model_fields[loc[1]].metadata:
        low = getattr(item, "gt", getattr(item, "ge", low)) if hasattr(item, "gt") or hasattr(item, "ge") else low
        high = getattr(item, "lt", getattr(item, "le", high)) if hasattr(item, "lt") or hasattr(item, "le") else high
    return low, high


def _num(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _show(value: Any) -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return repr(value)
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, list, dict, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
