"""Suite-wide setup.  Without a GPU, Triton kernels run in the interpreter: TRITON_INTERPRET must be set
before any kernel module is imported, so it is set here, at collection start."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# the repository root on sys.path makes the shared test helpers importable as ``tests.support.*``
_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

GPU = torch.cuda.is_available()
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_torch_thread():
    """Micro models are dominated by per-op overhead; one thread avoids oversubscribing a shared 2-core runner.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
