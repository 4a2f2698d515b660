"""The command lines of both flows, generated from their parameter models
(``flows/options.py``): a cheap pre-flight, one ``error:`` line for bad input,
a summary; and ``tweetflow retrain|infer|promote``, one entry point for all.

``python -m flows.retrain --help`` and ``python -m flows.batch_inference --help``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from data_contracts import ContractViolation
from flows.local_server import api_for_command_line
from flows.options import ModelParser, OneLineParser, VersionAction
from flows.parameters import BatchInferenceParameters, RetrainParameters
from tasks.infra.caching import is_transient
from tasks.infra.errors import InputError
from tasks.infra.store import ArtifactStore
from tasks.stages.ingestion import IngestionConfig, check_source

USER_ERRORS = (InputError, ContractViolation)
# How long a temporary Prefect server may take to start (a new database included).
TEMPORARY_SERVER_STARTUP_SECONDS = 120


def apply_log_level(level: str) -> None:
    """Set the verbosity of flow and task run logs for this process."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).setLevel(level)


class QuietInputErrors(logging.Filter):
    """Drop the traceback from log records about input errors and transient
    storage failures (command line only).

    People get one readable line for bad input or storage that stayed
    unavailable through every retry; a programming error keeps its traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Strip ``exc_info`` when the logged exception is an input error or a
        transient storage failure."""
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and (isinstance(exc, USER_ERRORS) or is_transient(exc)):
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
    input, or when storage stayed unavailable through every retry), ``report``
    turns the flow's result into what is printed. Programming errors keep
    their tracebacks.
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
    except Exception as exc:
        if not is_transient(exc):
            raise
        print(f"error: {exc} (still failing after every retry)", file=sys.stderr)
        return 1
    print(report(result))
    if api_url:
        print(f"  runs: {api_url.removesuffix('/api')}/runs")
    return 0


@contextlib.contextmanager
def prefect_api(api_url: str | None) -> Iterator[None]:
    """Run against ``api_url`` (or Prefect's own choice when None); a temporary
    server Prefect starts has its analytics off, so offline it stays quiet, and
    is given time to create its database on a first run on a busy machine
    (Prefect's 20 s default is not enough there; the environment may say more)."""
    import os

    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    updates: dict[Any, Any] = {PREFECT_SERVER_ANALYTICS_ENABLED: False}
    if not os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"):
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = (
            TEMPORARY_SERVER_STARTUP_SECONDS
        )
    if api_url:
        updates[PREFECT_API_URL] = api_url
    with temporary_settings(updates=updates):
        yield


def check_source_now(
    source: str, config: IngestionConfig, artifacts_dir: str | None = None
) -> None:
    """The source pre-flight, once: a transient storage error is left to the
    flow, whose pre-flight task retries it (one retry layer). With
    ``artifacts_dir``, a source that passed there before is not read again."""
    try:
        check_source(
            source, config, ArtifactStore(artifacts_dir) if artifacts_dir else None
        )
    except Exception as exc:
        if not is_transient(exc):
            raise


# Today's short flags for nested settings, kept beside their generated names.
SHORT_FLAGS: dict[str, tuple[str, ...]] = {
    "clustering.n_clusters": ("--n-clusters",),
    "ingestion.text_column": ("--text-column",),
    "ingestion.id_column": ("--id-column",),
    "ingestion.encoding": ("--encoding",),
}


def retrain_parser(
    prog: str = "python -m flows.retrain",
) -> ModelParser[RetrainParameters]:
    """The retrain command line, generated from ``RetrainParameters``."""
    return ModelParser(
        RetrainParameters,
        prog=prog,
        description="Retrain the tweet classifier from scratch, reusing every "
        "unchanged stage.",
        aliases=SHORT_FLAGS,
    )


def parse_retrain_args(
    argv: Sequence[str] | None = None, prog: str = "python -m flows.retrain"
) -> RetrainParameters:
    """Build the retrain parameters from the command line."""
    return retrain_parser(prog).parse(argv)


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


def retrain_main(
    argv: Sequence[str] | None = None, prog: str = "python -m flows.retrain"
) -> int:
    """Command-line entry point: run the retrain flow locally, print a summary."""
    from tasks.release.config import load_release_config
    from tasks.stages.categories import load_category_map

    def preflight() -> RetrainParameters:
        params = parse_retrain_args(argv, prog)
        load_category_map(params.category_map)
        load_release_config(params.promotion_config)
        check_source_now(params.source, params.ingestion, params.artifacts_dir)
        return params

    def run(params: RetrainParameters) -> Any:
        from flows.retrain import retrain

        return retrain(**params.as_flow_kwargs())

    return run_command(preflight, run, retrain_summary)


def batch_parser(
    prog: str = "python -m flows.batch_inference",
) -> ModelParser[BatchInferenceParameters]:
    """The batch-inference command line, generated from ``BatchInferenceParameters``."""
    return ModelParser(
        BatchInferenceParameters,
        prog=prog,
        description="Classify new tweets with the champion (or a chosen) model and "
        "write predictions as Parquet.",
        aliases=SHORT_FLAGS,
    )


def parse_batch_args(
    argv: Sequence[str] | None = None, prog: str = "python -m flows.batch_inference"
) -> BatchInferenceParameters:
    """Build the batch-inference parameters from the command line."""
    return batch_parser(prog).parse(argv)


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


def batch_main(
    argv: Sequence[str] | None = None, prog: str = "python -m flows.batch_inference"
) -> int:
    """Command-line entry point: classify, print a summary."""
    from tasks.infra.store import ArtifactStore
    from tasks.release.config import load_release_config
    from tasks.serving.inference import check_output
    from tasks.serving.resolve import check_model_spec

    def preflight() -> BatchInferenceParameters:
        params = parse_batch_args(argv, prog)
        check_output(params.output)
        check_source_now(params.source, params.ingestion, params.artifacts_dir)
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


def promote_main(argv: Sequence[str], prog: str) -> int:
    """``tweetflow promote``: ``python -m flows.promote``'s command line."""
    from flows.promote import main as promote

    return promote(list(argv), prog)


COMMANDS: dict[str, tuple[Callable[[Sequence[str], str], int], str]] = {
    "retrain": (retrain_main, "retrain the classifier (python -m flows.retrain)"),
    "infer": (batch_main, "classify new tweets (python -m flows.batch_inference)"),
    "promote": (promote_main, "move the champion alias (python -m flows.promote)"),
}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """``tweetflow retrain|infer|promote [options]``: the console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        command, _ = COMMANDS[args[0]]
        try:
            code = command(args[1:], f"tweetflow {args[0]}")
        except SystemExit as exc:  # --help, --version, a usage error
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        exit_now(code)
    parser = OneLineParser(
        prog="tweetflow",
        usage="%(prog)s {" + ",".join(COMMANDS) + "} [options]",
        description="tweetflow's command line; `tweetflow COMMAND --help` lists "
        "a command's options.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action=VersionAction)
    commands = parser.add_argument_group("commands")
    for name, (_, text) in COMMANDS.items():
        commands.add_argument(name, nargs="?", help=text)
    if not args:
        parser.error("a command is required: " + ", ".join(COMMANDS))
    parser.parse_args(args[:1])  # exits on --help, --version and unknown options
    parser.error(f"unknown command {args[0]!r}")
