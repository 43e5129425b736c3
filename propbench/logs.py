"""Console output: the CLI's messages as ``logging`` records, and a progress line for runs
that take a while.

Messages are records of the ``propbench`` logger. Hydra's job logging
(``conf/hydra/job_logging/propbench.yaml``) sends INFO (a run's verdicts, a sweep's job
lines and table) to stdout as the bare message, WARNING and above to stderr as
``propbench: warning: ...``, and every record, with a timestamp, to ``propbench.log`` in the
run folder (a sweep's own messages to ``sweep.log`` in the sweep folder). ``quiet=true``
raises the console's level to WARNING and turns the progress line off; the log file still
gets everything.
"""

from __future__ import annotations

import logging
import logging.config
import sys
import time
from pathlib import Path
from typing import Callable, Optional, TextIO

log = logging.getLogger("propbench")


def console_level(quiet: bool) -> str:
    """The stdout handler's level (the ``propbench_console_level`` resolver of the config)."""
    return "WARNING" if quiet else "INFO"


class ConsoleFormatter(logging.Formatter):
    """The bare message for INFO; ``propbench: warning: ...`` (or error) above it."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"propbench: {record.levelname.lower()}: {message}"
        return message


class BelowWarning(logging.Filter):
    """Lets through what stdout shows: records below WARNING (stderr takes the rest)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def configure(log_file: Path, quiet: bool) -> None:
    """Hydra's job logging of propbench (the same YAML), writing to ``log_file``: for the
    messages a sweep prints after its last job, outside any job's folder."""
    from omegaconf import OmegaConf

    from propbench.config import CONF_DIR

    conf = OmegaConf.load(CONF_DIR / "hydra" / "job_logging" / "propbench.yaml")
    conf.handlers.file.filename = str(log_file)
    conf.handlers.stdout.level = console_level(quiet)
    logging.config.dictConfig(OmegaConf.to_container(conf))


class Progress:
    """A one-line status on a terminal for a run that takes a while: the trials and the
    layer of the pass in progress, and the time elapsed. Silent for its first ``after``
    seconds and when ``stream`` is not a terminal; redrawn at most every ``every`` s."""

    def __init__(self, depth: int, trials: int, stream: Optional[TextIO] = None,
                 after: float = 3.0, every: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.depth, self.trials = depth, trials
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.after, self.every, self.clock = after, every, clock
        self.started = clock()
        self.shown_at: Optional[float] = None
        self.trials_range = range(0)
        self.width = 0

    def chunk(self, trials: range) -> None:
        """The trials the next pass probes."""
        self.trials_range = trials

    def layer(self, direction: str, layer: int) -> None:
        """The pass reached ``layer`` (forward or backward); redraw if it is time."""
        if not self.enabled:
            return
        now = self.clock()
        if now - self.started < self.after or (self.shown_at is not None and now - self.shown_at < self.every):
            return
        self.shown_at = now
        t = self.trials_range
        trials = (f"trial {t.start + 1}" if len(t) == 1 else f"trials {t.start + 1}-{t.stop}") \
            + f" of {self.trials}"
        text = f"propbench: {trials}, {direction} layer {layer}/{self.depth}, {now - self.started:.0f} s"
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def close(self) -> None:
        """Clear the line (the results follow)."""
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0
