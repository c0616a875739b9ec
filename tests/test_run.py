"""experiments/run.py end to end on the quickstart data (1 seed, 1 epoch, two methods), and a rerun.

The command-line entry point is loaded from its file and its ``main`` called with parsed flags,
as ``python experiments/run.py --config=configs/quickstart.py ...`` would (``helpers.call_run_script``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time

import pytest

import helpers
from ballot_jax import cli, experiment

TINY = ["--config.seeds=1", "--config.retrain_epochs=1", "--config.dense_epochs=1", "--config.ballot.vote_epochs=1",
        "--config.methods=ballot,magnitude", "--config.progress=False", "--config.ballot.diag_batches=0"]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """One tiny quickstart run through the command line: (workdir, printed output, seconds)."""
    workdir = str(tmp_path_factory.mktemp("run") / "qs")
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        helpers.call_run_script(["--config=configs/quickstart.py", f"--workdir={workdir}", *TINY])
    return workdir, buf.getvalue(), time.perf_counter() - t0


def test_run_quickstart_writes_every_output(quickstart_run) -> None:
    workdir, out, _ = quickstart_run
    assert "| ballot |" in out and "wall time:" in out  # the one-screen summary
    for name in ("config.json", "results.json", "timings.json", "results.csv", "runs.csv", "results.md", "run.log",
                 "per_group_accuracy.png", "accuracy_vs_fairness.png", "training_curves.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    res = json.load(open(os.path.join(workdir, "results.json")))
    assert {"config", "task", "methods", "dense", "runs"} <= set(res) and "timings" not in res
    assert res["methods"] == ["ballot", "magnitude"] and len(res["runs"]) == 2
    for run in res["runs"]:
        for key in ("method", "seed", "sparsity", "accuracy", "cwv", "mcd", "per_group_accuracy", "test", "mask",
                    "mask_integrity", "log", "config"):
            assert key in run, key
        assert "seconds" not in run  # wall times live in timings.json: results.json is deterministic
        assert run["sparsity"] == pytest.approx(0.8, abs=1e-3)
        assert run["mask_integrity"]["nonzero_masked_weights"] == 0
        assert len(run["per_group_accuracy"]) == res["task"]["num_groups"] == 10
    timings = json.load(open(os.path.join(workdir, "timings.json")))
    assert timings["total_seconds"] > 0 and timings["train_step_compilations"] >= 1
    assert set(timings["seconds"]) == {"dense/0", "ballot/0", "magnitude/0"}
    merged = experiment.load_results(workdir)
    assert all(r["seconds"] > 0 for r in merged["runs"] + merged["dense"])
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["retrain_epochs"] == 1 and saved["name"] == "quickstart" and saved["methods"] == "ballot,magnitude"
    with open(os.path.join(workdir, "results.csv")) as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["dense", "ballot", "magnitude"]
    log_text = open(os.path.join(workdir, "run.log")).read()
    assert "ballot_jax.loop" in log_text and "retrain" in log_text


def test_changed_setting_in_same_workdir_is_refused(quickstart_run, capsys) -> None:
    workdir, _, _ = quickstart_run
    with pytest.raises(SystemExit) as exit_info:
        helpers.call_run_script(["--config=configs/quickstart.py", f"--workdir={workdir}", *TINY, "--config.retrain_epochs=2"])
    assert exit_info.value.code == 2 and "retrain_epochs: 1 -> 2" in capsys.readouterr().err


def test_rerun_skips_finished_runs(quickstart_run) -> None:
    """Rerunning the same command skips every finished run and rewrites the same numbers."""
    workdir, _, first = quickstart_run
    before = json.load(open(os.path.join(workdir, "results.json")))
    with contextlib.redirect_stdout(io.StringIO()):
        helpers.call_run_script(["--config=configs/quickstart.py", f"--workdir={workdir}", *TINY, "--config.plots=False"])
    again = json.load(open(os.path.join(workdir, "results.json")))
    assert [r["accuracy"] for r in again["runs"]] == [r["accuracy"] for r in before["runs"]]
    assert "finished earlier, skipping" in open(os.path.join(workdir, "run.log")).read()


def test_default_workdir_is_deterministic() -> None:
    from ballot_jax import config as config_lib

    c = config_lib.base_config()
    c.name, c.variant = "utkface", "cpu,gender_by_race"
    assert cli.default_workdir(c) == os.path.join("runs", "utkface_cpu_gender_by_race")
    neutral = {"manual_dir": "../shared/data", "data_dir": "/tmp/x", "seeds": 5, "methods": "ballot"}
    assert cli.default_workdir(c, neutral) == os.path.join("runs", "utkface_cpu_gender_by_race")
    a = cli.default_workdir(c, {"retrain_epochs": 2})
    assert a == cli.default_workdir(c, {"retrain_epochs": 2}) != cli.default_workdir(c, {"retrain_epochs": 3})
    assert a.startswith(os.path.join("runs", "utkface_cpu_gender_by_race_")) and len(os.path.basename(a)) == 35


def test_stage_progress_bars() -> None:
    buf = io.StringIO()
    bar = cli.StageProgress(file=buf)
    bar.start_run("[1/2] seed 0 ballot")
    for step in range(1, 5):
        bar("ticket", step, 4)
    bar("retrain", 3, 6)  # a resumed stage starts mid-way
    assert bar._bar.n == 3 and bar._bar.total == 6
    bar.close()
    text = buf.getvalue()
    assert "[1/2] seed 0 ballot: ticket" in text and "retrain" in text
    cli.StageProgress(enabled=False)("x", 1, 2)  # disabled: no bar, no error


def test_sweep_runs_each_sparsity_in_its_own_directory(tmp_path, monkeypatch) -> None:
    """run() with a sweep: one compare run per Ω in sparsity_<Ω>/, then the sweep reports."""
    from ballot_jax import config as config_lib

    seen = []

    def fake_comparison(config, workdir, *, progress=None):
        seen.append((config.sparsity, config.sweep, os.path.basename(workdir)))
        acc = 0.9 - config.sparsity / 100
        runs = [{"method": m, "seed": s, "sparsity": config.sparsity, "target_sparsity": config.sparsity,
                 "accuracy": acc - (0.1 if m == "magnitude" and config.sparsity > 0.8 else 0), "cwv": 0.01 + 0.01 * (m != "ballot"),
                 "mcd": 0.2 + 0.1 * (m != "ballot"), "per_group_accuracy": [0.5, 0.6]} for m in ("ballot", "magnitude")
                for s in range(2)]
        dense = [{"seed": s, "test": {"accuracy": 0.9, "cwv": 0.01, "mcd": 0.2, "per_group_accuracy": [0.8, 0.9]}}
                 for s in range(2)]
        return {"methods": ["ballot", "magnitude"], "runs": runs, "dense": dense}, []

    monkeypatch.setattr(experiment, "run_comparison", fake_comparison)
    config = config_lib.base_config()
    config.name, config.sweep, config.plots = "toy", "0.5,0.9", False
    assert cli.default_workdir(config) == os.path.join("runs", "toy_sweep0.5-0.9")
    summary, paths = experiment.run(config, str(tmp_path))
    assert seen == [(0.5, "", "sparsity_0.5"), (0.9, "", "sparsity_0.9")]
    assert {os.path.basename(p) for p in paths} == {"config.json", "sweep.json", "sweep.csv", "sweep.md"}
    within = {(r["sparsity"], r["method"]): r["within_budget"] for r in summary["rows"]}
    assert within == {(0.5, "ballot"): True, (0.5, "magnitude"): True, (0.9, "ballot"): True,
                      (0.9, "magnitude"): False}
    assert "| 90% | magnitude |" in (tmp_path / "sweep.md").read_text()


def test_config_conflicts_name_changed_and_vanished_keys() -> None:
    """A saved key with another value, or one this version no longer has (renamed), is a conflict;
    a key the saved config lacks (added since) and the neutral keys are not."""
    saved = {"sparsity": 0.9, "epochs": 4, "lth": {"rate": 0.2}, "seeds": 3}
    now = {"sparsity": 0.9, "retrain_epochs": 4, "lth": {"rate": 0.3, "max_rounds": None}, "seeds": 5}
    assert experiment.config_conflicts(saved, now) == {"epochs": (4, experiment.ABSENT), "lth.rate": (0.2, 0.3)}
    assert experiment.config_conflicts(dict(saved, epochs=None), dict(now, epochs=None, lth={"rate": 0.2})) == {}
