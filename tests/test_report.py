"""Report maths (t-intervals, Ballot's improvement, budget) and the files write_reports produces."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

from ballot_jax import fairness, report


def _run(method: str, seed: int, acc: float, cwv: float, mcd: float, groups=(0.5, 0.7)) -> dict:
    test = {"accuracy": acc, "cwv": cwv, "mcd": mcd, "per_group_accuracy": list(groups),
            "worst_group_accuracy": min(groups), "demographic_parity_difference": 0.1,
            "equalized_odds_difference": 0.2}
    log = [{"stage": "ticket", "phase": "epoch", "epoch": 0, "train_loss": 1.0, "train_accuracy": 0.4},
           {"stage": "ticket", "phase": "end"},
           {"stage": "retrain", "phase": "epoch", "epoch": 0, "train_loss": 0.8, "train_accuracy": 0.6},
           {"stage": "retrain", "phase": "epoch", "epoch": 1, "train_loss": 0.6, "train_accuracy": 0.7}]
    return {"method": method, "seed": seed, "sparsity": 0.9, "target_sparsity": 0.9, "accuracy": acc, "cwv": cwv,
            "mcd": mcd, "per_group_accuracy": list(groups), "test": test, "seconds": 2.0, "log": log}


def _results() -> dict:
    runs = []
    for s in range(3):
        runs.append(_run("ballot", s, 0.80 + 0.01 * s, 0.010 + 0.001 * s, 0.20 + 0.01 * s))
        runs.append(_run("magnitude", s, 0.82, 0.020, 0.40 + 0.02 * s))
        runs.append(_run("lth", s, 0.70, 0.0, 0.0))
    dense = [{"seed": s, "test": _run("dense", s, 0.85, 0.015, 0.3)["test"], "seconds": 3.0} for s in range(3)]
    return {"config": {"name": "toy", "variant": "", "dataset": "quickstart", "sparsity": 0.9, "model": "cnn_small"},
            "task": {"num_classes": 2, "num_groups": 2, "group_names": ["a", "b"], "class_names": ["a", "b"],
                     "info": {}},
            "methods": ["magnitude", "ballot", "lth"], "dense": dense, "runs": runs}


def test_mean_ci_matches_t_distribution() -> None:
    values = [1.0, 2.0, 4.0]
    mean, half = report.mean_ci(values)
    # t_{0.975, 2} = 4.302653; s = sqrt(7/3)
    assert mean == pytest.approx(7 / 3)
    assert half == pytest.approx(4.302653 * math.sqrt(7 / 3) / math.sqrt(3), rel=1e-6)
    assert report.t_critical(9) == pytest.approx(2.262157, rel=1e-6)
    m1, h1 = report.mean_ci([0.5])
    assert m1 == 0.5 and math.isnan(h1)
    assert report.mean_ci([2.0, 2.0, 2.0]) == (2.0, 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        report.mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError):
        report.mean_ci([])


def test_method_summary_and_improvement_follow_the_paper() -> None:
    rows = report.method_summary(_results())
    assert [r["method"] for r in rows] == ["dense", "ballot", "magnitude", "lth"]
    by = {r["method"]: r for r in rows}
    assert by["ballot"]["n"] == 3 and by["ballot"]["seeds"] == [0, 1, 2]
    assert by["ballot"]["cwv_mean"] == pytest.approx(0.011)
    assert by["magnitude"]["accuracy_ci"] == 0.0
    assert by["ballot"]["accuracy_drop_mean"] == pytest.approx(0.85 - 0.81)
    assert by["ballot"]["per_group_accuracy_mean"] == pytest.approx([0.5, 0.7])
    imp = report.improvements(rows)
    assert set(imp) == {"magnitude", "lth"}
    assert imp["magnitude"]["cwv"] == pytest.approx((0.020 - 0.011) / 0.020)
    assert imp["magnitude"]["mcd"] == pytest.approx((0.42 - 0.21) / 0.42)
    assert imp["magnitude"]["paper"] == pytest.approx(
        fairness.paper_improvement({"cwv": 0.020, "mcd": 0.42}, {"cwv": 0.011, "mcd": 0.21}))
    assert imp["lth"] == {"cwv": None, "mcd": None, "paper": None}  # baseline already perfectly fair
    assert report.improvements([r for r in rows if r["method"] != "ballot"]) == {}


def test_budget_and_sweep_summary() -> None:
    assert report.within_budget(0.80, 0.85, 0.05)
    assert not report.within_budget(0.79, 0.85, 0.05)
    res = _results()
    summary = report.sweep_summary({0.5: res, 0.9: res}, accuracy_budget=0.05)
    assert summary["sparsities"] == [0.5, 0.9]
    rows = [r for r in summary["rows"] if r["sparsity"] == 0.9]
    flags = {r["method"]: r["within_budget"] for r in rows}
    assert flags == {"ballot": True, "magnitude": True, "lth": False}
    assert {r["method"]: r["improvement"] for r in rows}["magnitude"] == pytest.approx(
        report.improvements(report.method_summary(res))["magnitude"]["paper"])


def test_formatting() -> None:
    assert report.fmt_ci(0.8531, 0.012) == "85.31 ± 1.20"
    assert report.fmt_ci(0.5, float("nan")) == "50.00 ± n/a"
    assert report.fmt_ci(0.0123, 0.001, scale=1e3, digits=1) == "12.3 ± 1.0"


def test_training_curves_lay_stages_end_to_end() -> None:
    pts = report.training_curves(_run("ballot", 0, 0.8, 0.01, 0.2)["log"])
    assert [p["x"] for p in pts] == [1, 2, 3]
    assert [p["stage"] for p in pts] == ["ticket", "retrain", "retrain"]
    assert pts[-1]["loss"] == 0.6


def test_write_reports_files(tmp_path) -> None:
    res = _results()
    paths = report.write_reports(res, str(tmp_path))
    names = {os.path.basename(p) for p in paths}
    assert names == {"results.csv", "runs.csv", "paired.csv", "results.md", "per_group_accuracy.png",
                     "accuracy_vs_fairness.png", "training_curves.png"}
    for p in paths:
        assert os.path.getsize(p) > 0
        if p.endswith(".png"):
            with open(p, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["dense", "ballot", "magnitude", "lth"]
    mag = rows[2]
    assert float(mag["ballot_improvement_cwv"]) == pytest.approx(0.45)
    assert mag["accuracy_ci"] == "0" and float(mag["accuracy_mean"]) == pytest.approx(0.82)
    assert rows[3]["ballot_improvement_mean"] == ""  # undefined against a perfectly fair baseline
    with open(tmp_path / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 12 and "acc[a]" in runs[0] and runs[0]["method"] == "dense"
    md = (tmp_path / "results.md").read_text()
    assert "| ballot | 90.0% | 81.00 ± " in md
    assert "| magnitude | +45.00% | +50.00% | +47.50% |" in md
    assert "| lth | n/a | n/a | n/a |" in md
    assert "![training_curves.png](training_curves.png)" in md
    summary = report.summary_markdown(res)
    assert "CWV (×10⁻³)" in summary and "Ballot vs" in summary


def test_sweep_reports(tmp_path) -> None:
    res = _results()
    summary = report.sweep_summary({0.5: res, 0.9: res}, accuracy_budget=0.05)
    paths = report.write_sweep_reports(summary, str(tmp_path))
    assert {os.path.basename(p) for p in paths} == {"sweep.json", "sweep.csv", "sweep.md", "sweep.png"}
    md = (tmp_path / "sweep.md").read_text()
    assert "| 90% | lth | 70.00 ± 0.00 | 85.00 | **no** |" in md
    data = json.loads((tmp_path / "sweep.json").read_text())  # strict JSON: no NaN
    assert data["accuracy_budget"] == 0.05 and len(data["rows"]) == 6
    assert np.isfinite([r["accuracy_mean"] for r in data["rows"]]).all()


def test_dp_eo_only_for_sensitive_attribute_groups() -> None:
    rows = report.method_summary(_results())
    assert "DP difference" in report.group_metrics_table(rows, sensitive=True)
    assert "DP difference" not in report.group_metrics_table(rows, sensitive=False)
    res = _results()
    res["task"]["info"] = {"groups": "classes"}
    assert "DP difference" not in report.results_markdown(res)
    res["task"]["info"] = {"groups": "race"}
    assert "| ballot | 50.00 ± 0.00 | 10.00 ± 0.00 | 20.00 ± 0.00 | 2 |" in report.results_markdown(res)


def _paired_results(diffs_acc, diffs_cwv, sparsity_ours=0.9):
    runs = []
    for seed, (da, dc) in enumerate(zip(diffs_acc, diffs_cwv)):
        runs.append({"method": "lth", "seed": seed, "accuracy": 0.5, "cwv": 0.05, "mcd": 0.3, "sparsity": 0.9})
        runs.append({"method": "ballot", "seed": seed, "accuracy": 0.5 + da, "cwv": 0.05 + dc, "mcd": 0.3,
                     "sparsity": sparsity_ours})
    return {"methods": ["ballot", "lth"], "runs": runs}


def test_paired_difference_hand_computed():
    # Accuracy differences 1, 2, 3 pp: mean 2, s = 1, t_{0.975,2} = 4.302653 → half-width 2.4841.
    res = _paired_results([0.01, 0.02, 0.03], [-0.01, -0.02, -0.015])
    p = report.paired_difference(res, "ballot", "lth", "accuracy")
    assert p["n"] == 3 and p["better_count"] == 3
    assert math.isclose(p["mean"], 0.02, abs_tol=1e-12)
    assert math.isclose(p["ci"], 4.302653 * 0.01 / math.sqrt(3), rel_tol=1e-5)
    assert p["verdict"] == "not distinguishable"  # all three seeds better, yet the interval holds 0
    # CWV differences −0.01, −0.02, −0.015: mean −0.015, s = 0.005 → [−0.0274, −0.0026]: better.
    q = report.paired_difference(res, "ballot", "lth", "cwv")
    assert math.isclose(q["high"], -0.015 + 4.302653 * 0.005 / math.sqrt(3), rel_tol=1e-5)
    assert q["verdict"] == "better" and q["matched"]
    # The same interval for a higher-is-better metric reads "worse".
    r = report.paired_difference(_paired_results([-0.01, -0.02, -0.015], [0, 0, 0]), "ballot", "lth", "accuracy")
    assert r["verdict"] == "worse" and r["better_count"] == 0


def test_paired_difference_edge_cases():
    one = report.paired_difference(_paired_results([0.01], [0.0]), "ballot", "lth", "accuracy")
    assert one["verdict"] == "n/a (one seed)"
    unmatched = report.paired_difference(_paired_results([0.01, 0.02], [0, 0], sparsity_ours=0.02), "ballot", "lth",
                                         "cwv")
    assert unmatched["matched"] is False
    none = report.paired_difference({"runs": []}, "ballot", "lth", "mcd")
    assert none["n"] == 0 and none["verdict"] == "n/a"


def test_paired_table_and_csv_columns():
    res = _paired_results([0.01, 0.02, 0.03], [-0.01, -0.02, -0.015])
    pairs = report.paired_comparisons(res)
    assert {(p["ours"], p["baseline"], p["metric"]) for p in pairs} == {("ballot", "lth", m) for m in report.METRICS}
    table = report.paired_table(pairs)
    assert "**better**" in table and "**not distinguishable**" in table and "3/3" in table
    rows, cols = report.summary_rows_for_csv(res)
    lth = next(r for r in rows if r["method"] == "lth")
    assert lth["paired_cwv_verdict"] == "better" and lth["paired_accuracy_better"] == "3/3"
    assert "paired_mcd_verdict" in cols
