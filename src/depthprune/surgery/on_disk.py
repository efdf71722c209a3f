"""Pruning a safetensors checkpoint on disk, without loading the model.

Removing layers needs no forward pass: the kept layers' tensors are copied byte for byte into new
shards under renumbered keys (``model.layers.12.`` -> ``model.layers.10.``), the index is rewritten,
and the config is edited by :func:`depthprune.surgery.shrink_config`, the same function that edits
the config of an in-memory model. Tokenizer, generation config and any other small files are
copied. Memory stays at one copy buffer: tensors are never materialised, only their bytes streamed
(the safetensors layout is an 8-byte header length, a JSON header of dtype/shape/offsets, then the
raw bytes), so time is about the time to copy the kept bytes.

Which checkpoint keys belong to which layer comes from the model family's layer path in
:mod:`depthprune.architectures`, found on a weightless (meta-device) skeleton built from the config.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from depthprune.arch.skeleton import layer_keys
from depthprune.errors import DepthpruneError
from depthprune.io.models import check_local_config
from depthprune.io.safetensors import (DTYPE_NAMES, INDEX_NAME, SINGLE_NAME, TensorEntry, checkpoint_shards,
                                       read_header, tensor_bytes)
from depthprune.io.readback import check_checkpoint
from depthprune.io.writer import OutputSpec, transaction
from depthprune.surgery.in_memory import shrink_config, validate_layer_indices

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
SKIPPED_FILES = {"config.json", INDEX_NAME, "README.md", "depthprune.json", "layer_scores.png",
                 "pytorch_model.bin.index.json"}
COPY_CHUNK = 64 << 20


@dataclass
class CheckpointPruneResult:
    """What :func:`prune_checkpoint` wrote."""

    out: str
    removed_layers: list[int]
    kept_layers: list[int]
    num_layers_before: int
    num_layers_after: int
    params_before: int
    params_after: int
    bytes_written: int
    shards: list[str]
    seconds: float
    model_type: str | None = None
    replaced: dict[str, str] = field(default_factory=dict)  # written from new values: new name -> source name

    def to_json(self) -> dict:
        return asdict(self)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _write_shard(path: Path, source: Path, tensors: list[tuple[str, TensorEntry]], metadata: dict,
                 replacements: Mapping[str, torch.Tensor] | None = None) -> int:
    """Write a safetensors file holding ``tensors`` (new name, entry in ``source``) by copying their bytes; a
    tensor named (by its source name) in ``replacements`` is written from that tensor instead, which must have the
    entry's dtype and shape."""
    replacements = replacements or {}
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, entry in tensors:
        header[name] = {"dtype": entry.dtype, "shape": entry.shape, "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(source, "rb") as src, open(path, "wb") as dst:
        dst.write(struct.pack("<Q", len(raw)))
        dst.write(raw)
        for _, entry in tensors:
            if entry.name in replacements:
                dst.write(_replacement_bytes(entry, replacements[entry.name]))
                continue
            src.seek(entry.start)
            left = entry.nbytes
            while left:
                chunk = src.read(min(COPY_CHUNK, left))
                if not chunk:
                    raise DepthpruneError(f"{source} is truncated: tensor {entry.name} runs past the end of the file")
                dst.write(chunk)
                left -= len(chunk)
    return offset


def _replacement_bytes(entry: TensorEntry, tensor: torch.Tensor) -> memoryview:
    if DTYPE_NAMES.get(tensor.dtype) != entry.dtype or list(tensor.shape) != list(entry.shape):
        raise DepthpruneError(f"the new value of {entry.name} is {DTYPE_NAMES.get(tensor.dtype)} {list(tensor.shape)}, "
                              f"but the checkpoint stores {entry.dtype} {entry.shape}")
    return tensor_bytes(tensor)


def _copy_side_files(model_dir: Path, out: Path) -> list[str]:
    copied = []
    for path in sorted(model_dir.iterdir()):
        if not path.is_file() or path.name in SKIPPED_FILES or path.name.endswith(WEIGHT_SUFFIXES):
            continue
        shutil.copy2(path, out / path.name)
        copied.append(path.name)
    return copied


def cut_checkpoint(model_dir: str | Path, layers: Sequence[int], dest: Path, *, trust_remote_code: bool = False,
                   replacements: Mapping[str, torch.Tensor] | None = None) -> CheckpointPruneResult:
    """Write ``model_dir`` minus ``layers`` (0-based) into the folder ``dest``: new shards, index, config, side
    files. ``dest`` is the writer's staging folder (:func:`depthprune.io.writer.transaction`). ``replacements``:
    new values of kept tensors, by their name in ``model_dir`` (a folded repair map); everything else is copied."""
    replacements = dict(replacements or {})
    t0 = time.perf_counter()
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise DepthpruneError(f"model directory {model_dir} does not exist")
    config = check_local_config(model_dir, trust_remote_code)
    shards = checkpoint_shards(model_dir)
    headers = [(path, *read_header(path)) for path in shards]
    keys = [e.name for _, entries, _ in headers for e in entries]
    lk = layer_keys(config, keys, trust_remote_code=trust_remote_code)
    removed = validate_layer_indices(layers, lk.num_layers)
    keep = [i for i in range(lk.num_layers) if i not in set(removed)]
    new_index = {old: new for new, old in enumerate(keep)}
    shrink_config(config, keep)

    plan: list[tuple[Path, list[tuple[str, TensorEntry]], dict]] = []
    params_before = params_after = 0
    for path, entries, metadata in headers:
        kept = []
        for e in entries:
            params_before += _numel(e.shape)
            where = lk.split(e.name)
            if where is None:
                kept.append((e.name, e))
            elif where[0] in new_index:
                kept.append((lk.rename(e.name, new_index[where[0]]), e))
        params_after += sum(_numel(e.shape) for _, e in kept)
        if kept:
            plan.append((path, kept, metadata))

    kept_names = {e.name: new for _, tensors, _ in plan for new, e in tensors}
    stray = sorted(set(replacements) - set(kept_names))
    if stray:
        raise DepthpruneError(f"cannot write a new value of {stray[0]}: the cut checkpoint does not keep it")
    replaced = {kept_names[old]: old for old in replacements}
    written, names, weight_map = 0, [], {}
    for k, (source, tensors, metadata) in enumerate(plan):
        name = SINGLE_NAME if len(plan) == 1 else f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors"
        written += _write_shard(dest / name, source, tensors, metadata, replacements)
        names.append(name)
        weight_map.update({t: name for t, _ in tensors})
        log.info("wrote %s (%d tensors)", name, len(tensors))
    if len(plan) > 1:
        index = {"metadata": {"total_size": written}, "weight_map": dict(sorted(weight_map.items()))}
        (dest / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config.save_pretrained(dest)
    _copy_side_files(model_dir, dest)
    return CheckpointPruneResult(str(dest), removed, keep, lk.num_layers, len(keep), params_before, params_after,
                                 written, names, round(time.perf_counter() - t0, 3),
                                 getattr(config, "model_type", None), dict(sorted(replaced.items())))


def prune_checkpoint(model_dir: str | Path, layers: Sequence[int], out: str | Path, *, overwrite: bool = False,
                     trust_remote_code: bool = False) -> CheckpointPruneResult:
    """Library entry point: :func:`cut_checkpoint` into ``out`` through the one writer (atomic, never over an input
    or a foreign folder). ``depthprune prune --offload layers`` runs the same cut as a pipeline stage."""
    out = Path(out).expanduser()
    spec = OutputSpec("prune", out, overwrite=overwrite)
    with transaction(spec, [model_dir]) as staging:
        result = cut_checkpoint(model_dir, layers, staging.location, trust_remote_code=trust_remote_code)
        check_checkpoint(staging.location, trust_remote_code=trust_remote_code)
        result.out = str(out)
        staging.write_record({"model": str(Path(model_dir).expanduser().resolve()),
                              "removed_layers": result.removed_layers, "num_layers_before": result.num_layers_before,
                              "num_layers_after": result.num_layers_after, "cut": result.to_json()})
    return result


__all__ = ["CheckpointPruneResult", "cut_checkpoint", "prune_checkpoint"]
