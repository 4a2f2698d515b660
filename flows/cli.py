"""The command lines of both flows: arguments (defaults from the parameter
models), a cheap pre-flight, one ``error:`` line for bad input, a summary.

``python -m flows.retrain --help`` and ``python -m flows.batch_inference --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, get_args

from data_contracts import ContractViolation
from flows.local_server import api_for_command_line
from flows.parameters import (
    RETRAIN_DEFAULTS,
    BatchInferenceParameters,
    LogLevel,
    RetrainParameters,
)
from tasks.infra.caching import is_transient
from tasks.infra.errors import InputError
from tasks.stages.clustering import ClusteringConfig
from tasks.stages.ingestion import IngestionConfig, check_source

USER_ERRORS = (InputError, ContractViolation)
LOG_LEVELS = list(get_args(LogLevel))


def apply_log_level(level: str) -> None:
    """Set the verbosity of flow and task run logs for this process."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).setLevel(level)


class QuietInputErrors(logging.Filter):
    """Drop the traceback from log records about input errors (command line only).

    People get one readable line for bad input; a programming error keeps its
    traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Strip ``exc_info`` when the logged exception is an input error."""
        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
            record.exc_info = None
            record.exc_text = None
        return True


def run_command(
    preflight: Callable[[], Any],
    run: Callable[[Any], Any],
    report: Callable[[Any], str],
) -> int:
    """Run a flow from the command line; input errors end as one ``error:`` line.

    ``preflight`` checks the input cheaply (exit 2 when it refuses), ``run``
    takes its result and runs the flow (exit 1 when the flow refuses the
    input), ``report`` turns the flow's result into what is printed.
    Programming errors keep their tracebacks.
    """
    try:
        checked = preflight()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet = QuietInputErrors()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(quiet)
    api_url = api_for_command_line()
    try:
        with prefect_api(api_url):
            result = run(checked)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    if api_url:
        print(f"  runs: {api_url.removesuffix('/api')}/runs")
    return 0


@contextlib.contextmanager
def prefect_api(api_url: str | None) -> Iterator[None]:
    """Run against ``api_url`` (or Prefect's own choice when None); a temporary
    server Prefect starts has its analytics off, so offline it stays quiet."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    updates: dict[Any, Any] = {PREFECT_SERVER_ANALYTICS_ENABLED: False}
    if api_url:
        updates[PREFECT_API_URL] = api_url
    with temporary_settings(updates=updates):
        yield


def check_source_now(source: str, config: IngestionConfig) -> None:
    """The source pre-flight, once: a transient storage error is left to the
    flow, whose pre-flight task retries it (one retry layer)."""
    try:
        check_source(source, config)
    except Exception as exc:
        if not is_transient(exc):
            raise


def _described(text: str, default: Any) -> str:
    return f"{text} (default: {default})" if default not in (None, "") else text


def _ingestion_arguments(parser: argparse.ArgumentParser) -> None:
    fields = IngestionConfig.model_fields
    for flag, name in [
        ("--text-column", "text_column"),
        ("--id-column", "id_column"),
        ("--encoding", "encoding"),
    ]:
        field = fields[name]
        parser.add_argument(
            flag,
            default=field.default,
            help=_described(field.description or "", field.default),
        )


def retrain_parser() -> argparse.ArgumentParser:
    """The retrain command line; every default is the parameter model's."""
    d = RETRAIN_DEFAULTS
    fields = RetrainParameters.model_fields
    parser = argparse.ArgumentParser(
        prog="python -m flows.retrain",
        description="Retrain the tweet classifier from scratch, reusing every "
        "unchanged stage.",
    )

    def arg(flag: str, name: str, **kwargs: Any) -> None:
        default = getattr(d, name)
        parser.add_argument(
            flag,
            default=default,
            help=_described(fields[name].description or "", default),
            **kwargs,
        )

    arg("--source", "source")
    arg("--artifacts-dir", "artifacts_dir")
    arg("--seed", "seed", type=int)
    arg("--category-map", "category_map")
    arg("--promote", "promote", choices=["never", "auto", "force"])
    arg("--promotion-config", "promotion_config")
    arg("--log-level", "log_level", choices=LOG_LEVELS)
    clustering = ClusteringConfig.model_fields["n_clusters"]
    parser.add_argument(
        "--n-clusters",
        default=str(d.clustering.n_clusters),
        help=_described(clustering.description or "", d.clustering.n_clusters),
    )
    _ingestion_arguments(parser)
    return parser


def parse_retrain_args(argv: list[str] | None = None) -> RetrainParameters:
    """Build the retrain parameters from the command line."""
    parser = retrain_parser()
    args = parser.parse_args(argv)
    n_clusters: int | str = args.n_clusters
    if n_clusters != "auto":
        try:
            n_clusters = int(n_clusters)
        except ValueError:
            parser.error(f"--n-clusters must be 'auto' or a number, not {n_clusters!r}")
    return RetrainParameters(
        source=args.source,
        artifacts_dir=args.artifacts_dir,
        seed=args.seed,
        log_level=args.log_level,
        category_map=args.category_map or None,
        promote=args.promote,
        promotion_config=args.promotion_config,
        ingestion=IngestionConfig(
            text_column=args.text_column,
            id_column=args.id_column,
            encoding=args.encoding,
        ),
        clustering=ClusteringConfig(n_clusters=n_clusters),
    )


