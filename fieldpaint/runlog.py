"""Per-epoch metrics of a run: `metrics.csv` and `metrics.jsonl` in the run folder, TensorBoard if installed.

Rows are appended and flushed as they come, so an interrupted run keeps every finished epoch.
On resume, rows of epochs after the checkpoint are dropped so the files match the weights.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

COLUMNS = ("epoch", "step", "epoch_loss", "train_loss", "test_loss", "lr", "ema_decay",
           "best_test_loss", "best_epoch", "epochs_since_best", "overfitting", "seconds", "samples_per_s")


class MetricsLog:
    def __init__(self, run_dir: Path, *, resume_after_epoch: int | None = None, tensorboard: bool = True):
        self.csv_path = run_dir / "metrics.csv"
        self.jsonl_path = run_dir / "metrics.jsonl"
        rows = read_metrics(run_dir) if resume_after_epoch is not None else []
        rows = [r for r in rows if resume_after_epoch is not None and r["epoch"] <= resume_after_epoch]
        with open(self.csv_path, "w", newline="") as f:
            csv.DictWriter(f, COLUMNS).writeheader()
        self.jsonl_path.write_text("")
        self.writer = _tensorboard_writer(run_dir) if tensorboard else None
        for row in rows:
            self._write(row)

    def log(self, row: dict) -> None:
        self._write(row)
        if self.writer is not None:
            for key in ("epoch_loss", "train_loss", "test_loss", "lr", "ema_decay"):
                self.writer.add_scalar(key, row[key], row["epoch"])
            self.writer.flush()

    def _write(self, row: dict) -> None:
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow({k: row.get(k, "") for k in COLUMNS})
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
