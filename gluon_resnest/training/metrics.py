"""Per-epoch metrics as JSON lines, and a PNG of the training curves."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (an unfinished last line is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def truncate_metrics(path: str | os.PathLike, before_epoch: int) -> None:
    """Keep only the records of epochs < ``before_epoch`` (used when resuming)."""
    kept = [r for r in read_metrics(path) if r['epoch'] < before_epoch]
    write_lines(path, kept)


def append_metrics(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record and flush it to disk."""
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')
        f.flush()
        os.fsync(f.fileno())


def write_lines(path: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
    os.replace(tmp, path)


def plot_curves(records: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Training loss, validation top-1/top-5 and learning rate against the epoch."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    epochs = [r['epoch'] + 1 for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r['train_loss'] for r in records], marker='.')
    axes[0].set_title('training loss')
    val = [(r['epoch'] + 1, r.get('val_top1'), r.get('val_top5')) for r in records
           if r.get('val_top1') is not None]
    if val:
        axes[1].plot([v[0] for v in val], [100 * v[1] for v in val], marker='.', label='top-1')
        axes[1].plot([v[0] for v in val], [100 * v[2] for v in val], marker='.', label='top-5')
        axes[1].legend()
    axes[1].set_title('validation accuracy (%)')
    axes[2].plot(epochs, [r['lr'] for r in records], marker='.')
    axes[2].set_title('learning rate (end of epoch)')
    for ax in axes:
        ax.set_xlabel('epoch')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = f'{path}.tmp.png'
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
