"""What a model spec is, found without reading any weights: the planner's view of a model.

:func:`inspect_source` resolves a demo alias, a ``.gguf`` file, a local checkpoint directory or a Hub id into a
:class:`ModelSource`: its kind, the files it reads, its config (local and Hub: ``config.json`` only), its layer count,
whether its weights are safetensors (the on-disk and layer-streamed executors need that) and how many bytes they
take. Every check that needs no weights happens here, for every command and executor alike:

* remote code (``auto_map`` in ``config.json`` or ``tokenizer_config.json``) is refused without
  ``trust_remote_code``;
* a config that is not a JSON object, an encoder or encoder-decoder model, a safetensors file or shard index that
  lies about its contents, and a GGUF whose header disagrees with its tensor table are refused in one sentence
  (:mod:`depthprune.io.safetensors`, :mod:`depthprune.io.gguf`);
* a misspelt demo alias (``smollm2_135m``) is not sent to the Hub: the alias is suggested.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from depthprune.arch.layout import num_layers
from depthprune.errors import DepthpruneError
from depthprune.io.gguf import consistency_problems, gguf_architecture, read_header as read_gguf_header
from depthprune.io.guards.model_files import check_causal_decoder, check_model_dir, read_json_object
from depthprune.io.models import (DEMO_MODELS, check_local_config, declared_dtype, gguf_source_dtype, hub_config,
                                  is_gguf)
from depthprune.io.safetensors import checkpoint_shards, read_header as read_safetensors_header

log = logging.getLogger(__name__)

# GGUF architecture name -> transformers model_type (the GGUF loader's own mapping, for the families it loads)
GGUF_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen2moe": "qwen2_moe",
                    "qwen3moe": "qwen3_moe", "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text",
                    "phi3": "phi3", "mistral": "mistral", "falcon": "falcon", "gpt2": "gpt2"}
FLOAT_WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


@dataclass(frozen=True)
class ModelSource:
    """A model as the planner sees it (no weights read)."""

    spec: str
    kind: str                          # demo | gguf | local | hub | in-memory
    path: Path | None = None           # the local directory or GGUF file
    gguf: Path | None = None           # the GGUF file behind a gguf or demo source
    model_type: str | None = None
    num_layers: int | None = None
    safetensors: bool = False          # a local directory with safetensors weights
    source_dtype: str | None = None    # the dtype the weights come in (saved that way by default)
    weight_elements: int | None = None  # number of weight values (float tensors), from the headers
    weight_bytes: int | None = None    # bytes of the weight files on disk
    config: object | None = field(default=None, compare=False, repr=False)  # transformers config (local, hub)
    inputs: tuple[Path, ...] = ()      # local files and folders this source reads

    def memory_bytes(self, dtype_width: int) -> int | None:
        """Bytes the weights take in memory at a float dtype of ``dtype_width`` bytes (None: unknown)."""
        if self.weight_elements is None:
            return None
        return self.weight_elements * dtype_width


def suggest_alias(spec: str) -> str | None:
    """The demo alias a misspelt spec most likely meant (``smollm2_135m`` -> ``smollm2-135m``), or None."""
    normal = spec.strip().lower().replace("_", "-").replace(" ", "-")
    if normal in DEMO_MODELS:
        return normal
    close = difflib.get_close_matches(normal, list(DEMO_MODELS), n=1, cutoff=0.85)
    return close[0] if close else None


def inspect_source(spec: str, *, trust_remote_code: bool = False) -> ModelSource:
    """Resolve ``spec`` and check everything about it that needs no weights (one sentence on any problem)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DepthpruneError("no model was given: name a demo alias, a .gguf file, a checkpoint directory or a Hub id")
    path = Path(spec).expanduser()
    if spec in DEMO_MODELS:
        return _demo(spec)
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise DepthpruneError(f"model file {path} does not exist")
        return _gguf(spec, path, kind="gguf")
    if path.is_dir():
        return _local(spec, path, trust_remote_code)
    if path.exists():
        if is_gguf(path):
            return _gguf(spec, path, kind="gguf")
        raise DepthpruneError(f"{path} is neither a model directory nor a .gguf file")
    alias = suggest_alias(spec)
    if alias is not None:
        raise DepthpruneError(f"model '{spec}' is neither a local path nor a demo alias; did you mean the demo alias "
                              f"'{alias}'?")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise DepthpruneError(f"model path {spec} does not exist")
    return _hub(spec, trust_remote_code)


