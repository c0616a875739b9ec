"""experiments/run.py: a second process with the same config compiles nothing (persistent cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.seeds=1", "--config.methods=ballot,magnitude", "--config.dense_epochs=1", "--config.retrain_epochs=1",
        "--config.ballot.vote_epochs=1", "--config.lth.round_epochs=1", "--config.progress=False", "--config.plots=False"]


def _run(workdir, cache):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "run.py"),
                           "--config=" + os.path.join(REPO, "configs", "quickstart.py"), *TINY,
                           f"--config.compilation_cache_dir={cache}", f"--workdir={workdir}"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(workdir, "timings.json")) as f:
        return json.load(f)["compilation_cache"]


def test_second_process_hits_the_cache_and_gives_the_same_bytes(tmp_path):
    cache = tmp_path / "cache"
    first = _run(tmp_path / "a", cache)
    second = _run(tmp_path / "b", cache)
    assert first.get("cache_misses", 0) > 0 and any(cache.iterdir())
    assert second.get("cache_misses", 0) == 0 and second["cache_hits"] == second["compile_requests_use_cache"] > 0
    assert (tmp_path / "a" / "results.json").read_bytes() == (tmp_path / "b" / "results.json").read_bytes()