def retrain_summary(result: Any) -> str:
    """A short human summary of a finished retrain."""
    c, m = result.counts, result.metrics
    lines = [
        (
            f"retrain: nothing changed since run {result.run_id} (same code, settings "
            "and data): nothing new published or registered"
            if getattr(result, "unchanged", False)
            else f"retrain {result.run_id} completed"
        ),
        f"  rows read {c['rows_read']}: accepted {c['accepted']}, quarantined "
        f"{c['quarantined']}, duplicates removed {c['duplicates_removed']}",
        f"  categories k={result.k}: "
        + "; ".join(f"{k}={v}" for k, v in result.categories.items() if int(k) >= 0),
        f"  silhouette {m['silhouette']:.3f}, stability ARI {m['stability_ari']:.3f}, "
        f"evaluation accuracy {m.get('evaluation_accuracy', float('nan')):.3f}, "
        f"macro-F1 {m.get('evaluation_macro_f1', float('nan')):.3f}",
        f"  model {result.model_version}: {result.promotion} "
        f"({result.promotion_reason})",
        f"  outputs: {result.run_dir}",
    ]
    if c.get("replies_read"):
        lines.insert(
            2,
            f"  brand replies read {c['replies_read']}: linked {c['replies_linked']}, "
            f"not linked {c['replies_unlinked']}",
        )
    return "\n".join(lines)


def exit_now(code: int) -> NoReturn:
    """End a command-line run: flush the output, run the exit handlers (Prefect
    drains its log and event queues there), then leave without tearing down
    every imported module one by one (about a second with this stack)."""
    import atexit
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def retrain_main(argv: list[str] | None = None) -> int:
    """Command-line entry point: run the retrain flow locally, print a summary."""
    from tasks.release.config import load_release_config
    from tasks.stages.categories import load_category_map

    def preflight() -> RetrainParameters:
        params = parse_retrain_args(argv)
        load_category_map(params.category_map)
        load_release_config(params.promotion_config)
        check_source_now(params.source, params.ingestion)
        return params

    def run(params: RetrainParameters) -> Any:
        from flows.retrain import retrain

        return retrain(**params.as_flow_kwargs())

    return run_command(preflight, run, retrain_summary)


def batch_parser() -> argparse.ArgumentParser:
    """The batch-inference command line; every default is the parameter model's."""
    fields = BatchInferenceParameters.model_fields
    parser = argparse.ArgumentParser(
        prog="python -m flows.batch_inference",
        description="Classify new tweets with the champion (or a chosen) model and "
        "write predictions as Parquet.",
    )
    options: list[tuple[str, str, dict[str, Any]]] = [
        ("--source", "source", {"required": True}),
        ("--output", "output", {"required": True}),
        ("--model", "model", {}),
        ("--artifacts-dir", "artifacts_dir", {}),
        ("--promotion-config", "promotion_config", {}),
        ("--log-level", "log_level", {"choices": LOG_LEVELS}),
    ]
    for flag, name, extra in options:
        field = fields[name]
        default = None if field.is_required() else field.default
        if not field.is_required():
            extra = {"default": default, **extra}
        parser.add_argument(
            flag, help=_described(field.description or "", default), **extra
        )
    _ingestion_arguments(parser)
    return parser


def parse_batch_args(argv: list[str] | None = None) -> BatchInferenceParameters:
    """Build the batch-inference parameters from the command line."""
    args = batch_parser().parse_args(argv)
    return BatchInferenceParameters(
        source=args.source,
        output=args.output,
        model=args.model,
        artifacts_dir=args.artifacts_dir,
        log_level=args.log_level,
        promotion_config=args.promotion_config,
        ingestion=IngestionConfig(
            text_column=args.text_column,
            id_column=args.id_column,
            encoding=args.encoding,
        ),
    )


def batch_summary(result: Any) -> str:
    """A short human summary of a finished batch inference."""
    c = result.counts
    lines = [
        f"batch inference with {result.model_version}: {c['rows_read']} rows read, "
        f"{c['predicted']} predicted, {c['quarantined']} quarantined, "
        f"{c['duplicates_removed']} exact repeats; "
        f"{result.no_known_share:.2%} with no known word",
        *(
            f"  {row['category']}: {row['tweets']} ({row['share']:.1%})"
            for row in result.categories
        ),
        f"  predictions: {result.output}",
    ]
    return "\n".join(lines)


def batch_main(argv: list[str] | None = None) -> int:
    """Command-line entry point: classify, print a summary."""
    from tasks.infra.store import ArtifactStore
    from tasks.release.config import load_release_config
    from tasks.serving.inference import check_output
    from tasks.serving.resolve import check_model_spec

    def preflight() -> BatchInferenceParameters:
        params = parse_batch_args(argv)
        check_output(params.output)
        check_source_now(params.source, params.ingestion)
        check_model_spec(
            params.model,
            ArtifactStore(params.artifacts_dir).root,
            load_release_config(params.promotion_config),
        )
        return params

    def run(params: BatchInferenceParameters) -> Any:
        from flows.batch_inference import batch_inference

        return batch_inference(**params.as_flow_kwargs())

    return run_command(preflight, run, batch_summary)
