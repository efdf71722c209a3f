"""Read back what was written, before it is committed: an output that would load wrong is never delivered.

For a Hugging Face checkpoint (:func:`check_checkpoint`):

1. **Structure.** The model is built from the *written* config on the meta device and the written tensors are
   matched against it (``from_pretrained(..., device_map="meta", output_loading_info=True)``: headers only, no
   tensor data). Every saved tensor must be consumed with its shape, and no parameter may be left to random
   initialisation. A config that builds a different layer at a renumbered position (an index rule) shows up
   here as missing/unexpected or mis-shaped tensors.
2. **Logits.** When the pruned model is in memory, the checkpoint is loaded for real (float32) and its logits on
   a short probe are compared with the in-memory model's *with the same saved weights* (each float tensor rounded
   to the saved dtype). That comparison is sharp whatever the save dtype (<= 1e-4); the effect of the save dtype
   itself (in-memory float32 weights vs the saved ones) is measured separately and recorded, never used as a
   tolerance, because a tolerance wide enough for bfloat16 rounding would hide structural errors. The probe is
   longer than the sliding window when the model has one, so a layer that switched between sliding and full
   attention changes the logits.

For a GGUF file (:func:`check_gguf`): the header parses, ``block_count`` equals the ``blk.N`` blocks present and the
expected count, and every per-layer metadata array has one entry per block.

Cost (measured; see docs/architecture.md): the structure check reads headers only (about 2 s, most of it building
the skeleton); the logits probe loads the checkpoint once more (one extra copy of the model in memory, plus a
rounded copy of the in-memory model when the save dtype differs) and runs two forward passes over the probe.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from depthprune.errors import DepthpruneError
from depthprune.io.gguf import consistency_problems, read_header as read_gguf_header
from depthprune.io.safetensors import read_tensor, tensor_index

log = logging.getLogger(__name__)

LOGIT_TOLERANCE = 1e-4
MIN_PROBE, MAX_PROBE = 32, 1100


class ReadbackError(DepthpruneError):
    """The written output does not load back as the model that was meant to be written."""


def _first(items, n: int = 3) -> str:
    items = sorted(items)
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def check_structure(folder: Path, *, trust_remote_code: bool = False) -> dict:
    """Build the written config on the meta device and match the written tensors against it (no data read)."""
    started = time.perf_counter()
    try:
        _, info = AutoModelForCausalLM.from_pretrained(str(folder), device_map="meta", output_loading_info=True,
                                                       use_kernels=False, trust_remote_code=trust_remote_code)
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        text = str(exc).strip().splitlines()
        raise ReadbackError(f"the written checkpoint does not load back: {text[0] if text else type(exc).__name__}"
                            ) from None
    missing = set(info.get("missing_keys") or ())
    unexpected = set(info.get("unexpected_keys") or ())
    mismatched = [m[0] if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys") or ()]
    if mismatched:
        raise ReadbackError(f"the written checkpoint's tensors {_first(mismatched)} have other shapes than its own "
                            "config builds")
    if missing:
        raise ReadbackError(f"the written config builds parameters {_first(missing)} that the checkpoint does not "
                            "hold (they would be randomly initialised)")
    if unexpected:
        raise ReadbackError(f"the written checkpoint holds tensors {_first(unexpected)} that its own config does not "
                            "build (they would be ignored)")
    return {"structure": "ok", "structure_seconds": round(time.perf_counter() - started, 3)}


def probe_ids(config, vocab_size: int) -> torch.Tensor:
    """A fixed token sequence, longer than the sliding window (when there is one, up to MAX_PROBE)."""
    window = getattr(config, "sliding_window", None)
    length = MIN_PROBE if not isinstance(window, int) or window <= 0 else min(MAX_PROBE, window + MIN_PROBE)
    max_len = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(max_len, int):
        length = min(length, max_len)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (1, length), generator=generator)


def _as_saved(model, saved_dtype: torch.dtype):
    """A float32 copy of ``model`` whose float weights are rounded to ``saved_dtype`` (what the files hold)."""
    ref = copy.deepcopy(model).to(torch.float32)
    if saved_dtype != torch.float32:
        with torch.no_grad():
            # only what the files hold: parameters and persistent buffers (rotary tables are recomputed on load)
            for tensor in {id(t): t for t in ref.state_dict(keep_vars=True).values()}.values():
                if tensor.is_floating_point():
                    tensor.data.copy_(tensor.data.to(saved_dtype).to(torch.float32))
    return ref


COMPARED_POSITIONS = 32  # logits compared at the last positions only (past the sliding window when there is one)


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    try:  # the vocabulary projection of the compared positions only (Gemma 3: 262k x 544 floats otherwise)
        out = model(input_ids=ids.to(device), use_cache=False, logits_to_keep=COMPARED_POSITIONS).logits
    except TypeError:  # families whose forward has no logits_to_keep
        out = model(input_ids=ids.to(device), use_cache=False).logits
    return out[:, -COMPARED_POSITIONS:].float().cpu()


def check_logits(folder: Path, model, saved_dtype: str, *, trust_remote_code: bool = False) -> dict:
    """Load the written checkpoint and compare its logits with ``model`` holding the same saved weights."""
    started = time.perf_counter()
    dtype = getattr(torch, saved_dtype)
    reloaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                    trust_remote_code=trust_remote_code).eval()
    vocab = reloaded.get_input_embeddings().weight.shape[0]
    ids = probe_ids(reloaded.config, vocab)
    was_training = model.training
    model.eval()
    try:
        in_memory = _logits(model, ids)
        reference = in_memory if dtype == torch.float32 and next(model.parameters()).dtype == torch.float32 \
            else _logits(_as_saved(model, dtype), ids)
    finally:
        model.train(was_training)
    got = _logits(reloaded, ids)
    del reloaded
    diff = float((got - reference).abs().max())
    dtype_effect = float((got - in_memory).abs().max())
    if not diff <= LOGIT_TOLERANCE:
        raise ReadbackError(f"the written checkpoint computes different logits than the pruned model with the same "
                            f"{saved_dtype} weights (max difference {diff:.3g} on a {ids.shape[1]}-token probe, "
                            f"tolerance {LOGIT_TOLERANCE:g}): its config does not describe the pruned model")
    return {"logits_max_abs_diff": diff, "save_dtype_effect": dtype_effect, "probe_tokens": int(ids.shape[1]),
            "logits_seconds": round(time.perf_counter() - started, 3)}


def check_checkpoint(folder: Path, *, model=None, saved_dtype: str | None = None, quantized: bool = False,
                     trust_remote_code: bool = False) -> dict:
    """Both checks of the module doc on a written (staged) checkpoint folder; returns what was measured.

    ``model``: the pruned model in memory (None: pruned on disk, structure only). A quantized model is compared
    structurally only: torchao checkpoints rebuild their quantized tensors on load, which the meta check cannot
    match, so the quantized reload is checked by loading it for real and comparing logits at the quantized dtype.
    """
    result: dict = {}
    if not quantized:
        result.update(check_structure(folder, trust_remote_code=trust_remote_code))
    if model is not None and saved_dtype is not None and not quantized:
        result.update(check_logits(folder, model, saved_dtype, trust_remote_code=trust_remote_code))
    return result


def check_tensors(folder: Path, expected: dict[str, torch.Tensor]) -> dict:
    """The tensors written from new values (not copied byte for byte) read back bit-identical from ``folder``."""
    started = time.perf_counter()
    where = tensor_index(Path(folder))
    for name, value in expected.items():
        if name not in where:
            raise ReadbackError(f"the written checkpoint lacks {name}, which was written from a new value")
        got = read_tensor(*where[name])
        if got.dtype != value.dtype or got.shape != value.shape or not torch.equal(got, value.cpu()):
            raise ReadbackError(f"{name} does not read back as the value that was written")
    return {"tensors_written_from_values": len(expected), "tensors_seconds": round(time.perf_counter() - started, 3)}


def check_gguf(path: Path, *, expected_blocks: int, per_layer_keys: tuple[str, ...] = ()) -> dict:
    """Header, block count and per-layer arrays of a written GGUF file."""
    started = time.perf_counter()
    try:
        header = read_gguf_header(path)
    except DepthpruneError as exc:
        raise ReadbackError(f"the written GGUF file does not read back: {exc}") from None
    problems = consistency_problems(header, expected_blocks=expected_blocks, per_layer_keys=per_layer_keys)
    if problems:
        raise ReadbackError(f"the written GGUF file is inconsistent: {problems[0]}")
    return {"structure": "ok", "blocks": expected_blocks, "per_layer_keys": list(per_layer_keys),
            "structure_seconds": round(time.perf_counter() - started, 3)}


__all__ = ["LOGIT_TOLERANCE", "ReadbackError", "check_checkpoint", "check_gguf", "check_tensors", "check_logits", "check_structure",
           "probe_ids"]
