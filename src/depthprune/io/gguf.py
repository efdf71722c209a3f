"""Reading GGUF headers: metadata and the tensor table, never tensor data.

The header is parsed here rather than with ``gguf.GGUFReader``: the reader builds a numpy view per element (about
a minute for SmolLM2's 98k tokenizer strings on this machine, longer for Gemma's 262k). The ``gguf`` package
supplies the value and tensor type tables, and its reader is the independent check in the tests.

A file that lies about itself is refused in one sentence: a tensor running past the end of the file, a
block count that disagrees with the ``blk.N.`` tensors present, a per-layer metadata array of the wrong length
(:func:`consistency_problems`).
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from depthprune.errors import DepthpruneError

BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")

SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
NUMPY_TYPES = {vtype: np.dtype(fmt) for vtype, fmt in SCALAR_FORMATS.items()}


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
        return self.unpack(SCALAR_FORMATS[vtype])

    def array(self) -> tuple[GGUFValueType, list]:
        sub = GGUFValueType(self.unpack("<I"))
        count = self.unpack("<Q")
        if sub == GGUFValueType.STRING:
            return sub, [self.raw_string() for _ in range(count)]
        if sub == GGUFValueType.ARRAY:
            raise ValueError("arrays of arrays are not supported")
        dtype = NUMPY_TYPES[sub]
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
    data_start = pad(cur.pos, alignment)
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

def pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def blocks_present(header: GGUFHeader) -> set[int]:
    """The block indices that have at least one ``blk.N.`` tensor."""
    return {int(m.group(1)) for m in map(BLOCK_TENSOR.match, (t.name for t in header.tensors)) if m}


def per_layer_arrays(header: GGUFHeader, arch: str) -> dict[str, int]:
    """``{key: length}`` of every ``{arch}.*`` array that is not a token/string table (per-layer candidates)."""
    return {kv.key: len(kv.value) for kv in header.kvs
            if kv.vtype == GGUFValueType.ARRAY and kv.key.startswith(f"{arch}.") and kv.sub_type != GGUFValueType.STRING}


def consistency_problems(header: GGUFHeader, *, expected_blocks: int | None = None,
                         per_layer_keys: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with a GGUF header as a layer stack (empty: nothing).

    ``block_count`` must equal the number of ``blk.N`` blocks present (0..N-1, none missing) and, when given,
    ``expected_blocks``; each key of ``per_layer_keys`` (arrays with one entry per block) must have that length.
    """
    problems = []
    try:
        arch, count = gguf_architecture(header)
    except DepthpruneError as exc:
        return [str(exc)]
    present = blocks_present(header)
    if present != set(range(count)):
        extra = sorted(present - set(range(count)))
        missing = sorted(set(range(count)) - present)
        what = f"tensors for blocks {extra} beyond it" if extra else f"no tensors for blocks {missing}"
        problems.append(f"{arch}.block_count is {count} but the file has {what}")
    if expected_blocks is not None and count != expected_blocks:
        problems.append(f"{arch}.block_count is {count}, expected {expected_blocks}")
    lengths = per_layer_arrays(header, arch)
    for key in per_layer_keys:
        if key in lengths and lengths[key] != count:
            problems.append(f"{key} has {lengths[key]} entries for {count} blocks")
    return problems


__all__ = ["BLOCK_TENSOR", "GGUFHeader", "KeyValue", "TensorInfo", "blocks_present", "consistency_problems",
           "gguf_architecture", "per_layer_arrays", "read_header"]
