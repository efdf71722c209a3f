"""Text sources and their deterministic chunking into token batches.

Data SPECs (for calibration and for perplexity):

* ``builtin`` / ``builtin:calib`` / ``builtin:heldout``: English prose that ships
  with every CPython (the Python language reference topics in
  ``pydoc_data.topics``), split into two disjoint halves: ``calib`` (even
  topics, the default) and ``heldout`` (odd topics). No download, no dataset.
* ``self``: the model writes its own calibration text (seeded sampling from
  its BOS token), so pruning needs no dataset at all. Calibration only.
* a local file or a directory of them: ``.jsonl``/``.json`` (one object per
  line with a ``text`` field, name configurable), ``.parquet`` (a ``text``
  column), anything else is read as UTF-8 plain text. Directories are read
  recursively in sorted path order. Project Gutenberg boilerplate is
  stripped where the ``*** START OF``/``*** END OF`` markers are present.
* ``hf:NAME[:CONFIG][:SPLIT]``: a Hugging Face dataset through ``datasets``
  (streamed; split defaults to ``train``), e.g. ``hf:pg19``,
  ``hf:wikitext:wikitext-2-raw-v1:test``. NAME may be a local dataset folder.

Chunking (documented contract, deterministic):

1. Documents are tokenized one by one without special tokens and joined into
   one stream with the EOS token between documents (nothing if the tokenizer
   has no EOS). Reading stops once the stream holds ``4 x samples`` windows
   (calibration) or the ``max_tokens`` budget (perplexity).
2. The stream is cut into consecutive, non-overlapping windows of
   ``seq_len - p`` tokens, where ``p`` is the number of special tokens the
   tokenizer puts in front of a text (BOS for Llama/Gemma, none for GPT-2);
   each window is prefixed with them, so every window is ``seq_len`` long.
3. Calibration draws ``samples`` of the full windows without replacement with
   ``torch.Generator().manual_seed(seed)`` and keeps them in stream order.
   Fewer full windows than ``samples`` uses all of them (with a warning).
   Fewer tokens than one full window is an error.
4. Perplexity takes the windows in order up to ``max_tokens`` real tokens; the
   last one may be shorter and is right-padded. Padding is masked everywhere
   (``attention_mask`` = 0) and never counted by any metric.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch

from depthprune.errors import DepthpruneError
from depthprune.io.guards.network import require_hub

log = logging.getLogger(__name__)

PLAIN_TEXT = "plain"
SELF_GENERATION_BATCH = 8  # 'self' text is sampled in groups of this size, independent of --batch-size
OVERSAMPLE = 4


def batch_count(samples: int, batch_size: int) -> int:
    """Batches of at most ``batch_size`` that ``samples`` sequences make (the last may be smaller)."""
    return -(-samples // batch_size)


@dataclass
class CalibrationSet:
    """Token windows with their masks: ``input_ids`` and ``attention_mask`` are (N, T)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2:
            raise DepthpruneError("input_ids must be a 2-D tensor of shape (sequences, tokens)")
        if self.attention_mask.shape != self.input_ids.shape:
            raise DepthpruneError(
                f"attention_mask has shape {tuple(self.attention_mask.shape)} but input_ids has "
                f"{tuple(self.input_ids.shape)}; they must match"
            )
        if int(self.attention_mask.sum()) == 0:
            raise DepthpruneError("the calibration batches hold no real tokens (the attention mask is all zero)")

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def num_batches(self, batch_size: int) -> int:
        return batch_count(len(self), batch_size)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if batch_size < 1:
            raise DepthpruneError(f"batch size must be at least 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.input_ids[start:start + batch_size], self.attention_mask[start:start + batch_size]


def from_tensors(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **settings) -> CalibrationSet:
    """Wrap caller-chosen token ids (and optional mask; default all ones) as a calibration set."""
    input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    mask = torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask).long()
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    settings = {"source": "tensors", "samples": int(input_ids.shape[0]),
                "seq_len": int(input_ids.shape[1]), **settings}
    return CalibrationSet(input_ids, mask, settings)


# --------------------------------------------------------------------------- text sources

