"""The run report: markdown for the run folder and the Prefect artifacts.

The Prefect UI cannot reach the run folder, so the report it shows carries its
plot of the criterion per k inside (a data URI).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.infra.caching import uncached_task
from tasks.stages.clustering import CRITERION, K_SELECTION_PLOT, PROJECTION_PLOT
from tasks.stages.training import CONFUSION_PLOT

if TYPE_CHECKING:
    from tasks.release.promotion import RegistryOutcome
    from tasks.release.publishing import PublishedRun, RunRecord, UnchangedRun


def markdown_report(
    record: RunRecord, clusters: list[dict], mlflow_note: str = ""
) -> str:
    """The run's report in markdown (also published as a Prefect artifact)."""
    c, m = record.counts, record.metrics
    lines = [
        f"# tweetflow retrain {record.run_id}",
        "",
        f"- rows read: {c['rows_read']}; accepted: {c['accepted']}; "
        f"quarantined: {c['quarantined']}; exact duplicates removed: "
        f"{c['duplicates_removed']}",
    ]
    if c.get("replies_read"):
        lines.append(
            f"- brand replies read: {c['replies_read']}; linked to the customer "
            f"tweets they answer: {c['replies_linked']} (with accepted tweets "
            f"{c['replies_with_accepted']}, with quarantined ones "
            f"{c['replies_with_quarantined']}); not linked: {c['replies_unlinked']}"
            f"; tweets clustered with their replies: "
            f"{c['tweets_clustered_with_replies']}"
        )
    lines += [
        f"- categories discovered: k = {record.clusters['k']} "
        f"({'chosen by the ' + CRITERION if record.clusters['k_selection'] else 'given'})",
        f"- data snapshot: `{record.refs['raw'].sha256[:16]}`; code version: "
        f"`{record.code_version[:16]}`",
        "",
        "## Metrics",
        "",
        "The classifier's scores measure agreement with the KMeans pseudo-labels "
        "(how well it reproduces the partition), not correctness against true "
        "categories; silhouette and stability describe the clustering itself.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(m.items())]
    lines += ["", cluster_report(clusters, record.clusters, level=2)]
    lines += ["", "## Plots", "", f"![confusion matrix]({CONFUSION_PLOT})"]
    if mlflow_note:
        lines += ["", mlflow_note]
    return "\n".join(lines) + "\n"


def cluster_report(clusters: list[dict], description: dict, level: int = 1) -> str:
    """Markdown cluster report: sizes, top words, example tweets, 2-D projection."""
    h = "#" * level
    scores = description.get("k_selection") or {}
    lines = [
        f"{h} Categories",
        "",
        f"k = {description['k']}; silhouette {description['silhouette']:.3f}; "
        f"stability (ARI between two runs on other samples and seeds) "
        f"{description['stability_ari']:.3f}.",
    ]
    if scores:
        lines += [
            "",
            f"{h}# Choosing k",
            "",
            f"{CRITERION} per k (how much more it costs to merge k categories into "
            "k - 1 than to reach k from k + 1; the largest jump is chosen, or the "
            "previous run's k when it is as good): "
            + ", ".join(
                (
                    f"**{k}: {float(v):.2f}**"
                    if int(k) == description["k"]
                    else f"{k}: {float(v):.2f}"
                )
                for k, v in scores.items()
            )
            + ".",
            "",
            f"![criterion per k]({K_SELECTION_PLOT})",
        ]
    lines += [
        "",
        "| id | category | name from | tweets | share | top words |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['cluster_id']} | {r['category']} | {r['name_from']} | {r['tweets']} | "
        f"{r['share']:.1%} | {r['top_terms']} |"
        for r in clusters
    ]
    lines += ["", f"{h}# Example tweets (closest to each centre)", ""]
    lines += [f"- **{r['category']}**: {r['examples']}" for r in clusters]
    lines += ["", f"![clusters]({PROJECTION_PLOT})"]
    return "\n".join(lines) + "\n"


def inline_images(markdown: str, folder: Path, names: list[str]) -> str:
    """Embed the named images of ``folder`` in ``markdown`` as data URIs.

    The Prefect UI cannot reach the run folder, so the report it shows carries
    its plots inside.
    """
    for name in names:
        path = folder / name
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            markdown = markdown.replace(
                f"]({name})", f"](data:image/png;base64,{data})"
            )
    return markdown


@uncached_task("report")
def report(published: PublishedRun, outcome: RegistryOutcome) -> None:
    """Publish the run's Prefect artifacts: report, metrics, clusters, gate."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    markdown = inline_images(
        published.report, Path(published.local_run_dir), [K_SELECTION_PLOT]
    )
    create_markdown_artifact(
        key="retrain-report",
        markdown=markdown + "\n" + outcome.markdown(),
        description=f"tweetflow retrain {published.run_id}: "
        f"{outcome.tracked.model_version} {outcome.promotion.status}",
    )
    create_table_artifact(
        key="retrain-metrics",
        table=[
            {"metric": k, "value": round(v, 4)}
            for k, v in sorted(published.metrics.items())
        ],
    )
    create_table_artifact(key="retrain-clusters", table=published.table)
    create_table_artifact(
        key="retrain-gate",
        table=outcome.decision.as_table(),
        description=outcome.decision.reason,
    )


@uncached_task("report")
def report_unchanged(kept: UnchangedRun) -> None:
    """Say in the log and the Prefect UI that the retrain changed nothing."""
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact

    line = (
        f"nothing changed since run {kept.run_id} (same code, settings, data and "
        f"outputs of every stage): no new run folder and no new model version; "
        f"{kept.model_version} stays {kept.promotion} ({kept.promotion_reason})"
    )
    get_run_logger().info("report: %s", line)
    create_markdown_artifact(
        key="retrain-report",
        markdown=f"# tweetflow retrain: unchanged\n\n{line[0].upper() + line[1:]}.\n\n"
        f"The run's report: `{kept.run_location}/report.md`.\n",
        description=f"unchanged since {kept.run_id}: {kept.model_version}",
    )
