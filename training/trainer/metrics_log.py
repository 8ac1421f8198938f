"""``out_dir/metrics.jsonl``: one JSON object per line, each with a ``step``.

Training records: ``{"step", "loss", "losses": {loss_*: mean over the window}, "lr", "samples_per_s",
"grad_norm" (when clipping), "world_size"}``; evaluation records: ``{"step", "eval": {...}, "best_score",
"best_step"}``.  On resume, records past the resumed step (written after the checkpoint) are dropped first.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics file (a torn last line from a crash is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLog:
    """Appends records to a JSONL file, flushed per record."""

    def __init__(self, path: Path, *, start_step: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if start_step == 0:
            self.path.write_text("")
        elif self.path.exists():
            kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= start_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
