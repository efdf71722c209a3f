"""Remove decoder blocks from a GGUF file directly: quantized tensors copied byte for byte.

A GGUF file is metadata (typed key/value pairs) plus tensors named ``blk.N.*``
for decoder block N and plain names for the rest (``token_embd.weight``,
``output_norm.weight``, ...). :func:`cut_gguf` writes a new file in which

- the tensors of the kept blocks are the input's raw bytes (whatever their ggml
  type: Q4_K, Q8_0, F32, ...), renamed ``blk.0..k-1`` in order; every other
  tensor is copied unchanged; nothing is dequantized or requantized;
- ``{arch}.block_count`` is the new block count and every ``{arch}.*`` array
  with one entry per block (per-layer head counts, feed-forward sizes, ...) is
  cut to the kept blocks; all other metadata (tokenizer, chat template, ...)
  is copied with its GGUF type, and the alignment is kept;
- tensors are streamed in chunks from the input file, so memory stays at a few
  MiB whatever the model size.

The header is parsed here rather than with ``gguf.GGUFReader`` and written
rather than with ``gguf.GGUFWriter``: the reader builds a numpy view per
element (about a minute for SmolLM2's 98k tokenizer strings on this machine,
longer for Gemma's 262k) and the writer re-packs every string one by one,
while unchanged keys can simply be copied as the input's bytes. The ``gguf``
package still supplies the value and tensor type tables, and its reader is the
independent check in the tests.

The trap: llama.cpp (and transformers' GGUF loader) derive some per-layer
behaviour from the block's *index* instead of reading it from the file. For
Gemma 2/3 the sliding-window / global attention choice is ``index % period``
(Gemma 3: every 6th block is global); after renumbering a kept block may
silently switch type. No GGUF key overrides this for these architectures in
llama.cpp, so :func:`check_gguf_removal` refuses removals that would change a
kept block's attention type (removing whole periods of consecutive blocks, or
the last blocks, is safe), and refuses architectures whose index-derived
behaviour depthprune has not checked.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

import mmap
import struct

import numpy as np
from gguf import GGUFValueType

from depthprune.errors import DepthpruneError
from depthprune.io.gguf import (BLOCK_TENSOR, NUMPY_TYPES, SCALAR_FORMATS, GGUFHeader, KeyValue, TensorInfo,
                               gguf_architecture, pad, read_header)
from depthprune.io.readback import check_gguf
from depthprune.io.writer import OutputSpec, transaction
from depthprune.surgery.in_memory import validate_layer_indices

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 * 1024 * 1024

# GGUF architectures whose llama.cpp loader (llama-model.cpp, load_hparams) derives no per-layer
# behaviour from the block index, apart from the sliding-window periods listed below.
SUPPORTED_ARCHS = frozenset({"llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "phi3", "gemma", "gemma2", "gemma3"})

# llama.cpp: hparams.set_swa_pattern(period) -> block i uses sliding-window attention iff i % period < period - 1
# (transformers' Gemma2/3 configs derive the same layer_types when the GGUF carries none).
SLIDING_WINDOW_PERIOD = {"gemma2": 2, "gemma3": 6}

# llama.cpp picks the attention scale of these models from the block count
# (LLM_TYPE_27B -> 1/sqrt(n_embd/n_head) instead of 1/sqrt(head_dim)): a pruned file would silently change it.
LAYER_COUNT_DEPENDENT = {"gemma2": {46: "Gemma 2 27B"}, "gemma3": {62: "Gemma 3 27B"}}


@dataclass
class GGUFPruneResult:
    """What :func:`cut_gguf` wrote (layer numbers 0-based, original numbering)."""

    source: str
    output: str
    architecture: str
    removed_layers: list[int]
    kept_layers: list[int]
    blocks_before: int
    blocks_after: int
    tensors_before: int
    tensors_after: int
    bytes_before: int
    bytes_after: int
    per_layer_keys: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- which removals are safe


def attention_types(arch: str, n_blocks: int, sliding_window: int | None) -> list[str] | None:
    """Per-block attention type as llama.cpp derives it from the index, or None if the architecture has none."""
    period = SLIDING_WINDOW_PERIOD.get(arch)
    if period is None or not sliding_window:
        return None
    return ["sliding" if i % period < period - 1 else "full" for i in range(n_blocks)]


def _safe_hint(arch: str, n_blocks: int) -> str:
    period = SLIDING_WINDOW_PERIOD[arch]
    return (f"safe removals keep each kept block's position in the period of {period}, e.g. {period} consecutive "
            f"blocks (such as {','.join(str(i) for i in range(period))}) or the last blocks (such as {n_blocks - 1})")


def check_removal(arch: str, n_blocks: int, removed: Sequence[int], sliding_window: int | None = None) -> list[int]:
    """Validate ``removed`` for a GGUF of ``arch``; return the kept blocks or raise a one-sentence error."""
    removed = validate_layer_indices(removed, n_blocks)
    if arch not in SUPPORTED_ARCHS:
        raise DepthpruneError(
            f"GGUF output for architecture '{arch}' is not supported: depthprune has not checked whether llama.cpp "
            f"derives its per-layer behaviour from the block index (supported: {', '.join(sorted(SUPPORTED_ARCHS))}); "
            "save in Hugging Face format instead (--format hf)")
    special = LAYER_COUNT_DEPENDENT.get(arch, {}).get(n_blocks)
    if special:
        raise DepthpruneError(
            f"cannot write a pruned {special} GGUF: llama.cpp chooses this model's attention scale from its block "
            f"count ({n_blocks}), so the pruned file would silently compute different attention; "
            "save in Hugging Face format instead (--format hf)")
    gone = set(removed)
    keep = [i for i in range(n_blocks) if i not in gone]
    types = attention_types(arch, n_blocks, sliding_window)
    if types is not None:
        after = attention_types(arch, len(keep), sliding_window)
        for new, old in enumerate(keep):
            if types[old] != after[new]:
                raise DepthpruneError(
                    f"removing blocks {removed} from this {arch} GGUF would turn kept block {old} from {types[old]} "
                    f"into {after[new]} attention, because llama.cpp derives the type from the block index and GGUF "
                    f"cannot store it; {_safe_hint(arch, n_blocks)}, or save in Hugging Face format (--format hf)")
    return keep


def check_gguf_removal(src_path: str | Path, removed_layers: Sequence[int]) -> list[int]:
    """Check that ``removed_layers`` can be cut from the GGUF file; return the kept blocks (0-based)."""
    header = read_header(src_path)
    arch, n_blocks = gguf_architecture(header)
    return check_removal(arch, n_blocks, removed_layers, header.get(f"{arch}.attention.sliding_window"))


# --------------------------------------------------------------------------- writing


def _string(data: bytes | str) -> bytes:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return struct.pack("<Q", len(raw)) + raw


def _encode_kv(kv: KeyValue, value) -> bytes:
    """A metadata entry with a new value of the entry's own GGUF type."""
    out = _string(kv.key) + struct.pack("<I", kv.vtype)
    if kv.vtype != GGUFValueType.ARRAY:
        return out + struct.pack(SCALAR_FORMATS[kv.vtype], value)
    out += struct.pack("<IQ", kv.sub_type, len(value))
    if kv.sub_type == GGUFValueType.STRING:
        return out + b"".join(_string(item) for item in value)
    return out + np.asarray(value, dtype=NUMPY_TYPES[kv.sub_type]).tobytes()


