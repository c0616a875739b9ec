"""The ablation's choice reads the validation split only, and respects accuracy and sparsity."""

from __future__ import annotations

from ballot_jax import ablation


def _run(method, seed, val, test, sparsity=0.9):
    acc, cwv, mcd = val
    return {"method": method, "seed": seed, "sparsity": sparsity, "accuracy": test[0], "cwv": test[1], "mcd": test[2],
            "log": [{"stage": "retrain", "phase": "end", "val": {"accuracy": acc, "cwv": cwv, "mcd": mcd}}]}


def _results():
    runs = []
    for s in range(3):
        d = 0.001 * s
        runs += [_run("lth", s, (0.80 + d, 0.010, 0.20), (0.8, 0.01, 0.2)),
                 _run("magnitude", s, (0.81 + d, 0.012, 0.22), (0.8, 0.01, 0.2)),
                 # fairer on validation but clearly less accurate: must not be chosen
                 _run("ballot:a", s, (0.70 + d, 0.002, 0.05), (0.9, 0.0, 0.0)),
                 # as accurate as LTH and fairer on validation (worse on test: test is never read)
                 _run("ballot:b", s, (0.80 + d + 0.0005 * s, 0.008, 0.18), (0.5, 0.9, 0.9)),
                 _run("ballot:c", s, (0.81 + d, 0.009, 0.19), (0.9, 0.0, 0.0)),
                 # fairest and accurate, but at another sparsity: not a matched comparison
                 _run("ballot:d", s, (0.85 + d, 0.001, 0.01), (0.9, 0.0, 0.0), sparsity=0.1)]
    return {"methods": ["ballot:a", "ballot:b", "ballot:c", "ballot:d", "lth", "magnitude"], "runs": runs}


def test_choice_uses_validation_accuracy_and_sparsity():
    c = ablation.choose(_results())
    assert c["chosen"] == "ballot:b"
    assert c["scores"]["ballot:a"]["accuracy_vs_first"] == "worse" and not c["scores"]["ballot:a"]["qualifies"]
    assert not c["scores"]["ballot:d"]["matched"] and not c["scores"]["ballot:d"]["qualifies"]
    assert set(c["qualifying"]) == {"ballot:b", "ballot:c"}


def test_choice_across_protocols_and_markdown():
    r = _results()
    both = ablation.choose_across({"p1": ablation.choose(r), "p2": ablation.choose(r)})
    assert both["chosen"] == "ballot:b" and set(both["qualifying"]) == {"ballot:b", "ballot:c"}
    text = ablation.ablation_markdown(r)
    assert "Chosen: **`ballot:b`**" in text and "Per-layer sparsity" in text


def test_validation_metrics_missing_are_counted():
    r = {"runs": [{"method": "lth", "seed": 0, "log": []}]}
    assert ablation.validation_metrics(r["runs"][0]) is None
    assert ablation.on_validation(r)["skipped"] == 1


def test_subset_keeps_one_comparison():
    sub = ablation.subset(_results(), ["ballot:b", "lth"])
    assert sub["methods"] == ["ballot:b", "lth"] and {r["method"] for r in sub["runs"]} == {"ballot:b", "lth"}
