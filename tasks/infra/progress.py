"""Progress of long work: a log line at least every few seconds, a progress bar in
the Prefect UI, and a progress line on a terminal.

Every stage task runs inside a ``Progress`` (``stage_task`` opens it); code deep
in a stage reaches it with ``current()`` and says what it is doing (``phase``)
and how far it got (``advance``, ``update``). A background thread reports every
``every`` seconds, whether or not the work advanced, so the log is never silent
for long: ``features: word vectors 42% (epoch 5/12), 31 s``. A stage that ends
within ``every`` seconds reports nothing. Inside a Prefect task run the same figure
updates a progress artifact (``<stage>-progress``) the UI shows as a bar.
Outside a run, or when the Prefect API cannot take it, only the log line is
written; a step that ends before its first report gets no bar. On a terminal
(stderr is a TTY) a one-line bar is drawn as well;
``TWEETFLOW_PROGRESS=0`` turns that off.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import time
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

REPORT_EVERY = 5.0  # seconds between two reports of a running step


def run_logger() -> Any:  # a logging.Logger or Prefect's run logger adapter
    """The current Prefect run's logger, else the ``tweetflow`` logger."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a flow or task run
        return logging.getLogger("tweetflow")


def _in_task_run() -> bool:
    try:
        from prefect.context import TaskRunContext

        return TaskRunContext.get() is not None
    except Exception:
        return False


def terminal_bar_enabled() -> bool:
    """Whether a progress line is drawn: stderr is a terminal and not turned off."""
    return os.environ.get("TWEETFLOW_PROGRESS", "1") != "0" and sys.stderr.isatty()


class Progress:
    """Reports one long step of a stage while it runs (a context manager)."""

    def __init__(
        self,
        stage: str,
        what: str,
        total: float,
        unit: str = "",
        every: float = REPORT_EVERY,
    ) -> None:
        """Report ``what`` of ``stage``, ``total`` units of work (rows, epochs ...)."""
        self.stage, self.what, self.unit = stage, what, unit
        self.total = max(float(total), 1.0)
        self.every = every
        self.done = 0.0
        self.note = ""
        self.logger = run_logger()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._artifact: Any = None
        self._artifact_wanted = False
        self._started = 0.0
        self._bar = terminal_bar_enabled()
        self._token: Token[Progress | None] | None = None
        self.reports = 0

    # Work side ------------------------------------------------------------------
    def phase(self, what: str, total: float, unit: str = "") -> None:
        """A new step begins: ``what``, ``total`` units of work."""
        self.what, self.unit = what, unit
        self.total = max(float(total), 1.0)
        self.done, self.note = 0.0, ""

    def advance(self, amount: float = 1.0, note: str = "") -> None:
        """``amount`` more units are done (from any thread)."""
        with self._lock:
            self.update(self.done + amount, note)

    def update(self, done: float, note: str = "") -> None:
        """``done`` units are done so far."""
        self.done = min(float(done), self.total)
        if note:
            self.note = note

    @property
    def fraction(self) -> float:
        """Share of the work done, 0 to 1."""
        return self.done / self.total

    # Reporting side ---------------------------------------------------------------
    def __enter__(self) -> Progress:
        """Start reporting; ``current()`` returns this until the block ends."""
        self._started = time.monotonic()
        self._token = _CURRENT.set(self)
        self._artifact_wanted = _in_task_run()
        # The reporter runs in this context's copy: the same Prefect settings (API
        # address) and run context; a bare thread would start a temporary server.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run,
            args=(self._loop,),
            name=f"progress-{self.stage}",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop reporting; a finished step reports 100%."""
        if self._token is not None:
            _CURRENT.reset(self._token)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if exc_type is None:
            self.done = self.total
            if self._artifact is not None:  # only a step long enough to report
                self._push_artifact()
        if self._bar:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def message(self) -> str:
        """The report line: stage, step, share done, detail, elapsed seconds."""
        elapsed = time.monotonic() - self._started
        detail = f" ({self.note})" if self.note else ""
        amount = f" {self.done:,.0f}/{self.total:,.0f} {self.unit}" if self.unit else ""
        return (
            f"{self.stage}: {self.what} {self.fraction:.0%}{amount}{detail}, "
            f"{elapsed:.0f} s"
        )

    def report(self) -> None:
        """One report now: the log line, the artifact, the terminal line."""
        self.reports += 1
        line = self.message()
        if self._bar:  # the log line goes above the bar, not into it
            sys.stderr.write("\r\033[K")
        self.logger.info(line)
        self._push_artifact()
        if self._bar:
            width = 24
            filled = int(self.fraction * width)
            sys.stderr.write(f"\r\033[K[{'#' * filled}{'.' * (width - filled)}] {line}")
            sys.stderr.flush()

    def _push_artifact(self) -> None:
        """Create the bar at the first report (a quick step gets none), then move it."""
        if not self._artifact_wanted:
            return
        try:
            from prefect.artifacts import (
                create_progress_artifact,
                update_progress_artifact,
            )

            value = round(100 * self.fraction, 1)
            if self._artifact is None:
                self._artifact = create_progress_artifact(
                    value,
                    key=f"{self.stage}-progress",
                    description=f"{self.stage}: {self.what}",
                )
            else:
                update_progress_artifact(self._artifact, value)
        except Exception as exc:  # progress must never fail the work
            self.logger.debug("progress artifact not updated: %s", exc)
            self._artifact_wanted = False

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.report()
            except Exception:  # never let reporting kill the work
                return


_CURRENT: ContextVar[Progress | None] = ContextVar("tweetflow_progress", default=None)


def current() -> Progress:
    """The running stage's progress, or a silent one outside a stage."""
    return _CURRENT.get() or Progress("tweetflow", "work", 1, every=float("inf"))
