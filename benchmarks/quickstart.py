"""P8: wall time of the whole quickstart pipeline, ``experiments/run.py --config=configs/quickstart.py``.

Runs the command in a subprocess with a fresh temporary work directory (so nothing is resumed)
and reports its wall time and exit status. Skipped, with a note, while either file is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.common import Row  # noqa: E402

NAME = "quickstart"


def run(smoke: bool = False, timeout: float = 3600.0) -> tuple[list[Row], dict]:
    script = common.ROOT / "experiments" / "run.py"
    config = common.ROOT / "configs" / "quickstart.py"
    what = "whole pipeline wall time, experiments/run.py --config=configs/quickstart.py"
    missing = [str(p.relative_to(common.ROOT)) for p in (script, config) if not p.exists()]
    if missing:
        return [Row("P8", what, None, "s", "info", None, f"skipped: {', '.join(missing)} not present")], {}
    if smoke:
        return [Row("P8", what, None, "s", "info", None, "not run in smoke mode (files present)")], {}
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, str(script), f"--config={config}", f"--workdir={workdir}"]
        env = dict(os.environ, PYTHONPATH=str(common.ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=str(common.ROOT), env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - t0
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    ok = proc.returncode == 0
    note = "exit 0" if ok else f"FAILED with exit {proc.returncode}: {tail[-1] if tail else ''}"
    return [Row("P8", what, seconds, "s", "info (finishes)", ok, note)], {"returncode": proc.returncode, "tail": tail,
                                                                         "command": cmd}


def main(argv=None):
    return common.standard_main(NAME, __doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()
