"""Weight-only quantization of a (pruned) model through torchao, saved so that it reloads with transformers.

Why torchao: its quantized weights are tensor subclasses that transformers' ``TorchAoConfig``
integration saves to safetensors and reloads with a plain
``AutoModelForCausalLM.from_pretrained(dir)`` on CPU (torchao must be installed). optimum-quanto
quantizes on CPU too, but transformers refuses to serialize quanto models
(``QuantoHfQuantizer.is_serializable() is False``), so its checkpoints need quanto's own loader.

- ``int8``: ``Int8WeightOnlyConfig`` — int8 weights, one scale per output channel.
- ``int4``: ``IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))`` —
  int4 values with one scale per group of ``group_size`` inputs. torchao's packed int4 formats
  need CUDA/XPU kernels (``Int4WeightOnlyConfig``: tinygemm or mslk); on CPU the int4 values are
  stored one per int8 byte, so an int4 checkpoint is about as large as an int8 one.

Only ``nn.Linear`` weights of the decoder are quantized (transformers keeps ``lm_head`` and
embeddings in float); activations stay in float (weight-only).

The quantization goes through transformers' own loading path (save float to a temporary
directory, reload with ``quantization_config``): that is exactly the model a later
``from_pretrained`` of the saved checkpoint rebuilds.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass

import torch

from depthprune.errors import DepthpruneError

log = logging.getLogger(__name__)

METHODS = ("int8", "int4")


@dataclass(frozen=True)
class QuantizationSettings:
    """What ``--quantize`` asked for; recorded in the report."""

    method: str
    group_size: int = 32
    library: str = "torchao"

    def to_json(self) -> dict:
        return {"method": self.method, "group_size": self.group_size if self.method == "int4" else None,
                "library": self.library, "torchao": _torchao_version()}


def _torchao_version() -> str | None:
    try:
        import torchao

        return torchao.__version__
    except ImportError:
        return None


def check_method(method: str, group_size: int = 32) -> None:
    """Fail fast (before any model work) on a bad method or a missing torchao."""
    if method not in METHODS:
        raise DepthpruneError(f"unknown quantization '{method}': use one of {', '.join(METHODS)}")
    if group_size <= 0 or group_size & (group_size - 1):
        raise DepthpruneError(f"--quant-group-size must be a power of two, not {group_size}")
    if _torchao_version() is None:
        raise DepthpruneError('--quantize needs torchao: pip install "depthprune[quant]"')


def torchao_config(method: str, group_size: int = 32):
    """The torchao config object for ``method`` (see the module docstring)."""
    check_method(method, group_size)
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    if method == "int8":
        return Int8WeightOnlyConfig()
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))


def _check_shapes(model, method: str, group_size: int) -> None:
    if method != "int4":
        return
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.in_features % group_size:
            raise DepthpruneError(
                f"{name} has {module.in_features} inputs, not a multiple of the int4 group size {group_size}; "
                "pick a --quant-group-size that divides it")


def check_quantizable(model) -> None:
    """Refuse a model whose decoder holds no ``nn.Linear`` weight (GPT-2's layers are ``Conv1D``): torchao would
    quantize nothing, and the checkpoint would be saved in float while the record said int8/int4."""
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and n not in ("lm_head", "embed_out") and not n.endswith(".lm_head")]
    if not linears:
        kind = getattr(model.config, "model_type", type(model).__name__)
        raise DepthpruneError(f"--quantize works on nn.Linear weights, and this {kind} model's decoder has none "
                              "(its layers use Conv1D or fused modules); nothing would be quantized: drop --quantize "
                              "or export a GGUF with --gguf-type q8_0")


def quantize_model(model, method: str, *, group_size: int = 32, dtype: str | None = None):
    """A weight-only quantized copy of ``model`` (int8 or int4), savable with ``save_pretrained``.

    The input model is not modified. The result is on the CPU; its unquantized tensors (embeddings, norms, biases)
    are in ``dtype`` (a name such as ``"bfloat16"``; None: the input's float dtype).
    """
    from transformers import AutoModelForCausalLM, TorchAoConfig

    check_method(method, group_size)
    check_quantizable(model)
    _check_shapes(model, method, group_size)
    if getattr(model.config, "quantization_config", None) is not None:
        raise DepthpruneError("the model is already quantized; quantize a float model")
    dtype = getattr(torch, dtype) if dtype is not None else next(model.parameters()).dtype
    config = TorchAoConfig(torchao_config(method, group_size))
    with tempfile.TemporaryDirectory(prefix="depthprune-quant-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        quantized = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=config, dtype=dtype)
    log.info("quantized to %s with torchao (%s)", method, type(config.quant_type).__name__)
    return quantized.eval()
