"""A checkpoint that would run code when unpickled is refused, and the code never runs."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from amodal.errors import CheckpointError
from amodal.models.weights import load_weights


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_code_execution_payload_in_a_pth_is_refused(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if how == "pickle":
        path.write_bytes(pickle.dumps({"weight": _Payload(str(marker))}))
    else:
        torch.save({"weight": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_weights(path)
    assert not marker.exists(), "the payload ran"
