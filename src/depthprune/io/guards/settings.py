"""Numeric settings and devices checked before any work: one sentence instead of a deep traceback."""

from __future__ import annotations

import logging

import torch

from depthprune.errors import DepthpruneError

log = logging.getLogger(__name__)

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit seeds; numpy-based code wants them non-negative
LEARNED_POSITION_NAMES = ("wpe", "embed_positions", "position_embeddings")


def check_batch_size(batch_size: int, flag: str = "--batch-size") -> int:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DepthpruneError(f"{flag} must be at least 1, got {batch_size}")
    return batch_size


def check_seed(seed: int) -> int:
    if not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise DepthpruneError(f"--seed must be a whole number between 0 and {SEED_MAX}, got {seed}")
    return seed


def check_device(device: str) -> None:
    """Refuse devices that this torch build or machine lacks (torch itself accepts the names)."""
    if device in ("cpu", "auto"):
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise DepthpruneError(f"unknown device '{device}': use cpu, cuda, cuda:N, mps, xpu or auto") from None
    kind = parsed.type
    if kind not in ("cuda", "mps", "xpu"):
        raise DepthpruneError(f"unknown device '{device}': use cpu, cuda, cuda:N, mps, xpu or auto")
    backend = {"cuda": getattr(torch, "cuda", None), "xpu": getattr(torch, "xpu", None),
               "mps": getattr(getattr(torch, "backends", None), "mps", None)}[kind]
    available = bool(backend is not None and backend.is_available())
    if not available:
        raise DepthpruneError(f"device '{device}' was asked for but this machine/torch build has no {kind.upper()} "
                              "device; use --device cpu")
    if parsed.index is not None and kind in ("cuda", "xpu") and parsed.index >= backend.device_count():
        raise DepthpruneError(f"device '{device}' does not exist: this machine has {backend.device_count()} "
                              f"{kind.upper()} device(s), numbered from 0")


def position_limit(config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def has_learned_positions(model) -> bool:
    """True when the model adds a learned absolute position embedding (GPT-2, OPT, ...): no extrapolation."""
    return any(name.rsplit(".", 1)[-1] in LEARNED_POSITION_NAMES and isinstance(module, torch.nn.Embedding)
               for name, module in model.named_modules())


def check_seq_len(model, seq_len: int, flag: str = "--seq-len") -> None:
    """Refuse lengths beyond a learned position table; warn beyond a rotary model's trained length."""
    config = getattr(model, "config", None)
    limit = position_limit(config) if config is not None else None
    if limit is None or seq_len <= limit:
        return
    if has_learned_positions(model):
        raise DepthpruneError(f"{flag} {seq_len} is beyond this model's {limit} learned positions; "
                              f"use {flag} {limit} or less")
    log.warning("%s %d is beyond the %d positions this model was trained on; results may be poor", flag, seq_len, limit)
