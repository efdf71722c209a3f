"""Writing a Hugging Face checkpoint (safetensors weights, config, tokenizer) into a staging folder.

The weights are saved in the requested dtype while the in-memory model keeps its own; tied tensors stay one
shared tensor, so transformers still sees them as tied and writes them once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from depthprune.errors import DepthpruneError

SAVE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_save_dtype(save_dtype: str, source_dtype: str | None, model) -> str:
    """``auto``: the dtype the weights came in (``source_dtype``), else the model's own."""
    if save_dtype not in SAVE_DTYPES:
        raise DepthpruneError(f"unknown --save-dtype '{save_dtype}': use auto, float32, bfloat16 or float16")
    if save_dtype != "auto":
        return save_dtype
    if source_dtype in SAVE_DTYPES[1:]:
        return source_dtype
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def _cast_state_dict(model, dtype) -> dict:
    cast: dict[int, object] = {}
    state = {}
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or tensor.dtype == dtype:
            state[name] = tensor
            continue
        key = tensor.data_ptr()
        if key not in cast:
            cast[key] = tensor.to(dtype)
        state[name] = cast[key]
    return state


def save_checkpoint(model, tokenizer, folder: Path, dtype_name: str, *, quantized: bool = False) -> None:
    """``save_pretrained`` of model (in ``dtype_name``; quantized weights as they are) and tokenizer into ``folder``."""
    dtype = getattr(torch, dtype_name)
    if quantized or all(p.dtype == dtype for p in model.parameters()):
        model.save_pretrained(folder, safe_serialization=True)
    else:
        model.save_pretrained(folder, safe_serialization=True, state_dict=_cast_state_dict(model, dtype))
        # save_pretrained writes the dtype of the in-memory parameters into config.json: name the saved one
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        for key in ("dtype", "torch_dtype"):
            if key in config or key == "dtype":
                config[key] = dtype_name
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


__all__ = ["SAVE_DTYPES", "resolve_save_dtype", "save_checkpoint"]
