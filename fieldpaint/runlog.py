"""Per-epoch metrics of a run: `metrics.csv` and `metrics.jsonl` in the run folder, TensorBoard if installed.

Rows are appended and flushed as they come, so an interrupted run keeps every finished epoch.
A kill during an append can leave a torn final line in `metrics.jsonl`: `read_metrics` drops it.
On resume, rows of epochs after the checkpoint are dropped so the files match the weights; the
kept history is rewritten atomically (fieldpaint.atomic), so a second kill cannot lose it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from fieldpaint.atomic import write_text_atomic
from fieldpaint.errors import FieldpaintError

COLUMNS = ("epoch", "step", "epoch_loss", "train_loss", "test_loss", "lr", "ema_decay",
           "best_test_loss", "best_epoch", "epochs_since_best", "overfitting", "seconds", "samples_per_s")


def _csv_text(rows: list[dict], header: bool = True) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
    return out.getvalue()


class MetricsLog:
    def __init__(self, run_dir: Path, *, resume_after_epoch: int | None = None, tensorboard: bool = True):
        self.csv_path = run_dir / "metrics.csv"
        self.jsonl_path = run_dir / "metrics.jsonl"
        rows = []
        if resume_after_epoch is not None:
            rows = [r for r in read_metrics(run_dir) if r["epoch"] <= resume_after_epoch]
        write_text_atomic(self.csv_path, _csv_text(rows), overwrite=True)
        write_text_atomic(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in rows), overwrite=True)
        self.writer = _tensorboard_writer(run_dir) if tensorboard else None

    def log(self, row: dict) -> None:
        with open(self.csv_path, "a", newline="") as f:
            f.write(_csv_text([row], header=False))
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key in ("epoch_loss", "train_loss", "test_loss", "lr", "ema_decay"):
                self.writer.add_scalar(key, row[key], row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of `metrics.jsonl`; a torn final line (a kill during its append) is dropped, any
    other line that is not JSON is an error naming the file and line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for k, (n, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if k == len(lines) - 1:
                break  # torn by a kill; that epoch has no checkpoint either
            raise FieldpaintError(f"{path} line {n} is not a JSON row; the metrics file is damaged") from None
    return rows


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