def _demo(alias: str) -> ModelSource:
    demo = DEMO_MODELS[alias]
    gguf = demo.locate()
    source = _gguf(alias, gguf, kind="demo")
    return ModelSource(alias, "demo", path=gguf, gguf=gguf, model_type=source.model_type,
                       num_layers=source.num_layers, source_dtype="bfloat16", weight_elements=source.weight_elements,
                       weight_bytes=source.weight_bytes, inputs=(gguf.resolve(),))


def _gguf(spec: str, path: Path, *, kind: str) -> ModelSource:
    header = read_gguf_header(path)
    arch, blocks = gguf_architecture(header)
    problems = consistency_problems(header)
    if problems:
        raise DepthpruneError(f"GGUF file {path} lies about its contents: {problems[0]}")
    elements = 0
    for tensor in header.tensors:
        n = 1
        for d in tensor.dims:
            n *= int(d)
        elements += n
    return ModelSource(spec, kind, path=path.resolve(), gguf=path.resolve(), model_type=GGUF_MODEL_TYPES.get(arch, arch),
                       num_layers=blocks, source_dtype=gguf_source_dtype(path) if kind == "gguf" else "bfloat16",
                       weight_elements=elements, weight_bytes=path.stat().st_size, inputs=(path.resolve(),))


def _local(spec: str, path: Path, trust_remote_code: bool) -> ModelSource:
    if not (path / "config.json").is_file():
        raise DepthpruneError(f"model directory {path} has no config.json; is it a Hugging Face checkpoint?")
    check_model_dir(path, trust_remote_code=trust_remote_code)
    config = check_local_config(path, trust_remote_code)
    elements = on_disk = None
    has_safetensors = False
    try:
        shards = checkpoint_shards(path)
    except DepthpruneError as exc:
        if (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists():
            raise  # safetensors weights that lie about themselves
        log.debug("%s: no safetensors weights (%s)", path, exc)
    else:
        has_safetensors = True
        elements, on_disk = 0, 0
        for shard in shards:
            on_disk += shard.stat().st_size
            for entry in read_safetensors_header(shard)[0]:
                if entry.dtype in FLOAT_WIDTH:
                    n = 1
                    for s in entry.shape:
                        n *= int(s)
                    elements += n
    return ModelSource(spec, "local", path=path.resolve(), model_type=getattr(config, "model_type", None),
                       num_layers=num_layers(config), safetensors=has_safetensors,
                       source_dtype=declared_dtype(config), weight_elements=elements, weight_bytes=on_disk,
                       config=config, inputs=(path.resolve(),))


def _hub(spec: str, trust_remote_code: bool) -> ModelSource:
    config = hub_config(spec, trust_remote_code)
    check_causal_decoder(config, f"model '{spec}'")
    return ModelSource(spec, "hub", model_type=getattr(config, "model_type", None), num_layers=num_layers(config),
                       source_dtype=declared_dtype(config), config=config)


def in_memory_source(model) -> ModelSource:
    """The source of a model the caller passed in (nothing to inspect on disk)."""
    config = getattr(model, "config", None)
    check_causal_decoder(config, f"model {type(model).__name__}")
    name = getattr(config, "_name_or_path", "") or type(model).__name__
    return ModelSource(str(name), "in-memory", model_type=getattr(config, "model_type", None),
                       num_layers=num_layers(config), source_dtype=declared_dtype(config), config=config)


def read_output_record(directory: str | Path, what: str = "a depthprune output directory") -> dict:
    """The ``depthprune.json`` of an output directory; one sentence when it is missing or not a JSON object."""
    directory = Path(directory).expanduser()
    record = directory / "depthprune.json"
    if not record.is_file():
        raise DepthpruneError(f"{directory} is not {what} (no depthprune.json); give the --out directory of a "
                              "depthprune prune run")
    return read_json_object(record, "record")


__all__ = ["GGUF_MODEL_TYPES", "ModelSource", "in_memory_source", "inspect_source", "read_output_record",
           "suggest_alias"]
