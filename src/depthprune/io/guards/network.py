"""Fail fast, with one sentence, when the Hugging Face Hub is needed but cannot be reached.

Without this, huggingface_hub retries for a long time and prints a screen of warnings.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from depthprune.errors import DepthpruneError

TIMEOUT_S = 5.0
_TRUE = {"1", "on", "yes", "true"}


def hub_offline() -> bool:
    """True when the user told huggingface_hub / datasets to stay offline."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def require_hub(what: str, instead: str = "") -> None:
    """Raise one sentence when ``what`` (e.g. "dataset 'hf:pg19'") needs the Hub and it cannot be reached.

    When offline mode is on, the libraries themselves answer from the local cache (quickly). ``instead`` names the
    way to do without the Hub, where there is one (", or give ...").
    """
    if hub_offline():
        return
    host, port = hub_endpoint()
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DepthpruneError(
            f"{what} needs the Hugging Face Hub, but {host}:{port} cannot be reached ({reason}); check the network"
            f"{instead}, or set HF_HUB_OFFLINE=1 to use only what is already in the local cache"
        ) from None
