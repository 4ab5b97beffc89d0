"""Figures of the pipeline report: alpha evolution, training curves (matplotlib, Agg)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nasdeploy.utils.files import write_bytes_atomic
from nasdeploy.utils.runlog import JsonlLog


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a JSON-lines run log ([] when missing; torn lines skipped)."""
    return JsonlLog(path).read()


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower(), dpi=130)
    return write_bytes_atomic(path, buf.getvalue())


def plot_alpha_evolution(history: Sequence[dict[str, Any]], primitives: Sequence[str], path: Path,
                         cells: Sequence[str] = ("alphas_normal", "alphas_reduce")) -> Path | None:
    """Mean softmaxed weight of each op over all edges, per epoch, one panel per cell type."""
    if not history:
        return None
    fig, axes = _figure(5.0 * len(cells), 3.6, 1, len(cells))
    epochs = [rec.get("epoch", i) for i, rec in enumerate(history)]
    for ax, cell in zip(axes[0], cells):
        weights = np.array([rec[cell] for rec in history], dtype=float)  # epochs x edges x ops
        for k, name in enumerate(primitives):
            ax.plot(epochs, weights[:, :, k].mean(axis=1), marker="o", ms=3, label=name)
        ax.set_title(f"{cell.replace('alphas_', '')} cell: mean softmax(alpha) per op")
        ax.set_xlabel("epoch")
        ax.set_ylabel("weight")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def plot_final_alphas(weights: dict[str, Any], primitives: Sequence[str], path: Path,
                      cells: Sequence[str] = ("alphas_normal", "alphas_reduce")) -> Path | None:
    """Heatmaps of the final softmaxed alphas (edges x ops) of each cell type."""
    cells = [c for c in cells if c in weights]
    if not cells:
        return None
    fig, axes = _figure(5.0 * len(cells), 4.8, 1, len(cells))
    for ax, cell in zip(axes[0], cells):
        w = np.array(weights[cell], dtype=float)
        im = ax.imshow(w, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(primitives)), primitives, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("edge")
        ax.set_title(f"final {cell.replace('alphas_', '')} alphas")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_curves(series: dict[str, Sequence[dict[str, Any]]], path: Path) -> Path | None:
    """Loss and metric (accuracy, mIoU, perplexity) curves per epoch for each named log (e.g. search, train)."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, axes = _figure(10.0, 3.6, 1, 2)
    ax_loss, ax_acc = axes[0]
    for name, records in series.items():
        epochs = [r.get("epoch", i) for i, r in enumerate(records)]
        for key in sorted({k for r in records for k in r}):
            values = [r.get(key) for r in records]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                continue
            if "loss" in key:
                ax_loss.plot(epochs, values, marker="o", ms=3, label=f"{name}: {key}")
            elif any(tag in key.lower() for tag in ("acc", "top1", "miou", "ppl")):
                ax_acc.plot(epochs, values, marker="o", ms=3, label=f"{name}: {key}")
    for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy / mIoU / perplexity")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_network_path(probabilities: np.ndarray, path: Sequence[int], out: Path,
                      strides: Sequence[int] = (4, 8, 16, 32)) -> Path | None:
    """Auto-DeepLab's network level: every transition drawn by its beta probability, the decoded path in red."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] != len(path):
        return None
    layers, levels, _ = p.shape
    fig, axes = _figure(max(4.0, 0.6 * layers + 1.5), 3.2)
    ax = axes[0][0]
    for l in range(layers):
        for j in range(levels):
            for d in range(3):
                if p[l, j, d] > 0:
                    ax.plot([l, l + 1], [j, j + d - 1], color="#555555", lw=0.3 + 3.0 * p[l, j, d],
                            alpha=0.25 + 0.6 * p[l, j, d], zorder=1)
    ax.plot(range(layers + 1), [0, *path], color="#d62728", lw=2.2, marker="o", ms=4, zorder=2, label="decoded path")
    ax.set_yticks(range(levels), [str(s) for s in strides[:levels]])
    ax.set_ylim(levels - 0.5, -0.5)
    ax.set_xticks(range(layers + 1), ["stem"] + [str(l + 1) for l in range(layers)])
    ax.set_xlabel("layer")
    ax.set_ylabel("output stride")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("network level: beta probabilities (line width)\nand the Viterbi path", fontsize=9)
    return _save(fig, out)
