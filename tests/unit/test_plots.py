"""The run folder's plots carry the category names; the Prefect report carries
the plots inside, as PNG data URIs."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np

from tasks.release.plots import (
    confusion_figure,
    projection_figure,
    save_figure,
)
from tasks.release.report import folder_link, inline_images

NAMES = {0: "billing", 1: "delivery problems", 2: "thanks"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_confusion_matrix_is_labelled_by_category_and_has_a_colour_bar() -> None:
    matrix = np.array([[5, 1, 0], [0, 7, 2], [1, 0, 9]])
    figure = confusion_figure(matrix, [0, 1, 2], NAMES)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(NAMES.values())
    assert [t.get_text() for t in ax.get_yticklabels()] == list(NAMES.values())
    assert len(figure.axes) == 2  # the matrix and its colour bar
    assert ax.images and ax.images[0].colorbar is not None
    assert "predicted category" in ax.get_xlabel()


def test_a_category_without_a_name_is_shown_by_its_cluster_id() -> None:
    figure = confusion_figure(np.eye(2, dtype=int), [0, 7], NAMES)
    labels = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert labels == ["billing", "cluster 7"]


def test_the_map_legend_names_the_categories() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 2, 2, 2])
    figure = projection_figure(rng.normal(size=(6, 2)), labels, NAMES)
    legend = figure.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "billing (2)",
        "delivery problems (1)",
        "thanks (3)",
    ]


def test_the_report_carries_its_plots_as_png_data_uris(tmp_path: Path) -> None:
    save_figure(
        confusion_figure(np.eye(3, dtype=int), [0, 1, 2], NAMES), tmp_path / "cm.png"
    )
    markdown = inline_images(
        "# r\n\n![cm](cm.png)\n![gone](gone.png)\n", tmp_path, ["cm.png", "gone.png"]
    )
    [data] = re.findall(r"\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert base64.b64decode(data).startswith(PNG_SIGNATURE)
    assert "](gone.png)" in markdown  # a missing file keeps its link


def test_the_run_folder_link_is_a_uri() -> None:
    assert folder_link("s3://bucket/runs/r1") == "s3://bucket/runs/r1"
    assert folder_link("/data/runs/r1") == "file:///data/runs/r1"
