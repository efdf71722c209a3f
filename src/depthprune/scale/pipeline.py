"""Scoring and pruning without the whole model in memory, and scoring over several processes.

:func:`score_scaled` is what :func:`depthprune.api.score` calls with ``offload`` set or under
``torchrun``; :func:`prune_offloaded` is what :func:`depthprune.api.run` calls with
``RuntimeRecipe.offload`` set: layer-streamed scoring (when layers must be chosen) followed by
pruning the checkpoint on disk. Neither ever holds more than one decoder layer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence


from ..data import CalibrationSet, build_calibration, validate_spec
from ..errors import DepthpruneError
from ..metrics import LOSS_METRICS, check_metric, make_metric
from ..models import resolve_dtype
from ..reports import PruneReport, ScoreReport
from ..selection import ascending_order, removal_count, select_lowest
from . import distributed
from .checkpoint import checkpoint_shards, prune_checkpoint
from .streamed import StreamedModel, check_streamable, run_layer_metrics_streamed, should_stream

log = logging.getLogger(__name__)

OFFLOAD_MODES = ("none", "layers", "auto")


def check_offload(offload: str) -> str:
    if offload not in OFFLOAD_MODES:
        raise DepthpruneError(f"unknown offload mode '{offload}': choose none, layers or auto")
    return offload


def _safetensors_dir(model) -> Path | None:
    if not isinstance(model, (str, Path)):
        return None
    path = Path(model).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        return None
    try:
        checkpoint_shards(path)
    except DepthpruneError:
        return None
    return path


def resolve_offload(offload: str, model, dtype: str) -> str:
    """``none`` or ``layers``: ``auto`` streams when the weights would not fit in the available memory."""
    check_offload(offload)
    if offload == "none":
        return "none"
    path = _safetensors_dir(model)
    if path is None:
        if offload == "layers":
            raise DepthpruneError(f"--offload layers needs a local safetensors checkpoint directory, not '{model}'; "
                                  "save the model with save_pretrained first or drop --offload")
        return "none"
    if offload == "auto":
        streamed = should_stream(path, resolve_dtype(dtype))
        log.info("--offload auto: %s", "streaming layers" if streamed else "the model fits in memory")
        return "layers" if streamed else "none"
    return "layers"


def wants_scaled_scoring(model, offload: str, dtype: str) -> bool:
    return distributed.launched_by_torchrun() or resolve_offload(offload, model, dtype) == "layers"


def _tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise DepthpruneError(f"could not load the tokenizer of {path}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def score_scaled(model, tokenizer=None, *, data: str | CalibrationSet = "builtin", metric: str = "bi",
                 samples: int = 128, seq_len: int = 512, batch_size: int = 8, seed: int = 0, text_field: str = "text",
                 block_sizes: Sequence[int] = (1,), strategy: str | None = None, remove: int | None = None,
                 protect_first: int = 0, protect_last: int = 0, dtype: str = "float32", device: str = "cpu",
                 offload: str = "layers", activation_budget_mb: int = 1024, spill_dir: str | None = None,
                 progress: bool = True) -> ScoreReport:
    """Layer scores, streamed (``offload``) and/or data-parallel (under torchrun); the report records how."""
    check_metric(metric)
    mode = resolve_offload(offload, model, dtype)
    info = distributed.init(device)
    device = distributed.local_device(device)
    if metric in LOSS_METRICS:
        if mode == "layers":
            check_streamable([metric])
        raise DepthpruneError(f"metric '{metric}' is not data-parallel; run it in one process (without torchrun)")
    if strategy not in (None, "one-shot"):
        raise DepthpruneError(f"with --offload layers or under torchrun the score preview supports the one-shot "
                              f"strategy only, not '{strategy}'")
    if isinstance(data, str):
        validate_spec(data)
        if data == "self" and mode == "layers":
            raise DepthpruneError("'self' calibration data needs the whole model to generate text; "
                                  "give a text file or builtin with --offload layers")
    streamed = loaded = None
    if mode == "layers":
        path = _safetensors_dir(model)
        streamed = StreamedModel(path, dtype=resolve_dtype(dtype), device=device)
        tokenizer = tokenizer if tokenizer is not None else (None if isinstance(data, CalibrationSet) else _tokenizer(path))
        n, source, model_type, gen_model = streamed.num_layers, str(model), streamed.config.model_type, None
    else:
        from ..architectures import layout
        from ..models import LoadedModel, load_model

        if isinstance(model, LoadedModel):
            loaded = model
        elif isinstance(model, (str, Path)):
            loaded = load_model(str(model), dtype=dtype, device=device)
        else:
            loaded = LoadedModel(model, tokenizer, getattr(model.config, "_name_or_path", "") or type(model).__name__,
                                 {"model_type": getattr(model.config, "model_type", None)})
        tokenizer = tokenizer if tokenizer is not None else loaded.tokenizer
        n = len(layout(loaded.model).layers(loaded.model))
        source, model_type, gen_model = loaded.source, loaded.info.get("model_type"), loaded.model
    if isinstance(data, CalibrationSet):
        calibration = data
    else:
        if tokenizer is None:
            raise DepthpruneError("a text data spec needs the tokenizer; pass tokenizer= or a CalibrationSet")
        calibration = build_calibration(data, tokenizer, samples=samples, seq_len=seq_len, seed=seed,
                                        text_field=text_field, model=gen_model, batch_size=batch_size,
                                        progress=progress)
    part, counts = (calibration, [calibration.num_batches(batch_size)]) if info is None else \
        distributed.shard(calibration, batch_size, info.rank, info.world_size)
    metrics = [make_metric(metric, n, seed=seed, block_sizes=block_sizes)]
    scale: dict = {"offload": mode}
    if streamed is not None:
        stats = run_layer_metrics_streamed(streamed, part, metrics, batch_size=batch_size,
                                           activation_budget_bytes=int(activation_budget_mb) << 20,
                                           spill_dir=spill_dir, progress=progress)
        local_tokens = stats.tokens
        scale["stream"] = stats.to_json()
    else:
        from ..scoring import run_layer_metrics

        local_tokens = run_layer_metrics(loaded.model, part, metrics, batch_size=batch_size, progress=progress)
    if info is not None:
        distributed.all_reduce_metrics(metrics, device)
        info.batches_per_rank = counts
        info.tokens_per_rank = distributed.gather_counts(local_tokens, device)
        scale["distributed"] = info.to_json()
    m = metrics[0]
    values = [float(v) for v in m.result()]
    blocks = m.block_result() if metric.startswith("angular") and len(block_sizes) > 1 else None
    selection = None
    if strategy is not None:
        k = removal_count(len(values), remove=remove)
        chosen = select_lowest(values, k, protect_first=protect_first, protect_last=protect_last)
        selection = {"strategy": strategy, "removed_layers": chosen,
                     "order": [i for i in ascending_order(values) if i in set(chosen)]}
    tokens = sum(info.tokens_per_rank) if info is not None else local_tokens
    if tokens != calibration.num_tokens:  # pragma: no cover - would mean a shard was scored twice or not at all
        raise RuntimeError(f"scored {tokens} tokens but the calibration set has {calibration.num_tokens}")
    return ScoreReport(model=source, model_type=model_type, metric=metric, num_layers=len(values), scores=values,
                       removal_order=ascending_order(values), tokens=tokens, calibration=dict(calibration.settings),
                       block_scores=blocks, selection=selection, scale=scale)


def offload_applies(recipe, model=None) -> bool:
    """Whether :func:`depthprune.api.run` should take the no-model path for ``recipe``."""
    rt, ev = recipe.runtime, recipe.evaluation
    if model is not None or resolve_offload(rt.offload, recipe.model, rt.dtype) == "none":
        return False
    if ev.ppl is not None or ev.tasks is not None or ev.bench:
        raise DepthpruneError("evaluation (--eval-ppl, --eval-tasks, --bench) needs the whole model in memory; "
                              "drop it or drop --offload and evaluate the pruned checkpoint afterwards")
    return True


def prune_offloaded(recipe, *, scores: ScoreReport | None = None, calibration: CalibrationSet | None = None,
                    command: str | None = None, progress: bool = True) -> PruneReport:
    """Choose the layers (explicit, from ``scores``, or by layer-streamed one-shot scoring) and prune on disk."""
    from ..strategies import resolve

    sel, cal, rt, out = recipe.selection, recipe.calibration, recipe.runtime, recipe.output
    if out.path is None:
        raise DepthpruneError("pruning a checkpoint on disk needs an output directory (--out DIR)")
    path = _safetensors_dir(recipe.model)
    score_values: list[float] = []
    calibration_settings: dict = {}
    details: dict = {}
    if sel.layers is not None:
        if scores is not None:
            raise DepthpruneError("give either explicit layers or scores to choose from, not both")
        removed, order, metric, strategy, details = sorted(sel.layers), list(sel.layers), "given", "given", {"given": True}
    else:
        metric = resolve(sel.metric if scores is None or sel.metric else scores.metric, sel.strategy)
        if sel.strategy != "one-shot":
            raise DepthpruneError(f"with --offload the layers are chosen one-shot (or given with --layers/--scores), "
                                  f"not with strategy '{sel.strategy}', which needs the model in memory")
        if scores is None:
            scores = score_scaled(str(path), data=calibration if calibration is not None else cal.data, metric=metric,
                                  samples=cal.samples, seq_len=cal.seq_len, batch_size=cal.batch_size, seed=cal.seed,
                                  text_field=cal.text_field, dtype=rt.dtype, device=rt.device, offload="layers",
                                  activation_budget_mb=rt.activation_budget_mb, progress=progress)
            details["scale"] = scores.scale
        elif scores.metric != metric:
            raise DepthpruneError(f"the given scores are '{scores.metric}' scores but metric '{metric}' was asked for")
        score_values, calibration_settings = list(scores.scores), dict(scores.calibration)
        n = removal_count(len(score_values), remove=sel.remove, ratio=sel.ratio)
        removed = select_lowest(score_values, n, protect_first=sel.protect_first, protect_last=sel.protect_last)
        order = [i for i in ascending_order(score_values) if i in set(removed)]
        strategy = sel.strategy
    if not distributed.is_main_process():
        raise DepthpruneError("prune writes one checkpoint: run it in one process (use torchrun for `score`)")
    report = PruneReport(model=recipe.model, model_type=None, metric=metric, strategy=strategy, removed_layers=removed,
                         kept_layers=[], num_layers_before=0, num_layers_after=0, params_before=0, params_after=0,
                         scores=score_values, calibration=calibration_settings, protect_first=sel.protect_first,
                         protect_last=sel.protect_last, selection={"order": order, **details, "on_disk": True},
                         command=command, recipe=recipe.to_json())

    def finish(result) -> dict:
        report.kept_layers = result.kept_layers
        report.num_layers_before, report.num_layers_after = result.num_layers_before, result.num_layers_after
        report.params_before, report.params_after = result.params_before, result.params_after
        return report.to_json()

    result = prune_checkpoint(path, removed, out.path, overwrite=out.overwrite, report=finish)
    report.model_type = result.model_type
    return report


def score_file(path: str | Path) -> ScoreReport:
    """A ScoreReport read back from a scores JSON written by ``depthprune score``."""
    import json

    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DepthpruneError(f"scores file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise DepthpruneError(f"cannot read scores file {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scores"), list) or "metric" not in data:
        raise DepthpruneError(f"{path} is not a scores file written by `depthprune score` (no metric/scores)")
    fields = ScoreReport.__dataclass_fields__
    return ScoreReport(**{k: v for k, v in data.items() if k in fields})


__all__ = ["OFFLOAD_MODES", "check_offload", "offload_applies", "prune_offloaded", "resolve_offload", "score_file",
           "score_scaled", "wants_scaled_scoring"]
