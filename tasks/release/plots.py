"""The run folder's plots, labelled with the category names.

The stages save the numbers (the evaluation confusion matrix, the 2-D
projection of sampled tweets); publishing draws them here once the categories
have their names, so renaming a category never retrains anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from tasks.infra.lazy import np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_DPI = 80  # small enough to travel inside the Prefect report as a data URI


def _pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def category_label(cluster_id: int, names: Mapping[int, str]) -> str:
    """A category's name, or its cluster id when it has none."""
    return names.get(int(cluster_id)) or f"cluster {cluster_id}"


def confusion_figure(
    matrix: np.ndarray, classes: list[int], names: Mapping[int, str]
) -> Figure:
    """The evaluation confusion matrix, axes labelled by category, with a colour bar."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    size = max(6.0, 0.7 * len(classes) + 4.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    display = ConfusionMatrixDisplay(
        np.asarray(matrix), display_labels=[category_label(c, names) for c in classes]
    )
    display.plot(ax=ax, cmap="Blues", colorbar=True, xticks_rotation=35)
    plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    ax.set_xlabel("predicted category")
    ax.set_ylabel("pseudo-label (KMeans category)")
    ax.set_title("Evaluation split: classifier vs pseudo-labels")
    fig.tight_layout()
    return fig


def projection_figure(
    points: np.ndarray, labels: np.ndarray, names: Mapping[int, str]
) -> Figure:
    """Sampled tweets in 2-D (PCA of their vectors), coloured and named by category."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    present = np.unique(labels)
    palette = plt.get_cmap("tab10" if len(present) <= 10 else "tab20")
    for i, cluster_id in enumerate(present):
        members = labels == cluster_id
        ax.scatter(
            points[members, 0],
            points[members, 1],
            s=4,
            color=palette(i % palette.N),
            label=f"{category_label(cluster_id, names)} ({int(members.sum())})",
        )
    ax.legend(
        title="category (tweets shown)",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        markerscale=3,
        frameon=False,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("Tweets by category (PCA of document vectors, a sample)")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``PLOT_DPI`` and release it."""
    fig.savefig(path, dpi=PLOT_DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return path
