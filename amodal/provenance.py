"""Where a result came from: the source tree's commit, recorded in weights files and benchmark results."""
from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str:
    """The repository's HEAD commit (``unknown`` outside a checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
