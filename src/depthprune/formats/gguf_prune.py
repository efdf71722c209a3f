"""Remove decoder blocks from a GGUF file directly: quantized tensors copied byte for byte.

A GGUF file is metadata (typed key/value pairs) plus tensors named ``blk.N.*``
for decoder block N and plain names for the rest (``token_embd.weight``,
``output_norm.weight``, ...). :func:`prune_gguf` writes a new file in which

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
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

import mmap
import struct

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from ..errors import DepthpruneError
from ..guards.outputs import commit, remember

log = logging.getLogger(__name__)

BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")
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
    """What :func:`prune_gguf` wrote (layer numbers 0-based, original numbering)."""

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


# --------------------------------------------------------------------------- reading the header

_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_NUMPY = {vtype: np.dtype(fmt) for vtype, fmt in _SCALAR.items()}


@dataclass
class KeyValue:
    """One metadata entry: its raw bytes in the file (``start:end``, key included) and its decoded value.

    ``value`` is a Python scalar, ``str``, or a list (numbers, or raw ``bytes`` per string).
    """

    key: str
    vtype: GGUFValueType
    sub_type: GGUFValueType | None
    start: int
    end: int
    value: object


@dataclass
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # ggml order: dims[0] is the contiguous one
    ggml_type: int
    offset: int  # from the start of the data section
    nbytes: int


@dataclass
class GGUFHeader:
    """The parsed header of a GGUF file (metadata and tensor table; tensor data is not read)."""

    path: Path
    version: int
    kvs: list[KeyValue]
    tensors: list[TensorInfo]
    alignment: int
    data_start: int

    def get(self, key: str, default=None):
        for kv in self.kvs:
            if kv.key == key:
                return kv.value
        return default


class _Cursor:
    def __init__(self, buf, pos: int = 0) -> None:
        self.buf, self.pos = buf, pos

    def unpack(self, fmt: str):
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def raw_string(self) -> bytes:
        n = self.unpack("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError("string runs past the end of the file")
        data = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return data

    def value(self, vtype: GGUFValueType):
        if vtype == GGUFValueType.STRING:
            return self.raw_string().decode("utf-8", errors="replace")
        return self.unpack(_SCALAR[vtype])

    def array(self) -> tuple[GGUFValueType, list]:
        sub = GGUFValueType(self.unpack("<I"))
        count = self.unpack("<Q")
        if sub == GGUFValueType.STRING:
            return sub, [self.raw_string() for _ in range(count)]
        if sub == GGUFValueType.ARRAY:
            raise ValueError("arrays of arrays are not supported")
        dtype = _NUMPY[sub]
        values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).tolist()
        self.pos += dtype.itemsize * count
        return sub, values


def _tensor_nbytes(dims: tuple[int, ...], ggml_type: int) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if dims and dims[0] % block:
        raise ValueError(f"first dimension {dims[0]} is not a multiple of the block size {block}")
    return count // block * size


def _parse(buf, path: Path) -> GGUFHeader:
    cur = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise DepthpruneError(f"{path} is not a GGUF file (its first bytes are not 'GGUF')")
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise DepthpruneError(f"{path} is GGUF version {version}; depthprune reads little-endian GGUF versions 2 and 3")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    kvs = []
    for _ in range(n_kv):
        start = cur.pos
        key = cur.raw_string().decode("utf-8")
        vtype = GGUFValueType(cur.unpack("<I"))
        sub = None
        if vtype == GGUFValueType.ARRAY:
            sub, value = cur.array()
        else:
            value = cur.value(vtype)
        kvs.append(KeyValue(key, vtype, sub, start, cur.pos, value))
    tensors = []
    for _ in range(n_tensors):
        name = cur.raw_string().decode("utf-8")
        n_dims = cur.unpack("<I")
        dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
        ggml_type = cur.unpack("<I")
        offset = cur.unpack("<Q")
        tensors.append(TensorInfo(name, dims, ggml_type, offset, _tensor_nbytes(dims, ggml_type)))
    alignment = next((kv.value for kv in kvs if kv.key == "general.alignment"), GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"general.alignment {alignment!r} is not a power of two")
    data_start = _pad(cur.pos, alignment)
    for t in tensors:
        if data_start + t.offset + t.nbytes > len(buf):
            raise ValueError(f"tensor {t.name} runs past the end of the file (truncated download?)")
    return GGUFHeader(path, version, kvs, tensors, alignment, data_start)


def read_header(path: str | Path) -> GGUFHeader:
    """Parse the metadata and tensor table of a GGUF file (memory-mapped; tensor data is not touched)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DepthpruneError(f"GGUF file {path} does not exist")
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise DepthpruneError(f"{path} is not a GGUF file (its first bytes are not 'GGUF')")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                return _parse(buf, path)
            except DepthpruneError:
                raise
            except (ValueError, struct.error, KeyError, UnicodeDecodeError) as exc:
                raise DepthpruneError(f"could not read GGUF file {path}: {exc}") from None


