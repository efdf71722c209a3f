"""Stages that bring the model and the calibration text in: load, stream, load-repair, calibrate.

Right after a model is in memory, :func:`check_loaded` repeats the planner's family checks on the real config (a
GGUF source's config is only known once loaded) before any data work starts.
"""

from __future__ import annotations

import logging

from transformers import AutoTokenizer

from depthprune.arch.heads import geometry
from depthprune.arch.layout import layout, num_layers
from depthprune.errors import DepthpruneError
from depthprune.importance.streamed import StreamedModel
from depthprune.io.data import build_calibration
from depthprune.io.guards.model_files import first_line
from depthprune.io.guards.settings import check_seq_len
from depthprune.io.loading import as_loaded
from depthprune.io.models import load_model, resolve_dtype
from depthprune.pipeline.state import RunState
from depthprune.quantization.weights import check_quantizable
from depthprune.repair.families import fold_spec, lora_targets
from depthprune.surgery.in_memory import structure_refusal

log = logging.getLogger(__name__)


def load(state: RunState) -> None:
    """The model in memory: the caller's, or loaded from the recipe's spec."""
    rec = state.recipe
    rt = rec.runtime
    if state.given_model is not None:
        state.loaded = as_loaded(state.given_model, state.given_tokenizer)
    else:
        state.loaded = load_model(rec.model, dtype=rt.dtype, device=rt.device, trust_remote_code=rt.trust_remote_code)
    state.tokenizer = state.loaded.tokenizer
    check_loaded(state)


def check_loaded(state: RunState) -> None:
    """Model-level checks before any data work (architecture, lengths, family rules of what will be asked)."""
    rec, stages = state.recipe, state.plan.stages
    rt = rec.runtime
    model = state.model
    layout(model)  # an unsupported architecture fails here, before calibration
    state.num_layers = num_layers(model.config)
    if "calibrate" in stages:
        check_seq_len(model, rec.calibration.seq_len)
    if rec.evaluation.ppl is not None:
        check_seq_len(model, rec.evaluation.ppl_seq_len, "--ppl-seq-len" if rec.command != "eval" else "--seq-len")
    if rec.command == "prune":
        layers = rec.selection.layers
        if layers is not None:
            bad = [i for i in layers if i >= state.num_layers]
            if bad:
                raise DepthpruneError(f"layer(s) {bad} do not exist: the model has {state.num_layers} layers "
                                      f"(0-based, 0..{state.num_layers - 1})")
            reason = structure_refusal(model, sorted(layers), trust_remote_code=rt.trust_remote_code)
            if reason:
                raise DepthpruneError(reason)
        if "linear" in rec.repair.methods:
            fold_spec(model.config)
        if "lora" in rec.repair.methods:
            lora_targets(model.config)
        if rec.quantization.method is not None:
            check_quantizable(model)
    if rec.command == "heads":
        geometry(model)


def stream(state: RunState) -> None:
    """Layer streaming: a weightless skeleton plus the tokenizer; layers are read one at a time while scoring."""
    rec = state.recipe
    path = state.plan.source.path
    state.streamed = StreamedModel(path, dtype=resolve_dtype(rec.runtime.dtype), device=rec.runtime.device)
    state.num_layers = state.streamed.num_layers
    if state.given_tokenizer is not None:
        state.tokenizer = state.given_tokenizer
    else:
        try:
            state.tokenizer = AutoTokenizer.from_pretrained(str(path),
                                                            trust_remote_code=rec.runtime.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise DepthpruneError(f"could not load the tokenizer of {path}: {first_line(exc)}") from None
        if state.tokenizer.pad_token_id is None and state.tokenizer.eos_token_id is not None:
            state.tokenizer.pad_token = state.tokenizer.eos_token


def load_repair(state: RunState) -> None:
    """Repair: the pruned output (to be repaired) and, for linear repair or distillation, the dense model."""
    rec, plan = state.recipe, state.plan
    rt = rec.runtime
    record = plan.record
    total = record.get("num_layers_before")
    removed = record.get("removed_layers")
    if not isinstance(total, int) or not isinstance(removed, list) or not all(isinstance(i, int) for i in removed):
        raise DepthpruneError(f"{rec.model}/depthprune.json does not record the removed layers and the original "
                              "layer count; it is not an output of depthprune prune")
    if not removed or any(i < 0 or i >= total for i in removed) or len(set(removed)) >= total:
        raise DepthpruneError(f"{rec.model}/depthprune.json records impossible removed layers {removed} for a "
                              f"{total}-layer model")
    state.loaded = load_model(rec.model, dtype=rt.dtype, device=rt.device, trust_remote_code=rt.trust_remote_code)
    state.tokenizer = state.loaded.tokenizer
    state.pruned = state.loaded.model
    state.removed = sorted(removed)
    state.num_layers = total
    if num_layers(state.pruned.config) != total - len(set(removed)):
        raise DepthpruneError(f"{rec.model} has {num_layers(state.pruned.config)} layers, but its depthprune.json says "
                              f"{len(set(removed))} of {total} were removed")
    if plan.dense is not None:
        state.dense = load_model(plan.dense.spec, dtype=rt.dtype, device=rt.device,
                                 trust_remote_code=rt.trust_remote_code).model
        if "linear" in rec.repair.methods:
            fold_spec(state.dense.config)
    if "lora" in rec.repair.methods:
        lora_targets(state.pruned.config)
    if "calibrate" in plan.stages:
        check_seq_len(state.dense if state.dense is not None else state.pruned, rec.calibration.seq_len)


def calibrate(state: RunState) -> None:
    """Calibration windows from the recipe's data SPEC (``self``: generated by the dense model)."""
    cal = state.recipe.calibration
    if state.tokenizer is None:
        raise DepthpruneError("a text data spec needs the tokenizer; pass tokenizer= or a CalibrationSet")
    generator = state.dense if state.recipe.command == "repair" else state.model
    state.calibration = build_calibration(cal.data, state.tokenizer, samples=cal.samples, seq_len=cal.seq_len,
                                          seed=cal.seed, text_field=cal.text_field, model=generator,
                                          batch_size=cal.batch_size, progress=state.progress)


STAGES = {"load": load, "stream": stream, "load-repair": load_repair, "calibrate": calibrate}

__all__ = ["STAGES", "calibrate", "check_loaded", "load", "load_repair", "stream"]
