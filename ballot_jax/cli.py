"""Command-line plumbing of the scripts in ``experiments/`` (layer 5): one-line user errors.

A user's mistake (an out-of-range value, an unknown method or criterion, a misspelt config key, a
missing dataset) ends with ``error: <what is wrong and how to fix it>`` on stderr and exit status
2; ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import contextlib
import re
import sys
from typing import Iterator, Sequence

from absl import flags

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
    import logging
    import os

    from ballot_jax import experiment

    experiment.setup_logging(workdir)
    logging.getLogger("ballot_jax.run").info("command: %s", " ".join(sys.argv))
    cache = experiment.use_compilation_cache(config.get("compilation_cache_dir"))
    logging.getLogger("ballot_jax.run").info("compilation cache: %s", cache or "off")
    print(f"work directory: {os.path.abspath(workdir)}  (log: {os.path.join(workdir, experiment.RUN_LOG)})",
          flush=True)
    progress = experiment.StageProgress(enabled=bool(config.progress))
    try:
        return experiment.run(config, workdir, progress=progress)
    except experiment.WorkdirConflictError as e:
        _fail(str(e))
    finally:
        progress.close()