def _builtin_texts(part: str) -> list[str]:
    from pydoc_data.topics import topics

    # Several topic keys share one text: dedupe (first key in sorted order wins) before splitting.
    unique = list(dict.fromkeys(topics[k] for k in sorted(topics)))
    if part in ("", "calib"):
        return unique[0::2]
    if part == "heldout":
        return unique[1::2]
    raise DepthpruneError(f"unknown builtin text '{part}': use builtin, builtin:calib or builtin:heldout")


def strip_gutenberg(text: str) -> str:
    """Drop the Project Gutenberg header/footer when its START/END markers are present."""
    start = text.find("*** START OF")
    if start != -1:
        newline = text.find("\n", start)
        text = text[newline + 1:] if newline != -1 else ""
    end = text.find("*** END OF")
    if end != -1:
        text = text[:end]
    return text


READ_CHUNK_CHARS = 1_000_000  # plain text is read and tokenized in pieces of at most this many characters


class Pieces:
    """One document too long to hold (or tokenize) at once: an iterable of its consecutive pieces.

    :func:`token_stream` tokenizes the pieces one by one (no EOS between them) and stops
    reading as soon as it has enough tokens, so memory stays bounded whatever the file size.
    """

    def __init__(self, pieces: Iterable[str]):
        self._pieces = pieces

    def __iter__(self) -> Iterator[str]:
        return iter(self._pieces)


