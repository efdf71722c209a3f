"""Result records (plain dataclasses with ``to_json``) and library versions."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from depthprune._version import library_versions


@dataclass
class ScoreReport:
    """Per-layer importance scores. Layer indices are 0-based, original numbering."""

    model: str
    model_type: str | None
    metric: str
    num_layers: int
    scores: list[float]
    removal_order: list[int]
    tokens: int
    calibration: dict
    block_scores: dict | None = None  # angular metrics: {block size n: distance per start layer}
    selection: dict | None = None  # with score(strategy=..., remove=...): the layers that strategy would remove
    scale: dict | None = None  # offload mode, streaming stats, torchrun world size, samples and tokens per rank (scale/)
    versions: dict = field(default_factory=library_versions)
    indexing: str = "0-based, original numbering"

    def to_json(self) -> dict:
        data = asdict(self)
        if self.block_scores is not None:
            data["block_scores"] = {str(k): v for k, v in self.block_scores.items()}
        return data


@dataclass
class PruneReport:
    """What was removed and what it cost. Layer indices are 0-based, original numbering."""

    model: str
    model_type: str | None
    metric: str
    strategy: str
    removed_layers: list[int]
    kept_layers: list[int]
    num_layers_before: int
    num_layers_after: int
    params_before: int
    params_after: int
    scores: list[float]
    calibration: dict
    protect_first: int = 0
    protect_last: int = 0
    perplexity: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)  # removal order and strategy details
    versions: dict = field(default_factory=library_versions)
    indexing: str = "0-based, original numbering"
    command: str | None = None  # the command line that produced it (None: made through the Python API)
    recipe: dict | None = None  # the Recipe that produced it (depthprune prune --recipe replays it)
    repair: dict | None = None  # what the repair stage did and measured (depthprune.repair), None: no repair
    source: dict = field(default_factory=dict)  # kind (demo/gguf/local/hub/in-memory), source_dtype, upstream Hub id
    timings: dict = field(default_factory=dict)  # seconds per stage: loading, calibration, scoring, perplexity, ...
    save_dtype: str | None = None  # dtype of the saved weights (set by save)
    checkpoint_bytes: int | None = None  # size of the saved weight files on disk (set by save)
    executor: str | None = None  # in-memory, on-disk, layer-streamed or gguf-cut (pipeline.plan.EXECUTORS)
    scale: dict | None = None  # layer streaming statistics / torchrun world size (when used)
    readback: dict | None = None  # what the read-back check of the written output measured (io.readback)
    search: dict | None = None  # prune --auto: the budget, the validation split and every candidate it measured

    def to_json(self) -> dict:
        return asdict(self)
