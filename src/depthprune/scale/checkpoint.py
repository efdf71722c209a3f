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
import re
import shutil
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import DepthpruneError

log = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
SKIPPED_FILES = {"config.json", INDEX_NAME, "README.md", "depthprune.json", "layer_scores.png",
                 "pytorch_model.bin.index.json"}
COPY_CHUNK = 64 << 20


@dataclass
class TensorEntry:
    """One tensor of a safetensors file: where its bytes are and what they are."""

    name: str
    dtype: str
    shape: list[int]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> tuple[list[TensorEntry], dict]:
    """The tensors of a safetensors file in storage order, and its ``__metadata__``."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise DepthpruneError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
        (size,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(handle.read(size))
        except (ValueError, UnicodeDecodeError):
            raise DepthpruneError(f"{path} is not a safetensors file (its header is not JSON)") from None
    base = 8 + size
    metadata = header.pop("__metadata__", None) or {}
    entries = [TensorEntry(name, info["dtype"], list(info["shape"]), base + info["data_offsets"][0],
                           base + info["data_offsets"][1]) for name, info in header.items()]
    entries.sort(key=lambda e: e.start)
    return entries, metadata


def checkpoint_shards(model_dir: Path) -> list[Path]:
    """The safetensors shards of a checkpoint directory, in index order; a clear error if there are none."""
    index = model_dir / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
        missing = [n for n in names if not (model_dir / n).is_file()]
        if missing:
            raise DepthpruneError(f"{index} lists shard {missing[0]}, which is missing from {model_dir}")
        return [model_dir / n for n in sorted(names)]
    if (model_dir / SINGLE_NAME).is_file():
        return [model_dir / SINGLE_NAME]
    raise DepthpruneError(f"{model_dir} holds no safetensors weights (model.safetensors or {INDEX_NAME}); "
                          "checkpoint-level pruning needs a safetensors checkpoint: convert it with "
                          "save_pretrained(..., safe_serialization=True) first")


def load_config(model_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise DepthpruneError(f"model directory {model_dir} has no config.json; is it a Hugging Face checkpoint?")
    try:
        return AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DepthpruneError(f"could not read the config of {model_dir}: {first}") from None


def meta_skeleton(config, trust_remote_code: bool = False, dtype=None):
    """The causal-LM module tree for ``config`` with every parameter on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights():
            kwargs = {"dtype": dtype} if dtype is not None else {}
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise DepthpruneError(
                f"unsupported architecture '{getattr(config, 'model_type', '?')}': transformers has no causal-LM "
                "(decoder-only) class for it, and depthprune prunes decoder-only models") from None
        raise


@dataclass
class LayerKeys:
    """How checkpoint keys name decoder layers: ``{prefix}.{index}.{rest}``."""

    prefix: str
    num_layers: int
    pattern: re.Pattern = field(repr=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.pattern = re.compile(rf"^{re.escape(self.prefix)}\.(\d+)\.(.+)$")

    def split(self, key: str) -> tuple[int, str] | None:
        """``(layer index, rest of the key)`` for a layer tensor, None for any other tensor."""
        m = self.pattern.match(key)
        return (int(m.group(1)), m.group(2)) if m else None

    def rename(self, key: str, new_index: int) -> str:
        _, rest = self.split(key)  # type: ignore[misc]
        return f"{self.prefix}.{new_index}.{rest}"


def layer_keys(config, keys: Sequence[str], skeleton=None, trust_remote_code: bool = False) -> LayerKeys:
    """Find the checkpoint-key prefix of the decoder layers from the family's layer path (meta skeleton)."""
    from ..architectures import layout, num_layers

    skeleton = skeleton if skeleton is not None else meta_skeleton(config, trust_remote_code)
    path = layout(skeleton).layers_path
    n = num_layers(config)
    candidates = [path]
    base = getattr(skeleton, "base_model_prefix", "")
    if base and path.startswith(base + "."):
        candidates.append(path[len(base) + 1:])  # legacy checkpoints saved from the base model (GPT-2: h.0.)
    for prefix in candidates:
        lk = LayerKeys(prefix, n)
        seen = {s[0] for s in map(lk.split, keys) if s is not None}
        if seen:
            if seen != set(range(n)):
                raise DepthpruneError(f"the checkpoint has tensors for layers {sorted(seen)} under '{prefix}.' "
                                      f"but its config says {n} layers; the checkpoint and config disagree")
            return lk
    raise DepthpruneError(f"no checkpoint tensor is named like the decoder layers ('{path}.N.'); "
                          "this checkpoint's key names are not supported for pruning on disk")


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

    def to_json(self) -> dict:
        return asdict(self)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _write_shard(path: Path, source: Path, tensors: list[tuple[str, TensorEntry]], metadata: dict) -> int:
    """Write a safetensors file holding ``tensors`` (new name, entry in ``source``) by copying their bytes."""
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
            src.seek(entry.start)
            left = entry.nbytes
            while left:
                chunk = src.read(min(COPY_CHUNK, left))
                if not chunk:
                    raise DepthpruneError(f"{source} is truncated: tensor {entry.name} runs past the end of the file")
                dst.write(chunk)
                left -= len(chunk)
    return offset


def _copy_side_files(model_dir: Path, out: Path) -> list[str]:
    copied = []
    for path in sorted(model_dir.iterdir()):
        if not path.is_file() or path.name in SKIPPED_FILES or path.name.endswith(WEIGHT_SUFFIXES):
            continue
        shutil.copy2(path, out / path.name)
        copied.append(path.name)
    return copied


def prune_checkpoint(model_dir: str | Path, layers: Sequence[int], out: str | Path, *, overwrite: bool = False,
                     trust_remote_code: bool = False,
                     report: dict | Callable[["CheckpointPruneResult"], dict] | None = None) -> CheckpointPruneResult:
    """Write ``model_dir`` minus ``layers`` (0-based) to ``out``: new shards, index, config, side files.

    The output directory appears atomically. ``report`` (e.g. a PruneReport as JSON, or a function of
    the result that returns it) is written as ``depthprune.json`` beside the weights.
    """
    from ..export import atomic_directory, check_output_dir
    from ..surgery import shrink_config, validate_layer_indices

    t0 = time.perf_counter()
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise DepthpruneError(f"model directory {model_dir} does not exist")
    check_output_dir(out, overwrite)
    config = load_config(model_dir, trust_remote_code)
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

    written, names, weight_map = 0, [], {}
    out = Path(out).expanduser()
    with atomic_directory(out, overwrite) as tmp:
        for k, (source, tensors, metadata) in enumerate(plan):
            name = SINGLE_NAME if len(plan) == 1 else f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors"
            written += _write_shard(tmp / name, source, tensors, metadata)
            names.append(name)
            weight_map.update({t: name for t, _ in tensors})
            log.info("wrote %s (%d tensors)", name, len(tensors))
        if len(plan) > 1:
            index = {"metadata": {"total_size": written}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        config.save_pretrained(tmp)
        _copy_side_files(model_dir, tmp)
        result = CheckpointPruneResult(str(out), removed, keep, lk.num_layers, len(keep), params_before,
                                       params_after, written, names, 0.0, getattr(config, "model_type", None))
        if report is not None:
            data = report(result) if callable(report) else report
            (tmp / "depthprune.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    result.seconds = time.perf_counter() - t0
    return result


__all__ = ["CheckpointPruneResult", "LayerKeys", "checkpoint_shards", "layer_keys", "load_config", "meta_skeleton",
           "prune_checkpoint", "read_header"]
