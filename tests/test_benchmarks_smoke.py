"""Every benchmark script starts: its tiny ``--smoke`` version runs and yields a table.

The benchmarks themselves are not part of the test run (``python benchmarks/run_all.py``); here
each one's ``run(smoke=True)`` is called in this process (jax is imported once) and its rows are
written with ``common.report`` to a temporary directory, which ``run_all.collect`` reads back.

Most of a smoke run is XLA compilation of tiny models, so this module turns on JAX's persistent
compilation cache (in ``$BALLOT_BENCH_CACHE``, outside the repository) while it runs: the first
run compiles everything, later runs load the executables (and prepared data) from there.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import common, run_all  # noqa: E402

NAMES = run_all.BENCHMARKS
SLOW = ("xla_flags",)  # a child process per XLA flag variant (13–15 s): in the slow set


@pytest.fixture(scope="module", autouse=True)
def persistent_compilation_cache():
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    new = (str(common.CACHE_DIR / "xla_smoke_cache"), 0.0, 0)
    for k, v in zip(keys, new):
        jax.config.update(k, v)
    compilation_cache.reset_cache()
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench_smoke")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NAMES])
def test_benchmark_smoke_runs(name: str, out_dir: Path) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    rows, meta = module.run(smoke=True)
    assert rows, f"{name} produced no rows"
    for row in rows:
        assert row.id.startswith("P") and row.goal is not None
        if name != "quickstart":
            assert row.value is not None, row
    record = common.report(name, rows, out_dir=out_dir, meta=meta, load_before=common.load_str(), smoke=True)
    with open(out_dir / f"{name}.json") as f:
        assert json.load(f)["rows"] == record["rows"]
    assert (out_dir / f"{name}.md").read_text().count("\n| P") == len(rows)


def test_run_all_collects_every_table(out_dir: Path) -> None:
    ran = [n for n in NAMES if (out_dir / f"{n}.json").exists()]  # the slow ones only under -m slow
    if not set(NAMES) - set(SLOW) <= set(ran):
        pytest.skip("needs the smoke runs above (deselected)")
    rows, records = run_all.collect(ran, out_dir)
    assert [r["benchmark"] for r in records] == ran
    assert all(r.id != "?" for r in rows)
    assert "load average" in records[0]["load_after"]


def test_every_script_has_a_smoke_flag() -> None:
    for name in NAMES + ("run_all",):
        text = (ROOT / "benchmarks" / f"{name}.py").read_text()
        assert "--smoke" in text or "common.standard_main" in text, name


def test_pipeline_reference_side_by_side_rows(tmp_path: Path) -> None:
    """P4/P7 against the prototype's timing JSON: ratios from its process wall time and dense img/s."""
    from benchmarks import pipeline_reference as pr

    proto = {"process_wall_s": 300.0, "images_per_second": {"dense": 120.0}, "epochs": 2, "n_train": 4000,
             "loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [1.2, 1.0, 1.0]}
    path = tmp_path / "timing.json"
    path.write_text(json.dumps(proto))
    wall, ips = pr.side_by_side(pr._load_prototype(str(path)), process_wall=240.0, images_per_s=90.0)
    assert wall.value == pytest.approx(0.8) and wall.met
    assert ips.value == pytest.approx(0.75) and ips.met is False
    path.write_text(json.dumps(dict(proto, epochs=1)))
    with pytest.raises(SystemExit, match="--epochs 2 --train 4000"):
        pr._load_prototype(str(path))
