"""One way to get a :class:`~depthprune.io.models.LoadedModel` from whatever a caller holds."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from depthprune.errors import DepthpruneError
from depthprune.io.guards.model_files import check_causal_decoder
from depthprune.io.models import LoadedModel, load_model


def as_loaded(model, tokenizer=None, *, dtype: str = "float32", device: str = "cpu",
              trust_remote_code: bool = False) -> LoadedModel:
    """A spec string (demo alias, ``.gguf`` file, local dir, Hub id), a LoadedModel, or an in-memory transformers
    model (with its ``tokenizer``), as a LoadedModel. ``trust_remote_code`` is passed to every transformers load."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, Path)):
        return load_model(str(model), dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if isinstance(model, nn.Module):
        check_causal_decoder(model.config, f"model {type(model).__name__}")
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        return LoadedModel(model, tokenizer, name, {"kind": "in-memory",
                                                     "model_type": getattr(model.config, "model_type", None)})
    raise DepthpruneError(f"cannot use a {type(model).__name__} as a model: give a spec string or a transformers model")


__all__ = ["as_loaded"]
