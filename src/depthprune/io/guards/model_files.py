"""Checks on a model's files before (and after a failed) load: nothing runs, every problem names its file."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

from depthprune.errors import DepthpruneError

log = logging.getLogger(__name__)

TRUST_FLAG = "--trust-remote-code"
CONFIG_FILES = ("config.json", "tokenizer_config.json")
MAX_SAFETENSORS_HEADER = 100 * 2**20  # the safetensors format caps its JSON header at 100 MB


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip().rstrip(".")
    return type(exc).__name__


def read_json_object(path: Path, what: str = "") -> dict:
    """Parse ``path`` as a JSON object, or raise one sentence naming it."""
    what = what or path.name
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DepthpruneError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise DepthpruneError(f"cannot read {what} {path}: {exc.strerror or first_line(exc)}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DepthpruneError(f"{what} {path} is not valid JSON ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise DepthpruneError(f"{what} {path} does not hold a JSON object (it holds a {type(data).__name__})")
    return data


def remote_code_refusal(where: str) -> DepthpruneError:
    return DepthpruneError(
        f"{where} asks to run its own Python code (auto_map); depthprune runs no code from a model "
        f"unless you pass {TRUST_FLAG}, so only pass it if you trust that code"
    )


def check_model_dir(directory: Path, *, trust_remote_code: bool = False) -> dict:
    """Validate a local checkpoint directory before transformers touches it; returns its config.

    Refuses ``auto_map`` (custom code) without ``trust_remote_code``, configs that are not JSON
    objects, and truncated/corrupt safetensors headers; all before any weights are read.
    """
    config = read_json_object(directory / "config.json", "model config")
    for name in CONFIG_FILES:
        path = directory / name
        if not path.exists():
            continue
        data = config if name == "config.json" else read_json_object(path, "tokenizer config")
        if data.get("auto_map") and not trust_remote_code:
            raise remote_code_refusal(str(path))
    for path in sorted(directory.glob("*.safetensors")):
        check_safetensors(path)
    index = directory / "model.safetensors.index.json"
    if index.exists():
        data = read_json_object(index, "weights index")
        for shard in sorted(set((data.get("weight_map") or {}).values())):
            if not (directory / str(shard)).is_file():
                raise DepthpruneError(f"weights index {index} names {shard}, which is missing from {directory}")
    return config


def check_safetensors(path: Path) -> None:
    """Header sanity of a .safetensors file: JSON header, offsets inside the file, exact size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise DepthpruneError(f"weights file {path} is truncated ({size} bytes); re-download or re-save it")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
                raise DepthpruneError(f"weights file {path} is truncated or not a safetensors file "
                                      "(its header length is impossible); re-download or re-save it")
            header = json.loads(handle.read(n).decode("utf-8"))
    except OSError as exc:
        raise DepthpruneError(f"cannot read weights file {path}: {exc.strerror or first_line(exc)}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise DepthpruneError(f"weights file {path} is corrupt (its header is not JSON); re-download or re-save it") from None
    if not isinstance(header, dict):
        raise DepthpruneError(f"weights file {path} is corrupt (its header is not a JSON object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise DepthpruneError(f"weights file {path} is corrupt (tensor '{name}' has no valid offsets)")
        end = max(end, offsets[1])
    if 8 + n + end != size:
        raise DepthpruneError(f"weights file {path} is truncated or corrupt: its header describes "
                              f"{8 + n + end} bytes but the file has {size}; re-download or re-save it")


def diagnose_load_failure(directory: Path, exc: BaseException) -> DepthpruneError:
    """After transformers failed on a local directory: find the file to blame and say what is wrong."""
    check_model_dir(directory, trust_remote_code=True)  # raises naming the config/safetensors file at fault
    for path in sorted(directory.glob("*.json")):  # tokenizer.json, generation_config.json, ...
        read_json_object(path)
    for path in sorted(directory.glob("*.bin")):
        try:
            import torch

            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as bad:  # noqa: BLE001 - we only want its message, for the file it names
            if "weights only" in str(bad).lower() or "weights_only" in str(bad):
                return DepthpruneError(f"weights file {path} is a pickle that holds more than tensors; depthprune "
                                       "loads pickles weights-only and refuses it (convert it to safetensors)")
            return DepthpruneError(f"weights file {path} is corrupt or truncated ({first_line(bad)})")
    return DepthpruneError(f"could not load the model in {directory}: {first_line(exc)}")


# --------------------------------------------------------------------------- causal decoders only

def check_causal_decoder(config, where: str) -> None:
    """Refuse encoders (BERT, RoBERTa, ...) and encoder-decoders: ShortGPT pruning is for causal decoders."""
    if getattr(config, "is_encoder_decoder", False):
        raise DepthpruneError(f"unsupported architecture '{config.model_type}': {where} is an encoder-decoder model, "
                              "and depthprune prunes decoder-only causal language models")
    if getattr(config, "is_decoder", False):
        return
    model_type = getattr(config, "model_type", None)
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES as masked
    except ImportError:  # pragma: no cover - very old transformers
        masked = {}
    archs = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    encoder_arch = bool(archs) and all(a.endswith(("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification",
                                                   "ForQuestionAnswering", "ForPreTraining", "Model"))
                                       and not a.endswith(("LMHeadModel", "ForCausalLM")) for a in archs)
    if model_type in masked or (encoder_arch and model_type not in _causal_types()):
        raise DepthpruneError(f"unsupported architecture '{model_type}': {where} is an encoder (bidirectional "
                              "attention), not a causal decoder, and depthprune prunes decoder-only causal language models")


def _causal_types() -> set:
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    except ImportError:  # pragma: no cover
        return set()