def _metadata(header: GGUFHeader, buf, arch: str, n_blocks: int, keep: list[int]) -> tuple[list[bytes], list[str]]:
    """Every entry as bytes: the input's own bytes, except block_count and per-block ``{arch}.*`` arrays."""
    entries, sliced = [], []
    for kv in header.kvs:
        if kv.key == f"{arch}.block_count":
            entries.append(_encode_kv(kv, len(keep)))
        elif kv.vtype == GGUFValueType.ARRAY and kv.key.startswith(f"{arch}.") and len(kv.value) == n_blocks:
            entries.append(_encode_kv(kv, [kv.value[i] for i in keep]))
            sliced.append(kv.key)
        else:
            entries.append(bytes(buf[kv.start:kv.end]))
    return entries, sliced


def _plan_tensors(header: GGUFHeader, n_blocks: int, keep: list[int]) -> list[tuple[str, TensorInfo]]:
    """``(new name, input tensor)`` for every tensor that stays, in the input's order."""
    renumber = {old: new for new, old in enumerate(keep)}
    plan = []
    for tensor in header.tensors:
        match = BLOCK_TENSOR.match(tensor.name)
        if match is None:
            plan.append((tensor.name, tensor))
            continue
        block = int(match.group(1))
        if block >= n_blocks:
            raise DepthpruneError(f"GGUF tensor {tensor.name} belongs to block {block}, but the file declares only "
                                  f"{n_blocks} blocks; the file is inconsistent")
        if block in renumber:
            plan.append((f"blk.{renumber[block]}.{match.group(2)}", tensor))
    return plan


def _tensor_table(plan: list[tuple[str, TensorInfo]], alignment: int) -> bytes:
    out, offset = bytearray(), 0
    for name, t in plan:
        out += _string(name) + struct.pack("<I", len(t.dims))
        out += b"".join(struct.pack("<Q", d) for d in t.dims)
        out += struct.pack("<IQ", t.ggml_type, offset)
        offset += pad(t.nbytes, alignment)
    return bytes(out)


def _copy_bytes(src: BinaryIO, dst: BinaryIO, offset: int, nbytes: int, buffer: memoryview) -> None:
    """Copy ``nbytes`` from ``offset`` through one reused buffer (memory stays at the buffer's size)."""
    src.seek(offset)
    left = nbytes
    while left:
        got = src.readinto(buffer[:min(len(buffer), left)])
        if not got:
            raise DepthpruneError("the GGUF file ended inside a tensor; it is truncated")
        dst.write(buffer[:got])
        left -= got


