"""Reading safetensors headers (dtype, shape and byte range of every tensor) without reading tensor data.

The layout is an 8-byte little-endian header length, a JSON header of ``{name: {dtype, shape, data_offsets}}``,
then the raw bytes. A file or a shard index that lies about its contents is refused in one sentence naming the
file: a header longer than the file, offsets past the end, overlapping tensors, a byte range that does not match
dtype x shape, an index that names a missing shard, a shard outside the folder, or tensors its shard lacks.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from depthprune.errors import DepthpruneError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
MAX_HEADER = 100 << 20  # safetensors itself refuses headers above 100 MB


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

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n


def _entry(path: Path, name: str, info, base: int, size: int) -> TensorEntry:
    if not isinstance(info, dict):
        raise DepthpruneError(f"{path} is not a valid safetensors file: the header entry of {name} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise DepthpruneError(f"{path} is not a valid safetensors file: tensor {name} has shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]):
        raise DepthpruneError(f"{path} is not a valid safetensors file: tensor {name} has data_offsets {offsets!r}")
    entry = TensorEntry(name, str(dtype), list(shape), base + offsets[0], base + offsets[1])
    if entry.end > size:
        raise DepthpruneError(f"{path} is truncated or lies about its size: tensor {name} ends at byte {entry.end} "
                              f"of a {size}-byte file")
    width = DTYPE_BYTES.get(entry.dtype)
    if width is None:
        raise DepthpruneError(f"{path}: tensor {name} has unknown dtype {dtype!r}")
    if entry.numel * width != entry.nbytes:
        raise DepthpruneError(f"{path} lies about tensor {name}: shape {shape} of {dtype} needs "
                              f"{entry.numel * width} bytes but its byte range holds {entry.nbytes}")
    return entry


def read_header(path: Path) -> tuple[list[TensorEntry], dict]:
    """The tensors of a safetensors file in storage order, and its ``__metadata__`` (checked, see the module doc)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise DepthpruneError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", raw)
        if length > min(MAX_HEADER, size - 8):
            raise DepthpruneError(f"{path} is not a safetensors file (its header length {length} exceeds the file)")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            raise DepthpruneError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise DepthpruneError(f"{path} is not a safetensors file (its header is not a JSON object)")
    base = 8 + length
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise DepthpruneError(f"{path} is not a valid safetensors file: __metadata__ is not an object")
    entries = sorted((_entry(path, name, info, base, size) for name, info in header.items()), key=lambda e: e.start)
    for before, after in zip(entries, entries[1:]):
        if after.start < before.end:
            raise DepthpruneError(f"{path} lies about its contents: tensors {before.name} and {after.name} overlap")
    return entries, metadata


def read_index(model_dir: Path) -> dict[str, str]:
    """The ``weight_map`` of a sharded checkpoint's index (tensor -> shard file name), checked."""
    index = model_dir / INDEX_NAME
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DepthpruneError(f"{index} is not readable JSON ({type(exc).__name__})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise DepthpruneError(f"{index} has no weight_map object naming the shard of every tensor")
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or Path(shard).name != shard or shard in (".", ".."):
            raise DepthpruneError(f"{index} maps {tensor} to {shard!r}, which is not a file name in {model_dir}")
    return weight_map


def checkpoint_shards(model_dir: Path) -> list[Path]:
    """The safetensors shards of a checkpoint directory, in index order; a clear error if there are none or the
    index lies (a missing shard, a tensor its shard does not hold, a shard holding tensors the index omits)."""
    model_dir = Path(model_dir)
    if (model_dir / INDEX_NAME).is_file():
        weight_map = read_index(model_dir)
        names = sorted(dict.fromkeys(weight_map.values()))
        missing = [n for n in names if not (model_dir / n).is_file()]
        if missing:
            raise DepthpruneError(f"{model_dir / INDEX_NAME} lists shard {missing[0]}, which is missing from "
                                  f"{model_dir}")
        held: dict[str, str] = {}
        for name in names:
            for entry in read_header(model_dir / name)[0]:
                held[entry.name] = name
        wrong = [t for t, shard in weight_map.items() if held.get(t) != shard]
        if wrong:
            where = held.get(wrong[0])
            raise DepthpruneError(f"{model_dir / INDEX_NAME} says {wrong[0]} is in {weight_map[wrong[0]]}, but "
                                  + (f"it is in {where}" if where else "no shard holds it"))
        unlisted = sorted(set(held) - set(weight_map))
        if unlisted:
            raise DepthpruneError(f"{held[unlisted[0]]} holds {unlisted[0]}, which {INDEX_NAME} does not list")
        return [model_dir / n for n in names]
    if (model_dir / SINGLE_NAME).is_file():
        read_header(model_dir / SINGLE_NAME)
        return [model_dir / SINGLE_NAME]
    raise DepthpruneError(f"{model_dir} holds no safetensors weights (model.safetensors or {INDEX_NAME}); "
                          "checkpoint-level pruning needs a safetensors checkpoint: convert it with "
                          "save_pretrained(..., safe_serialization=True) first")


def tensor_index(model_dir: Path) -> dict[str, tuple[Path, TensorEntry]]:
    """Every tensor of the checkpoint: its shard and its header entry (headers only)."""
    return {e.name: (shard, e) for shard in checkpoint_shards(Path(model_dir)) for e in read_header(shard)[0]}


def stored_names(model_dir: Path) -> set[str]:
    """Every tensor name the checkpoint's shards hold (headers only)."""
    return set(tensor_index(model_dir))


def read_tensor(path: Path, entry: TensorEntry) -> torch.Tensor:
    """One tensor's bytes read into a fresh CPU tensor with plain file reads, not a memory map: the pages of a mapped
    shard count as resident until it is unmapped, so reading a 600 MB layer through a map would hold it twice."""
    dtype = TORCH_DTYPES.get(entry.dtype)
    if dtype is None:
        raise DepthpruneError(f"{path}: tensor {entry.name} has dtype {entry.dtype}, which torch cannot hold")
    buffer = torch.empty(entry.nbytes, dtype=torch.uint8)
    with open(path, "rb", buffering=0) as handle:
        handle.seek(entry.start)
        view = memoryview(buffer.numpy())
        done = 0
        while done < entry.nbytes:
            got = handle.readinto(view[done:])
            if not got:
                raise DepthpruneError(f"{path} is truncated: tensor {entry.name} runs past the end of the file")
            done += got
    return buffer.view(dtype).reshape(entry.shape)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, as safetensors stores them."""
    flat = tensor.detach().contiguous().cpu().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


__all__ = ["DTYPE_BYTES", "DTYPE_NAMES", "TORCH_DTYPES", "read_tensor", "stored_names", "tensor_bytes", "tensor_index", "INDEX_NAME", "SINGLE_NAME", "TensorEntry", "checkpoint_shards", "read_header", "read_index"]