def gguf_architecture(header: GGUFHeader) -> tuple[str, int]:
    """``(architecture, block_count)``; a clear error when either is missing."""
    arch = header.get("general.architecture")
    if not isinstance(arch, str):
        raise DepthpruneError("the GGUF file has no general.architecture key, so its blocks cannot be identified")
    count = header.get(f"{arch}.block_count")
    if not isinstance(count, int) or isinstance(count, bool):
        raise DepthpruneError(f"the GGUF file has no {arch}.block_count key, so its blocks cannot be counted")
    return arch, count


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
    from ..surgery import validate_layer_indices

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


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _string(data: bytes | str) -> bytes:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return struct.pack("<Q", len(raw)) + raw


def _encode_kv(kv: KeyValue, value) -> bytes:
    """A metadata entry with a new value of the entry's own GGUF type."""
    out = _string(kv.key) + struct.pack("<I", kv.vtype)
    if kv.vtype != GGUFValueType.ARRAY:
        return out + struct.pack(_SCALAR[kv.vtype], value)
    out += struct.pack("<IQ", kv.sub_type, len(value))
    if kv.sub_type == GGUFValueType.STRING:
        return out + b"".join(_string(item) for item in value)
    return out + np.asarray(value, dtype=_NUMPY[kv.sub_type]).tobytes()


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
        offset += _pad(t.nbytes, alignment)
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
                out.write(b"\0" * (_pad(out.tell(), header.alignment) - out.tell()))
                _copy_bytes(src, out, header.data_start + tensor.offset, tensor.nbytes, buffer)
            out.write(b"\0" * (_pad(out.tell(), header.alignment) - out.tell()))
            out.flush()
            os.fsync(out.fileno())
    return sliced, len(plan)


def prune_gguf(src_path: str | Path, removed_layers: Sequence[int], out_path: str | Path, *,
               overwrite: bool = False, chunk_bytes: int = CHUNK_BYTES) -> GGUFPruneResult:
    """Write ``out_path``: the GGUF ``src_path`` without the blocks ``removed_layers`` (0-based).

    Kept tensors are copied byte for byte (no dequantization), blocks are renumbered 0..k-1,
    ``{arch}.block_count`` and per-block ``{arch}.*`` metadata arrays shrink, every other key is
    copied as the input's bytes. The file appears atomically (temporary sibling, then rename); an
    existing ``out_path`` is replaced only with ``overwrite``. Raises :class:`DepthpruneError` for
    removals llama.cpp could not represent (see :func:`check_removal`).
    """
    src = Path(src_path).expanduser()
    out = Path(out_path).expanduser()
    check_gguf_output(out, overwrite, src)
    header = read_header(src)
    arch, n_blocks = gguf_architecture(header)
    keep = check_removal(arch, n_blocks, removed_layers, header.get(f"{arch}.attention.sliding_window"))
    removed = [i for i in range(n_blocks) if i not in set(keep)]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        sliced, n_tensors = _write(header, tmp, arch, n_blocks, keep, chunk_bytes)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        commit(tmp, out, overwrite=overwrite, kind="file")  # no-clobber: refuses a file that appeared meanwhile
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %s: %d of %d blocks, %d tensors", out, len(keep), n_blocks, n_tensors)
    return GGUFPruneResult(
        source=str(src), output=str(out), architecture=arch, removed_layers=removed, kept_layers=keep,
        blocks_before=n_blocks, blocks_after=len(keep), tensors_before=len(header.tensors), tensors_after=n_tensors,
        bytes_before=src.stat().st_size, bytes_after=out.stat().st_size, per_layer_keys=sliced)


def check_gguf_output(out: str | Path, overwrite: bool, src: str | Path | None = None) -> Path:
    """Refuse an output path that exists (without ``overwrite``), is a directory, or is the input itself."""
    out = Path(out).expanduser()
    if out.suffix.lower() != ".gguf":
        raise DepthpruneError(f"GGUF output path {out} must end in .gguf")
    if src is not None and out.exists() and Path(src).expanduser().exists() and out.resolve() == Path(src).expanduser().resolve():
        raise DepthpruneError(f"the output {out} is the input GGUF file; choose another output path")
    if out.exists() and not out.is_file():
        raise DepthpruneError(f"output path {out} exists and is not a file")
    if out.exists() and not overwrite:
        raise DepthpruneError(f"output file {out} already exists; choose another --out or pass --overwrite")
    remember(out)
    return out


