import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEPTHPRUNE_DATA_DIR", REPO.parent / "shared" / "data"))
# The full local benchmark copies when present (CI has them), else the few items per task shipped in
# tests/fixtures/data (same files, same formats; see tests/fixtures/README.md), so nothing skips on a fresh clone.
FIXTURE_DATA = REPO / "tests" / "fixtures" / "data"
FULL_DATA = (SHARED_DATA / "piqa").is_dir()
TASK_DATA = SHARED_DATA if FULL_DATA else FIXTURE_DATA


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and a busy machine makes multi-thread barriers crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
