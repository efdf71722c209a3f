"""A pruning run described as one plain, serialisable recipe.

The CLI builds a :class:`Recipe` from its flags, the API runs it (:func:`depthprune.api.run`),
``depthprune.json`` records it under ``"recipe"``, and ``depthprune prune --recipe FILE`` replays
it (FILE is a recipe JSON or a previous run's ``depthprune.json``). Each pipeline stage owns one
section; a section's defaults mean "this stage is off" where the stage is optional::

    model ─► calibration ─► selection ─► surgery ─► repair ─► quantization ─► evaluation ─► output

Sections are dataclasses of plain values only (str, int, float, bool, lists, dicts), so
``Recipe.from_json(r.to_json()) == r`` always holds.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import DepthpruneError

RECIPE_VERSION = 1


@dataclass
class CalibrationRecipe:
    """Text the importance scores are measured on (see :mod:`depthprune.data`)."""

    data: str = "builtin"
    samples: int = 128
    seq_len: int = 512
    batch_size: int = 8
    seed: int = 0
    text_field: str = "text"

    def validate(self) -> None:
        _positive(self, "samples", "seq_len", "batch_size")


@dataclass
class SelectionRecipe:
    """Which layers go: a count (``remove`` or ``ratio``) chosen by ``metric``/``strategy``, or explicit ``layers``."""

    remove: int | None = None
    ratio: float | None = None
    layers: list[int] | None = None  # explicit 0-based layers; no scoring at all
    scores: str | None = None  # a scores JSON from `depthprune score`: choose from it instead of scoring
    metric: str | None = None  # None: the strategy's default (bi, angular for block, ppl for greedy-ppl)
    strategy: str = "one-shot"
    protect_first: int = 0
    protect_last: int = 0
    laco: str | None = None  # LaCo settings "C=3,L=1,I=1,T=0.5" for strategy laco (issue 11); None: defaults

    def validate(self) -> None:
        if self.laco is not None:
            from .merging import LacoSettings

            LacoSettings.parse(self.laco)
        if self.layers is not None:
            if self.remove is not None or self.ratio is not None:
                raise DepthpruneError("give either explicit layers or a count (--remove/--ratio), not both")
            if not self.layers:
                raise DepthpruneError("the explicit layer list is empty; name at least one layer to remove")
            if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in self.layers):
                raise DepthpruneError(f"layers must be 0-based whole numbers, got {self.layers}")
            if len(set(self.layers)) != len(self.layers):
                raise DepthpruneError(f"the layer list names a layer twice: {self.layers}")
            return
        from .selection import check_removal_request
        from .strategies import resolve

        check_removal_request(self.remove, self.ratio)
        resolve(self.metric, self.strategy)
        for name in ("protect_first", "protect_last"):
            if getattr(self, name) < 0:
                raise DepthpruneError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")


@dataclass
class EvaluationRecipe:
    """What is measured on the dense and the pruned model, side by side."""

    ppl: str | None = None  # text SPEC for perplexity; None: none
    ppl_seq_len: int = 512
    ppl_max_tokens: int = 40_000
    tasks: str | None = None  # lm-eval task names, comma-separated; None: none
    limit: float | None = None
    num_fewshot: int | None = None
    data_dir: str | None = None
    bench: bool = False
    bench_options: dict = field(default_factory=dict)  # see depthprune.speed.compare

    def validate(self) -> None:
        from .data import validate_spec

        _positive(self, "ppl_seq_len", "ppl_max_tokens")
        if self.ppl is not None:
            validate_spec(self.ppl, allow_self=False)
        if self.tasks is not None:
            from .evaluation import check_tasks

            check_tasks(self.tasks, self.data_dir)

    def task_options(self, batch_size: int) -> dict:
        limit = int(self.limit) if self.limit is not None and self.limit >= 1 else self.limit
        return {"limit": limit, "num_fewshot": self.num_fewshot, "data_dir": self.data_dir, "batch_size": batch_size}


@dataclass
class OutputRecipe:
    """Where and how the result is written."""

    path: str | None = None  # None: nothing is saved (API use)
    overwrite: bool = False
    format: str = "hf"  # hf: a transformers checkpoint directory; gguf: a GGUF file (DIR/model.gguf or FILE.gguf)
    gguf_type: str = "f16"  # with format gguf: f32, f16, bf16 or q8_0 (depthprune.formats.gguf_export)

    def validate(self) -> None:
        if self.format not in OUTPUT_FORMATS:
            raise DepthpruneError(f"unknown output format '{self.format}'; choose one of {', '.join(OUTPUT_FORMATS)}")
        # --- GGUF output (issue 9 section 1): path X.gguf = one file, any other path = a directory with model.gguf
        if self.format != "gguf" and self.path is not None and self.path.lower().endswith(".gguf"):
            raise DepthpruneError(f"output path {self.path} ends in .gguf but the output format is '{self.format}'; "
                                  "use format gguf (--format gguf) or a directory path")
        if self.format == "gguf":
            from .formats.gguf_export import check_gguf_type

            check_gguf_type(self.gguf_type)


OUTPUT_FORMATS = ("hf", "gguf")


@dataclass
class QuantizationRecipe:
    """Weight-only quantization of the pruned model (torchao; see :mod:`depthprune.formats.quantize`)."""

    method: str | None = None  # None: off; int8 or int4
    group_size: int = 32  # int4 only: inputs per scale

    def validate(self) -> None:
        if self.method is not None:
            from .formats.quantize import check_method

            check_method(self.method, self.group_size)


@dataclass
class RuntimeRecipe:
    """How the model is loaded and run."""

    dtype: str = "float32"
    device: str = "cpu"
    # --- scale (issue 12) ---
    offload: str = "none"  # none: the model in memory; layers: one decoder layer at a time, pruned on disk; auto
    activation_budget_mb: int = 1024  # layer streaming: activations kept in memory, the rest spilled to disk

    def validate(self) -> None:
        from .models import resolve_dtype

        resolve_dtype(self.dtype)
        # --- scale (issue 12) ---
        from .scale.pipeline import check_offload

        check_offload(self.offload)
        _positive(self, "activation_budget_mb")


# --- repair (issue 10) ---------------------------------------------------------------------------
REPAIR_METHODS = ("linear", "lora")


@dataclass
class RepairRecipe:
    """Repair after removal; ``methods=[]`` (default) is off. ``linear`` then ``lora`` when both are given.

    linear: a map per removed run fitted on the dense model's calibration activations (``objective`` lstsq or
    cosine, ``ridge``), folded into the layer before the run. lora: peft LoRA on ``data`` for ``tokens``
    tokens (next-token loss, or KL to the dense model with ``distill``), merged into the weights.
    """

    methods: list[str] = field(default_factory=list)
    objective: str = "lstsq"
    ridge: float | None = None  # None: chosen per removed run by 2-fold cross-validation on the calibration
    cosine_steps: int = 30
    data: str | None = None
    tokens: int = 32768
    seq_len: int = 256
    distill: bool = False
    rank: int = 8
    alpha: float = 16.0
    lr: float = 1e-3
    batch_size: int = 4
    eval_every: int = 10
    seed: int = 0

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in REPAIR_METHODS]
        if bad:
            raise DepthpruneError(f"unknown repair method '{bad[0]}'; choose from {', '.join(REPAIR_METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise DepthpruneError(f"a repair method is named twice: {','.join(self.methods)}")
        if self.methods and self.methods != [m for m in REPAIR_METHODS if m in self.methods]:
            raise DepthpruneError("repair methods run linear first, then lora: write --repair linear,lora")
        if self.objective not in ("lstsq", "cosine"):
            raise DepthpruneError(f"unknown --repair-objective '{self.objective}'; choose lstsq or cosine")
        if (self.ridge is not None and self.ridge < 0) or self.lr <= 0 or self.alpha <= 0:
            raise DepthpruneError("the repair ridge must be >= 0, and the LoRA lr and alpha > 0")
        _positive(self, "cosine_steps", "tokens", "seq_len", "rank", "batch_size", "eval_every")
        if "lora" in self.methods:
            if self.data is None:
                raise DepthpruneError("lora repair needs text to train on: give --repair-data SPEC")
            from .data import validate_spec

            validate_spec(self.data, allow_self=False)
            if self.tokens < self.seq_len:
                raise DepthpruneError(f"--repair-tokens {self.tokens} is less than one window of {self.seq_len} tokens")
# --- end repair ----------------------------------------------------------------------------------


@dataclass
class Recipe:
    """One pruning run, stage by stage. ``Recipe.load(path)`` / ``to_json()`` round-trip exactly."""

    model: str
    calibration: CalibrationRecipe = field(default_factory=CalibrationRecipe)
    selection: SelectionRecipe = field(default_factory=SelectionRecipe)
    evaluation: EvaluationRecipe = field(default_factory=EvaluationRecipe)
    output: OutputRecipe = field(default_factory=OutputRecipe)
    runtime: RuntimeRecipe = field(default_factory=RuntimeRecipe)
    repair: RepairRecipe = field(default_factory=RepairRecipe)
    quantization: QuantizationRecipe = field(default_factory=QuantizationRecipe)
    version: int = RECIPE_VERSION

    def validate(self, *, check_data: bool = True) -> "Recipe":
        """Check every section (one-sentence :class:`DepthpruneError`) before any model or data work.

        ``check_data=False`` skips the calibration SPEC (the caller brings its own calibration or scores).
        """
        if not isinstance(self.model, str) or not self.model:
            raise DepthpruneError("the recipe names no model")
        for f in fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        if self.selection.strategy == "laco" and "linear" in self.repair.methods:
            raise DepthpruneError("linear repair fits its map on the unmerged model's activations, which LaCo's merged "
                                  "layers no longer produce; use --repair lora with --strategy laco")
        if self.quantization.method is not None and self.output.format == "gguf":
            raise DepthpruneError("--quantize makes torchao checkpoints (--format hf); for a quantized GGUF "
                                  "use --gguf-type q8_0 instead")
        if check_data and self.selection.layers is None:
            from .data import validate_spec

            validate_spec(self.calibration.data)
        return self

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "Recipe":
        """Build a recipe from plain data; unknown sections or fields are refused (a typo must not be ignored)."""
        if not isinstance(data, dict):
            raise DepthpruneError(f"a recipe must be a JSON object, got {type(data).__name__}")
        if "recipe" in data and isinstance(data["recipe"], dict):  # a previous run's depthprune.json
            data = data["recipe"]
        version = data.get("version", RECIPE_VERSION)
        if version != RECIPE_VERSION:
            raise DepthpruneError(f"recipe version {version} is not supported by this depthprune "
                                  f"(it reads version {RECIPE_VERSION})")
        return _build(cls, data, "recipe")

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        """Read a recipe JSON file, or the recipe recorded in a previous run's ``depthprune.json`` (file or directory)."""
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
        except json.JSONDecodeError as exc:
            raise DepthpruneError(f"recipe file {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if isinstance(data, dict) and "removed_layers" in data and "recipe" not in data:
            raise DepthpruneError(f"{path} was written by a depthprune version that recorded no recipe; "
                                  "give the flags instead")
        return cls.from_json(data)

    def replace(self, section: str, **values) -> "Recipe":
        """Set fields of one section in place (``recipe.replace("selection", remove=4)``) and return the recipe."""
        target = getattr(self, section)
        for name, value in values.items():
            if name not in {f.name for f in fields(target)}:
                raise DepthpruneError(f"recipe section '{section}' has no field '{name}'")
            setattr(target, name, value)
        return self


def _build(cls, data: dict, where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise DepthpruneError(f"unknown field(s) {', '.join(unknown)} in {where}; known: {', '.join(known)}")
    values = {}
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise DepthpruneError(f"{where} lacks the required field '{name}'")
            continue
        value = data[name]
        section = SECTIONS.get(name) if cls is Recipe else None
        if section is not None:
            if not isinstance(value, dict):
                raise DepthpruneError(f"{where}.{name} must be an object, got {type(value).__name__}")
            value = _build(section, value, f"{where}.{name}")
        values[name] = value
    return cls(**values)


def _positive(section, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            flag = name.replace("_", "-")
            raise DepthpruneError(f"{flag} must be a whole number of at least 1, got {value!r}")


SECTIONS = {"calibration": CalibrationRecipe, "selection": SelectionRecipe, "evaluation": EvaluationRecipe,
            "output": OutputRecipe, "runtime": RuntimeRecipe, "quantization": QuantizationRecipe}
SECTIONS["repair"] = RepairRecipe
