"""Command-line plumbing of the scripts in ``experiments/`` (layer 5): one-line user errors, the
work directory named after the command, run.log, progress bars.

A user's mistake (an out-of-range value, an unknown method or criterion, a misspelt config key, a
missing dataset) ends with ``error: <what is wrong and how to fix it>`` on stderr and exit status
2; ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
from typing import Any, Iterator, Mapping, Sequence

from absl import flags

from ballot_jax import config as config_lib
from ballot_jax import experiment, loop

RUN_LOG = "run.log"
_DEBUG = flags.DEFINE_bool("debug", False, "Show the full traceback of an error instead of its one-line message.")
USER_ERRORS = (ValueError, KeyError, AttributeError, FileNotFoundError, NotADirectoryError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (a misspelt config key keeps ml_collections' suggestion)."""
    text = str(error.args[0]) if error.args else str(error)
    hint = re.search(r"Did you mean \"(\w+)\" instead of \"(\w+)\"", text)
    if hint:
        return f"unknown config key {hint.group(2)!r}; did you mean {hint.group(1)!r}?"
    lines = [line.strip() for line in text.replace("\\n", "\n").splitlines() if line.strip()]
    if isinstance(error, (KeyError, AttributeError)) and len(lines) == 1 and " " not in lines[0]:
        return f"unknown config key {lines[0]}"
    return " — ".join(lines) or type(error).__name__


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _debug_requested(argv: Sequence[str]) -> bool:
    return any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (``app.run(main, flags_parser=parse_flags)``) with one-line errors."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{one_line(e)} (usage: {argv[0]} --config=configs/<name>.py[:variants] [--config.key=value])")
    except USER_ERRORS as e:
        if _debug_requested(argv):
            raise
        _fail(one_line(e))


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns a user error raised inside into ``error: …`` and exit status 2 (unless ``--debug``)."""
    try:
        yield
    except USER_ERRORS as e:
        if _DEBUG.value:
            raise
        _fail(f"{one_line(e)} (--debug shows the traceback)")


def run_job(config, workdir: str) -> tuple[dict, list[str]]:
    """Logging to ``<workdir>/run.log``, progress bars, then :func:`ballot_jax.experiment.run`.

    A work directory holding another configuration is a one-line error (exit 2).
    """
    setup_logging(workdir)
    logging.getLogger("ballot_jax.run").info("command: %s", " ".join(sys.argv))
    cache = experiment.use_compilation_cache(config.compilation_cache_dir)
    logging.getLogger("ballot_jax.run").info("compilation cache: %s", cache or "off")
    print(f"work directory: {os.path.abspath(workdir)}  (log: {os.path.join(workdir, RUN_LOG)})",
          flush=True)
    progress = StageProgress(enabled=bool(config.progress))
    try:
        return experiment.run(config, workdir, progress=progress)
    except experiment.WorkdirConflictError as e:
        _fail(str(e))
    finally:
        progress.close()


def default_workdir(config: Any, overrides: Mapping[str, Any] | None = None, root: str = "runs") -> str:
    """``runs/<name>[_<variants>][_sweep<Ω1>-<Ω2>…][_<hash>]``: the same command, the same directory.

    ``overrides`` are the ``--config.key=value`` overrides of the command line; those that can
    change results (not :data:`ballot_jax.experiment.NEUTRAL_KEYS`) add a short hash, so a run with other settings
    never mixes its numbers into an earlier run's directory.
    """
    parts = [str(config.get("name", "") or "run")]
    variant = str(config.get("variant", "") or "")
    if variant:
        parts.append(variant.replace(",", "_"))
    sweep = config_lib.parse_sweep(config)
    if sweep:
        parts.append("sweep" + "-".join(f"{s:g}" for s in sweep))
    relevant = {k: v for k, v in sorted((overrides or {}).items()) if k.split(".")[0] not in experiment.NEUTRAL_KEYS}
    if relevant:
        digest = hashlib.sha1(json.dumps(loop.jsonable(relevant), sort_keys=True).encode()).hexdigest()[:8]
        parts.append(digest)
    return os.path.join(root, "_".join(parts))


class _OwnLogsFilter(logging.Filter):
    """INFO and above from ballot_jax, WARNING and above from every other library."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("ballot_jax") or record.levelno >= logging.WARNING


def setup_logging(workdir: str, *, console_level: int = logging.WARNING) -> logging.Handler:
    """Appends INFO logs (every stage's info, timings) to ``<workdir>/run.log``; returns the handler.

    The console (absl's handler, when present) is raised to ``console_level`` so that progress
    bars stay readable; the file gets everything ballot_jax logs.
    """
    os.makedirs(workdir, exist_ok=True)
    root = logging.getLogger()
    path = os.path.abspath(os.path.join(workdir, RUN_LOG))
    for h in root.handlers:
        if isinstance(h, logging.FileHandler) and h.baseFilename == path:
            return h
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.addFilter(_OwnLogsFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for h in root.handlers:  # only console handlers: leave e.g. pytest's capture handlers alone
        stream = getattr(h, "stream", None)
        if type(h).__name__ == "ABSLHandler" or (not isinstance(h, logging.FileHandler)
                                                 and stream in (sys.stderr, sys.stdout)):
            h.setLevel(max(h.level, console_level))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


class StageProgress:
    """A ``loop.Context.progress`` callback: one tqdm bar (with ETA) per stage of each run.

    ``start_run(label)`` names the run whose stages follow ("[3/18] seed 0 ballot"); a bar closes
    when its stage ends or another stage starts. Cheap: tqdm redraws at most every 0.5 s.
    """

    def __init__(self, *, enabled: bool = True, file: Any = None):
        self.enabled = enabled
        self.file = file
        self.label = ""
        self._bar = None
        self._key: tuple | None = None
        self._last = 0

    def start_run(self, label: str) -> None:
        """Names the run whose stages come next."""
        self.close()
        self.label = label

    def __call__(self, stage: str, step: int, total: int) -> None:
        if not self.enabled:
            return
        key = (self.label, stage, total)
        if self._bar is None or key != self._key or step <= self._last:
            self.close()
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=step - 1, desc=f"{self.label}: {stage}".strip(": "),
                             unit="step", mininterval=0.5, leave=False, file=self.file, dynamic_ncols=True)
            self._key, self._last = key, step - 1
        self._bar.update(step - self._last)
        self._last = step
        if step >= total:
            self.close()

    def close(self) -> None:
        """Closes the open bar, if any."""
        if self._bar is not None:
            self._bar.close()
        self._bar, self._key, self._last = None, None, 0
