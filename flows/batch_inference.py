"""The batch-inference flow: classify new tweets with the champion (or a chosen) model.

Run locally: ``python -m flows.batch_inference --source URI --output URI
[--model champion|VERSION|PATH] [--text-column C] [--id-column C] [--encoding E]
[--artifacts-dir DIR] [--log-level LEVEL]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.retrain import LogLevel, apply_log_level, run_command
from tasks.infra import storage
from tasks.infra.caching import call_with_retries, uncached_task
from tasks.infra.errors import InputError
from tasks.infra.store import ArtifactStore
from tasks.release.registry import (
    LoadedModel,
    check_model_spec,
    load_registry_config,
    resolve_model,
)
from tasks.serving.inference import classify_source
from tasks.stages.ingestion import IngestionConfig, check_source
from tasks.stages.preparation import PreparationConfig

PROMOTION_CONFIG = "config/promotion.yaml"


class OutputError(InputError):
    """The output URI cannot take the predictions."""


def check_output(output: str) -> None:
    """The output must be a .parquet file URI whose parent can be written."""
    if not output.endswith(".parquet"):
        raise OutputError(f"output {output!r} must name a .parquet file")
    if not storage.is_remote(output):
        parent = storage.local_path(output).parent
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"output folder {parent} is a file")


@uncached_task("load-model")
def load_model(spec: str, artifacts_dir: str, promotion_config: str) -> LoadedModel:
    """Resolve and verify the model (champion alias, registry version or folder)."""
    logger = get_run_logger()
    started = time.perf_counter()
    registry_root = ArtifactStore(artifacts_dir).root
    loaded = resolve_model(spec, registry_root, load_registry_config(promotion_config))
    logger.info(
        "load-model: %s -> %s (manifest verified, %.2fs) from %s",
        spec,
        loaded.version,
        time.perf_counter() - started,
        loaded.path,
    )
    return loaded


@uncached_task("classify")
def classify(
    source: str,
    output: str,
    loaded: LoadedModel,
    ingestion: IngestionConfig,
    preparation: PreparationConfig,
) -> dict[str, Any]:
    """Read the source, classify every usable tweet, write predictions (Parquet)."""
    logger = get_run_logger()
    started = time.perf_counter()
    summary = classify_source(
        source, output, loaded.model, loaded.version, ingestion, preparation
    )
    counts = summary["counts"]
    if counts["quarantined"]:
        logger.warning(
            "classify: %d rows quarantined (%s) -> %s",
            counts["quarantined"],
            summary["quarantine_reasons"],
            summary["written"]["quarantine"],
        )
    seconds = time.perf_counter() - started
    logger.info(
        "classify: %d rows read from %s; %d predicted, %d quarantined, "
        "%d exact repeats; %d with no known word; -> %s (%.2fs, %.0f tweets/s)",
        counts["rows_read"],
        source,
        counts["predicted"],
        counts["quarantined"],
        counts["duplicates_removed"],
        counts["no_known_words"],
        output,
        seconds,
        counts["rows_read"] / max(seconds, 1e-9),
    )
    return {**summary, "seconds": round(seconds, 3)}


@flow(name="batch-inference", log_prints=False)
def batch_inference(
    source: str,
    output: str,
    model: str = "champion",
    artifacts_dir: str = "artifacts",
    log_level: LogLevel = "INFO",
    promotion_config: str = PROMOTION_CONFIG,
    ingestion: IngestionConfig = IngestionConfig(),  # noqa: B008 - immutable in use
    preparation: PreparationConfig = PreparationConfig(),  # noqa: B008
) -> dict[str, Any]:
    """Classify new tweets and write predictions as Parquet.

    Args:
        source: New tweets: a local path / file:// URI to a .csv, .jsonl or .parquet
            file or a directory of them, or an s3:// object or prefix.
        output: Parquet file URI (local or s3://) for the predictions.
        model: 'champion' (the registry alias), a registered version number, or the
            path of a model bundle folder (runs/<id>/model).
        artifacts_dir: Artifact store root whose registry holds the models.
        log_level: Verbosity of the run's logs in the Prefect dashboard.
        promotion_config: Registry settings (YAML): MLflow URI and model name.
        ingestion: How the source is read (same options as retrain).
        preparation: Text cleaning (same code and settings as retrain).
    """
    apply_log_level(log_level)
    check_output(output)
    call_with_retries(check_source, source, ingestion)
    loaded = load_model(model, artifacts_dir, promotion_config)
    summary = classify(source, output, loaded, ingestion, preparation)
    counts = summary["counts"]
    share = counts["no_known_words"] / max(counts["predicted"], 1)
    lines = [
        "# tweetflow batch inference",
        "",
        f"- model: `{loaded.version}`",
        f"- source: `{source}`",
        f"- predictions: `{output}`",
        f"- rows read {counts['rows_read']}: predicted {counts['predicted']}, "
        f"quarantined {counts['quarantined']}, exact repeats "
        f"{counts['duplicates_removed']}",
        f"- tweets with no known word: {counts['no_known_words']} ({share:.2%})",
        "",
        "| category | tweets | share |",
        "|---|---|---|",
        *(
            f"| {row['category']} | {row['tweets']} | {row['share']:.2%} |"
            for row in summary["categories"]
        ),
    ]
    create_markdown_artifact(
        key="batch-inference-summary",
        markdown="\n".join(lines) + "\n",
        description=f"predictions by {loaded.version}",
    )
    create_table_artifact(key="batch-inference-categories", table=summary["categories"])
    return {
        **summary,
        "model_version": loaded.version,
        "output": output,
        "no_known_share": share,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.batch_inference", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--source", required=True, help="tweets to classify (URI)")
    parser.add_argument("--output", required=True, help="predictions .parquet (URI)")
    parser.add_argument(
        "--model", default="champion", help="champion, a version number, or a PATH"
    )
    parser.add_argument("--text-column", default=None)
    parser.add_argument("--id-column", default=None)
    parser.add_argument(
        "--encoding", default="auto", help="CSV/JSONL encoding (default: detect)"
    )
    parser.add_argument(
        "--artifacts-dir", default="artifacts", help="artifact store with the registry"
    )
    parser.add_argument(
        "--promotion-config", default=PROMOTION_CONFIG, help="registry settings"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser.parse_args(argv)


def summary(result: dict[str, Any]) -> str:
    """A short human summary of a finished batch inference."""
    c = result["counts"]
    lines = [
        f"batch inference with {result['model_version']}: {c['rows_read']} rows read, "
        f"{c['predicted']} predicted, {c['quarantined']} quarantined, "
        f"{c['duplicates_removed']} exact repeats; "
        f"{result['no_known_share']:.2%} with no known word",
        *(
            f"  {row['category']}: {row['tweets']} ({row['share']:.1%})"
            for row in result["categories"]
        ),
        f"  predictions: {result['output']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: classify, print a summary."""
    args = parse_args(argv)
    ingestion = IngestionConfig(
        text_column=args.text_column, id_column=args.id_column, encoding=args.encoding
    )

    def preflight() -> None:
        check_output(args.output)
        call_with_retries(check_source, args.source, ingestion)
        check_model_spec(
            args.model,
            ArtifactStore(args.artifacts_dir).root,
            load_registry_config(args.promotion_config),
        )

    def run(_: None) -> dict[str, Any]:
        return batch_inference(
            source=args.source,
            output=args.output,
            model=args.model,
            artifacts_dir=args.artifacts_dir,
            log_level=args.log_level,
            promotion_config=args.promotion_config,
            ingestion=ingestion,
        )

    return run_command(preflight, run, summary)


if __name__ == "__main__":
    sys.exit(main())
