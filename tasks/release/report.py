"""The run report: markdown for the run folder and the Prefect artifacts.

The Prefect UI cannot reach the run folder, so the report it shows carries its
plots inside (data URIs), and link artifacts point at the MLflow run, the model
version and the run folder.
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

TOP_WORDS = 5  # per category in the report's table (the table artifact has more)
REPORT_PLOTS = [K_SELECTION_PLOT, PROJECTION_PLOT, CONFUSION_PLOT]


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
    lines += [
        "",
        "## Classifier vs pseudo-labels",
        "",
        "The evaluation split's confusion matrix: rows are the KMeans categories, "
        "columns what the classifier predicts.",
        "",
        f"![confusion matrix]({CONFUSION_PLOT})",
    ]
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
        f"{r['share']:.1%} | {', '.join(r['top_terms'].split(', ')[:TOP_WORDS])} |"
        for r in clusters
    ]
    lines += ["", f"{h}# Example tweets (closest to each centre)", ""]
    lines += [f"- **{r['category']}**: {r['examples']}" for r in clusters]
    lines += [
        "",
        f"{h}# Map",
        "",
        "A sample of tweets on the first two principal axes of their vectors.",
        "",
        f"![clusters]({PROJECTION_PLOT})",
    ]
    return "\n".join(lines) + "\n"


def folder_link(location: str) -> str:
    """The run folder as a URI: ``s3://...`` as it is, a local path as ``file://``."""
    if "://" in location:
        return location
    return Path(location).resolve().as_uri()


def summary_line(published: PublishedRun, outcome: RegistryOutcome) -> str:
    """The report's first line in the Prefect UI: the model, its fate, the links."""
    t, p = outcome.tracked, outcome.promotion
    return (
        f"**[{t.model_version}]({t.version_url})**: {p.status}"
        f"{' (forced)' if p.forced else ''}; [MLflow run]({t.run_url}); run folder "
        f"`{published.run_location}`"
    )


def link_artifacts(
    run_id: str,
    run_location: str,
    mlflow_run: tuple[str, str],
    model_version: tuple[str, str],
) -> None:
    """Link artifacts to the MLflow run, the model version and the run folder.

    ``mlflow_run`` and ``model_version`` are (text, web address) pairs; a pair
    without an address is left out.
    """
    from prefect.artifacts import create_link_artifact

    links = [
        (
            "retrain-mlflow-run",
            *mlflow_run,
            "the MLflow run (metrics, parameters, files)",
        ),
        ("retrain-model-version", *model_version, "the registered model version"),
        (
            "retrain-run-folder",
            run_location,
            folder_link(run_location),
            "the run folder",
        ),
    ]
    for key, text, url, what in links:
        if url:
            create_link_artifact(
                key=key,
                link=url,
                link_text=text,
                description=f"tweetflow retrain {run_id}: {what}",
            )


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

    tracked = outcome.tracked
    markdown = inline_images(
        published.report, Path(published.local_run_dir), REPORT_PLOTS
    )
    title, body = markdown.split("\n", 1)
    create_markdown_artifact(
        key="retrain-report",
        markdown=f"{title}\n\n{summary_line(published, outcome)}\n{body}\n"
        + outcome.markdown(),
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
    link_artifacts(
        published.run_id,
        published.run_location,
        (f"MLflow run {tracked.mlflow_run_id}", tracked.run_url),
        (tracked.model_version, tracked.version_url),
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
        f"The run's report: `{kept.run_location}/report.md`."
        + (
            f" Model version [{kept.model_version}]({kept.model_version_url}); "
            f"[MLflow run]({kept.mlflow_run_url})."
            if kept.model_version_url and kept.mlflow_run_url
            else ""
        )
        + "\n",
        description=f"unchanged since {kept.run_id}: {kept.model_version}",
    )
    link_artifacts(
        kept.run_id,
        kept.run_location,
        (f"MLflow run {kept.mlflow_run_id}", kept.mlflow_run_url),
        (kept.model_version, kept.model_version_url),
    )