def _write(header: GGUFHeader, tmp: Path, arch: str, n_blocks: int, keep: list[int],
           chunk: int) -> tuple[list[str], int]:
    with header.path.open("rb", buffering=0) as src:
        with mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            entries, sliced = _metadata(header, buf, arch, n_blocks, keep)
        plan = _plan_tensors(header, n_blocks, keep)
        with tmp.open("wb") as out:
            out.write(b"GGUF" + struct.pack("<IQQ", header.version, len(plan), len(entries)))
            for entry in entries:
                out.write(entry)
            out.write(_tensor_table(plan, header.alignment))
            buffer = memoryview(bytearray(chunk))
            for _, tensor in plan:
                out.write(b"\0" * (pad(out.tell(), header.alignment) - out.tell()))
                _copy_bytes(src, out, header.data_start + tensor.offset, tensor.nbytes, buffer)
            out.write(b"\0" * (pad(out.tell(), header.alignment) - out.tell()))
            out.flush()
            os.fsync(out.fileno())
    return sliced, len(plan)


def cut_gguf(src_path: str | Path, removed_layers: Sequence[int], dest: str | Path, *,
             chunk_bytes: int = CHUNK_BYTES) -> GGUFPruneResult:
    """Write ``dest``: the GGUF ``src_path`` without the blocks ``removed_layers`` (0-based).

    Kept tensors are copied byte for byte (no dequantization), blocks are renumbered 0..k-1, ``{arch}.block_count``
    and per-block ``{arch}.*`` metadata arrays shrink, every other key is copied as the input's bytes. ``dest`` is a
    path inside the writer's staging folder (:func:`depthprune.io.writer.transaction`), which makes it appear
    atomically. Raises :class:`DepthpruneError` for removals llama.cpp could not represent (:func:`check_removal`).
    """
    src = Path(src_path).expanduser()
    dest = Path(dest)
    header = read_header(src)
    arch, n_blocks = gguf_architecture(header)
    keep = check_removal(arch, n_blocks, removed_layers, header.get(f"{arch}.attention.sliding_window"))
    removed = [i for i in range(n_blocks) if i not in set(keep)]
    sliced, n_tensors = _write(header, dest, arch, n_blocks, keep, chunk_bytes)
    log.info("cut %s: %d of %d blocks, %d tensors", src, len(keep), n_blocks, n_tensors)
    return GGUFPruneResult(
        source=str(src), output=str(dest), architecture=arch, removed_layers=removed, kept_layers=keep,
        blocks_before=n_blocks, blocks_after=len(keep), tensors_before=len(header.tensors), tensors_after=n_tensors,
        bytes_before=src.stat().st_size, bytes_after=dest.stat().st_size, per_layer_keys=sliced)


def prune_gguf(src_path: str | Path, removed_layers: Sequence[int], out_path: str | Path, *,
               overwrite: bool = False) -> GGUFPruneResult:
    """Library entry point: :func:`cut_gguf` to ``out_path`` (``X.gguf``) with its record ``X.depthprune.json``,
    through the one writer (atomic, never over an input or someone else's file). ``depthprune prune`` runs the same
    cut as a pipeline stage."""
    out = Path(out_path).expanduser()
    if out.suffix.lower() != ".gguf":
        raise DepthpruneError(f"GGUF output path {out} must end in .gguf")
    gguf, record = gguf_output_paths(out)
    spec = OutputSpec("prune", gguf, kind="files", files=(gguf, record), record=record, overwrite=overwrite)
    with transaction(spec, [src_path]) as staging:
        result = cut_gguf(src_path, removed_layers, staging.path(gguf))
        check_gguf(staging.path(gguf), expected_blocks=result.blocks_after, per_layer_keys=tuple(result.per_layer_keys))
        result.output = str(gguf)
        staging.write_record({"model": str(Path(src_path).expanduser().resolve()),
                              "removed_layers": result.removed_layers, "num_layers_before": result.blocks_before,
                              "num_layers_after": result.blocks_after, "gguf": result.to_json()})
    return result


def gguf_output_paths(path: str | Path) -> tuple[Path, Path]:
    """``(gguf file, report json)``: ``X.gguf`` -> ``X.gguf`` and ``X.depthprune.json``; a directory D -> D/model.gguf."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".gguf":
        return path, path.with_suffix(".depthprune.json")
    return path / "model.gguf", path / "depthprune.json"


__all__ = ["GGUFPruneResult", "SLIDING_WINDOW_PERIOD", "SUPPORTED_ARCHS", "attention_types", "check_gguf_removal",
           "check_removal", "cut_gguf", "gguf_output_paths", "prune_gguf"]