# --------------------------------------------------------------------------- the prune pipeline's GGUF output


def source_gguf(loaded) -> Path | None:
    """The GGUF file a :class:`~depthprune.models.LoadedModel` was loaded from (a .gguf path or a demo alias)."""
    from ..models import DEMO_MODELS

    kind = loaded.info.get("kind")
    if kind == "gguf":
        return Path(loaded.source).expanduser()
    if kind == "demo" and loaded.source in DEMO_MODELS:
        return DEMO_MODELS[loaded.source].locate()
    return None


def gguf_output_paths(path: str | Path) -> tuple[Path, Path]:
    """``(gguf file, report json)``: ``X.gguf`` -> ``X.gguf`` and ``X.depthprune.json``; a directory D -> D/model.gguf."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".gguf":
        return path, path.with_suffix(".depthprune.json")
    return path / "model.gguf", path / "depthprune.json"


def check_gguf_destination(path: str | Path, overwrite: bool) -> None:
    """Refuse, before any heavy work, an output that exists (without ``overwrite``) or is the wrong kind."""
    from ..export import check_output_dir

    path = Path(path).expanduser()
    if path.suffix.lower() == ".gguf":
        gguf_file, report = gguf_output_paths(path)
        check_gguf_output(gguf_file, overwrite)
        if report.exists() and not overwrite:
            raise DepthpruneError(f"report file {report} already exists; choose another --out or pass --overwrite")
    else:
        check_output_dir(path, overwrite)


def _card(report, bench: dict | None, evals: dict | None, gguf: GGUFPruneResult) -> str:
    from ..export import model_card

    card = model_card(report, bench=bench, evals=evals)
    card = card.replace("library_name: transformers", "library_name: gguf")
    card = re.sub(r"This is an ordinary transformers checkpoint:[^\n]*",
                  "This is a GGUF file (`model.gguf`) for llama.cpp and compatible runtimes; the kept blocks' "
                  "tensors are the original file's bytes (same quantization), renumbered. transformers loads it "
                  "with `AutoModelForCausalLM.from_pretrained(this_dir, gguf_file=\"model.gguf\")`.", card)
    return card + (f"\nGGUF: {gguf.blocks_before} -> {gguf.blocks_after} blocks, "
                   f"{gguf.bytes_before:,} -> {gguf.bytes_after:,} bytes.\n")


def save_gguf(source: str | Path, report, out: str | Path, *, overwrite: bool = False, bench: dict | None = None,
              evals: dict | None = None) -> GGUFPruneResult:
    """Write the pruned GGUF for a prune run from the ORIGINAL ``source`` file's bytes.

    ``out`` ending in ``.gguf``: that file plus ``<stem>.depthprune.json`` beside it. Otherwise a
    directory (made atomically) with ``model.gguf``, ``depthprune.json``, a model card and the
    layer-score plot. ``report`` is the run's :class:`~depthprune.reports.PruneReport`; its
    ``removed_layers`` are cut. The JSON records the report plus a ``"gguf"`` section.
    """
    import json

    from ..export import atomic_directory, write_json_atomic
    from ..plots import plot_layer_scores

    out = Path(out).expanduser()
    check_gguf_destination(out, overwrite)
    if out.suffix.lower() == ".gguf":
        result = prune_gguf(source, report.removed_layers, out, overwrite=overwrite)
        write_json_atomic(gguf_output_paths(out)[1], {**report.to_json(), "gguf": result.to_json()})
        return result
    with atomic_directory(out, overwrite) as tmp:
        result = prune_gguf(source, report.removed_layers, tmp / "model.gguf")
        result.output = str(out / "model.gguf")
        (tmp / "depthprune.json").write_text(json.dumps({**report.to_json(), "gguf": result.to_json()}, indent=2)
                                             + "\n", encoding="utf-8")
        from ..export import write_evidence

        card_evals = write_evidence(tmp, report, bench, evals)
        (tmp / "README.md").write_text(_card(report, bench, card_evals, result), encoding="utf-8")
        if report.scores:
            plot_layer_scores(report.scores, tmp / "layer_scores.png", removed=report.removed_layers,
                              metric=report.metric, title=f"{report.model}: {report.metric} per layer (red = removed)")
    return result