def split_text(text: str, size: int = READ_CHUNK_CHARS) -> Iterator[str]:
    """Cut ``text`` into pieces of at most ``size`` characters, at a newline or space when there is one."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = max(text.rfind("\n", start + size // 2, end), text.rfind(" ", start + size // 2, end))
            end = cut + 1 if cut >= 0 else end
        yield text[start:end]
        start = end


def _read_pieces(path: Path, size: int = READ_CHUNK_CHARS) -> Iterator[str]:
    """A UTF-8 text file in pieces of at most ~``size`` characters, Gutenberg boilerplate stripped."""
    first = True
    carry = ""
    with _open_text(path) as handle:
        while True:
            try:
                block = handle.read(size)
            except UnicodeDecodeError:
                raise DepthpruneError(f"{path} is not UTF-8 text") from None
            except OSError as exc:
                raise DepthpruneError(f"cannot read {path}: {exc.strerror or exc}") from None
            text = carry + block
            carry = ""
            if block:
                cut = max(text.rfind("\n", len(text) // 2), text.rfind(" ", len(text) // 2))
                if cut >= 0:
                    text, carry = text[:cut + 1], text[cut + 1:]
            if first:
                start = text.find("*** START OF")
                if start != -1:
                    newline = text.find("\n", start)
                    text = text[newline + 1:] if newline != -1 else ""
                first = False
            end = text.find("*** END OF")
            if end != -1:
                if text[:end]:
                    yield text[:end]
                return
            if text:
                yield text
            if not block:
                return


def _open_text(path: Path):
    try:
        return path.open(encoding="utf-8-sig")
    except IsADirectoryError:
        raise DepthpruneError(f"{path} is a directory, not a text file") from None
    except OSError as exc:
        raise DepthpruneError(f"cannot read {path}: {exc.strerror or exc}") from None


def _field_value(value, where: str, text_field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    raise DepthpruneError(f"{where}: field '{text_field}' holds a {type(value).__name__}, not text; "
                          "pick the text field with --text-field")


def _documents(values: Iterator[tuple[object, str]], source: str, text_field: str) -> Iterator[str]:
    """Texts from (field value, where) pairs of one record source: nulls are skipped (and counted in one warning),
    non-text values refused, long texts split into bounded pieces."""
    skipped = 0
    try:
        for value, where in values:
            text = _field_value(value, where, text_field)
            if text is None:
                skipped += 1
                continue
            yield text if len(text) <= READ_CHUNK_CHARS else Pieces(split_text(text))
    finally:
        values.close()  # release the file / stream now, also when the reader stops early
        if skipped:
            log.warning("%s: skipped %d row(s) whose '%s' is null", source, skipped, text_field)


def _jsonl_values(path: Path, text_field: str) -> Iterator[tuple[object, str]]:
    with _open_text(path) as handle:
        lineno = 0
        while True:
            try:
                line = handle.readline()
            except UnicodeDecodeError as exc:
                raise DepthpruneError(f"{path} (after line {lineno}) is not UTF-8 text ({exc.reason})") from None
            except OSError as exc:
                raise DepthpruneError(f"cannot read {path}: {exc.strerror or exc}") from None
            if not line:
                break
            lineno += 1
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                raise DepthpruneError(f"{path}:{lineno} is not valid JSON (expected one object per line)") from None
            if not isinstance(row, dict) or text_field not in row:
                raise DepthpruneError(f"{path}:{lineno} has no '{text_field}' field; pick the field with --text-field")
            yield row[text_field], f"{path}:{lineno}"


def _parquet_values(path: Path, text_field: str) -> Iterator[tuple[object, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DepthpruneError(f"{path} is not a readable parquet file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if text_field not in handle.schema_arrow.names:
        raise DepthpruneError(f"{path} has no '{text_field}' column; pick the column with --text-field")
    where = f"{path} column '{text_field}'"
    try:
        for batch in handle.iter_batches(batch_size=256, columns=[text_field]):
            for value in batch.column(0).to_pylist():
                yield value, where
    except (pa.ArrowException, OSError) as exc:
        raise DepthpruneError(f"{path} is a corrupt parquet file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _file_texts(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        yield from _documents(_jsonl_values(path, text_field), str(path), text_field)
    elif suffix == ".parquet":
        yield from _documents(_parquet_values(path, text_field), str(path), text_field)
    else:
        try:
            small = path.stat().st_size <= READ_CHUNK_CHARS
        except OSError as exc:
            raise DepthpruneError(f"cannot read {path}: {exc.strerror or exc}") from None
        if small:  # the common case: one string, exactly as read
            with _open_text(path) as handle:
                try:
                    text = handle.read()
                except UnicodeDecodeError:
                    raise DepthpruneError(f"{path} is not UTF-8 text") from None
                except OSError as exc:
                    raise DepthpruneError(f"cannot read {path}: {exc.strerror or exc}") from None
            yield strip_gutenberg(text)
        else:  # large: bounded pieces, read only as far as the token budget needs
            yield Pieces(_read_pieces(path))


def _hf_texts(spec: str, text_field: str) -> Iterator[str]:
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise DepthpruneError(f"bad dataset spec '{spec}': use hf:NAME[:CONFIG][:SPLIT]")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as exc:  # datasets raises many types; the user needs the one sentence
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DepthpruneError(f"could not load dataset '{spec}': {first}") from None
    yield from _documents(_hf_values(iter(ds), spec, text_field), f"dataset '{spec}'", text_field)


def _hf_values(rows: Iterator[dict], spec: str, text_field: str) -> Iterator[tuple[object, str]]:
    while True:
        try:  # streaming reads over the network as it goes: a lost connection is the user's one sentence too
            row = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - datasets/fsspec/aiohttp raise many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DepthpruneError(f"could not read dataset '{spec}': {first}; check the network or use a "
                                  "local file") from None
        if text_field not in row:
            raise DepthpruneError(f"dataset '{spec}' has no '{text_field}' field; pick it with --text-field")
        yield row[text_field], f"dataset '{spec}'"


def iter_texts(spec: str, *, text_field: str = "text") -> Iterator[str]:
    """Documents of a text SPEC (see the module docstring), lazily.

    The spec itself (prefix, path existence) is checked right away, so a bad
    spec fails before any model is loaded; file contents are read lazily.
    """
    if spec == "self":
        raise DepthpruneError("'self' data needs the model: use build_calibration(..., model=model)")
    if spec == "builtin" or spec.startswith("builtin:"):
        return iter(_builtin_texts(spec.partition(":")[2]))
    if spec.startswith("hf:"):
        if not spec[3:].split(":")[0]:
            raise DepthpruneError(f"bad dataset spec '{spec}': use hf:NAME[:CONFIG][:SPLIT]")
        if not Path(spec[3:].split(":")[0]).expanduser().is_dir():
            require_hub(f"dataset '{spec}'")  # fail fast, before any model is loaded
        return _hf_texts(spec, text_field)
    path = Path(spec).expanduser()
    if path.is_dir():
        try:
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        except OSError as exc:
            raise DepthpruneError(f"cannot read data directory {path}: {exc.strerror or exc}") from None
        if not files:
            raise DepthpruneError(f"data directory {path} holds no files")
        return (text for file in files for text in _file_texts(file, text_field))
    if path.is_file():
        return _file_texts(path, text_field)
    if path.exists():
        raise DepthpruneError(f"data path {spec} is neither a regular file nor a directory (a device or pipe?)")
    if any(sep in spec for sep in ("/", "\\")) or "." in Path(spec).name:
        raise DepthpruneError(f"data path {spec} does not exist")
    raise DepthpruneError(
        f"unknown data spec '{spec}': give a file or directory, hf:NAME[:CONFIG][:SPLIT], builtin or self"
    )


def validate_spec(spec: str, *, allow_self: bool = True) -> None:
    """Fail fast on a bad data SPEC, before any model is loaded."""
    if spec == "self":
        if not allow_self:
            raise DepthpruneError("'self' is for calibration only; give a text file, hf:NAME or builtin:heldout")
        return
    iter_texts(spec)


# --------------------------------------------------------------------------- tokenization

def special_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts in front of every text (e.g. [BOS]), maybe empty."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for k in range(len(with_special)):
        if with_special[k:k + len(plain)] == plain:
            return list(with_special[:k])
    return []


def token_stream(tokenizer, texts: Iterable[str | Pieces], max_tokens: int) -> list[int]:
    """Documents tokenized without special tokens, joined with EOS, cut at ``max_tokens``.

    A document longer than :data:`READ_CHUNK_CHARS` characters (or given as :class:`Pieces`) is
    tokenized piece by piece, cut at whitespace, and reading stops as soon as ``max_tokens`` are
    there: memory is bounded by the piece size and ``max_tokens``, not by the size of the input.
    """
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        pieces = text if isinstance(text, Pieces) else split_text(text) if len(text) > READ_CHUNK_CHARS else [text]
        started = False
        for piece in pieces:
            if not piece or not piece.strip():
                continue
            if not started and stream and eos is not None:
                stream.append(eos)
            started = True
            stream.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
            if len(stream) >= max_tokens:
                return stream[:max_tokens]
    return stream[:max_tokens]


def _windows(stream: list[int], body: int) -> list[list[int]]:
    return [stream[i:i + body] for i in range(0, len(stream), body)]


def _pad_rows(rows: list[list[int]], prefix: list[int], seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), seq_len), dtype=torch.long)
    for r, row in enumerate(rows):
        full = prefix + row
        ids[r, :len(full)] = torch.tensor(full, dtype=torch.long)
        mask[r, :len(full)] = 1
    return ids, mask


def pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _check_lengths(samples: int, seq_len: int, prefix: list[int]) -> int:
    if samples < 1:
        raise DepthpruneError(f"--samples must be at least 1, got {samples}")
    body = seq_len - len(prefix)
    if body < 2:
        raise DepthpruneError(f"--seq-len must be at least {len(prefix) + 2}, got {seq_len}")
    return body


def calibration_from_texts(tokenizer, texts: Iterable[str], *, samples: int, seq_len: int, seed: int = 0,
                           source: str = "texts") -> CalibrationSet:
    """Chunk documents into ``samples`` windows of ``seq_len`` tokens (contract in the module docstring)."""
    prefix = special_prefix(tokenizer)
    body = _check_lengths(samples, seq_len, prefix)
    stream = token_stream(tokenizer, texts, max_tokens=OVERSAMPLE * samples * body)
    full = [w for w in _windows(stream, body) if len(w) == body]
    if not full:
        raise DepthpruneError(
            f"calibration data '{source}' is too short: it gives {len(stream)} tokens, fewer than one "
            f"window of --seq-len {seq_len}; give more text or a smaller --seq-len"
        )
    if len(full) < samples:
        log.warning("calibration data gives only %d windows of %d tokens; using all of them instead of %d",
                    len(full), seq_len, samples)
        chosen = list(range(len(full)))
    else:
        generator = torch.Generator().manual_seed(seed)
        chosen = sorted(torch.randperm(len(full), generator=generator)[:samples].tolist())
    ids, mask = _pad_rows([full[i] for i in chosen], prefix, seq_len, pad_id(tokenizer))
    settings = {"source": source, "samples": len(chosen), "requested_samples": samples, "seq_len": seq_len,
                "seed": seed, "windows_available": len(full), "tokens": int(mask.sum())}
    return CalibrationSet(ids, mask, settings)


def sequential_windows(tokenizer, texts: Iterable[str], *, seq_len: int, max_tokens: int,
                       source: str = "texts") -> CalibrationSet:
    """Consecutive windows for perplexity: up to ``max_tokens`` stream tokens, last window padded."""
    prefix = special_prefix(tokenizer)
    body = _check_lengths(1, seq_len, prefix)
    if max_tokens < 2:
        raise DepthpruneError(f"--max-tokens must be at least 2, got {max_tokens}")
    stream = token_stream(tokenizer, texts, max_tokens=max_tokens)
    rows = [w for w in _windows(stream, body) if len(w) >= 2]
    if not rows:
        raise DepthpruneError(f"evaluation text '{source}' is empty or too short to score (needs 2 tokens)")
    ids, mask = _pad_rows(rows, prefix, seq_len, pad_id(tokenizer))
    return CalibrationSet(ids, mask, {"source": source, "seq_len": seq_len, "max_tokens": max_tokens,
                                      "windows": len(rows), "stream_tokens": len(stream)})


def self_generated(model, tokenizer, *, samples: int, seq_len: int, seed: int = 0, batch_size: int = 8,
                   temperature: float = 1.0, progress: bool = True) -> CalibrationSet:
    """The model writes its own calibration text: seeded sampling from its BOS token."""
    from tqdm.auto import tqdm

    _check_lengths(samples, seq_len, [])
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise DepthpruneError("'self' calibration needs a tokenizer with a BOS or EOS token to start from")
    eos = tokenizer.eos_token_id
    device = model.get_input_embeddings().weight.device
    rows: list[list[int]] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        # Generate in groups of a fixed size, whatever --batch-size is: the same seed gives the same text.
        for first in tqdm(range(0, samples, SELF_GENERATION_BATCH), desc="generating calibration text",
                          disable=not progress, unit="batch"):
            n = min(SELF_GENERATION_BATCH, samples - first)
            prompt = torch.full((n, 1), start, dtype=torch.long, device=device)
            with torch.inference_mode():
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                                     temperature=temperature, top_k=0, top_p=1.0, min_new_tokens=1,
                                     max_new_tokens=seq_len - 1, pad_token_id=pad_id(tokenizer))
            for row in out.cpu().tolist():
                gen = row[1:]
                if eos is not None and eos in gen:
                    gen = gen[:gen.index(eos) + 1]
                rows.append([start] + gen)
    ids, mask = _pad_rows(rows, [], seq_len, pad_id(tokenizer))
    settings = {"source": "self", "samples": samples, "seq_len": seq_len, "seed": seed,
                "temperature": temperature, "tokens": int(mask.sum())}
    return CalibrationSet(ids, mask, settings)


def build_calibration(spec: str, tokenizer, *, samples: int = 128, seq_len: int = 512, seed: int = 0,
                      text_field: str = "text", model=None, batch_size: int = 8,
                      progress: bool = True) -> CalibrationSet:
    """Calibration windows from a data SPEC (``self`` needs ``model``)."""
    if spec == "self":
        if model is None:
            raise DepthpruneError("'self' calibration data needs the model to generate from")
        return self_generated(model, tokenizer, samples=samples, seq_len=seq_len, seed=seed,
                              batch_size=batch_size, progress=progress)
    return calibration_from_texts(tokenizer, iter_texts(spec, text_field=text_field), samples=samples,
                                  seq_len=seq_len, seed=seed, source=spec)
