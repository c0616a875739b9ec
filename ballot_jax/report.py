"""Tables and plots of an experiment: the paper-style comparison and the sparsity sweep.

``write_reports(results, workdir)`` turns the ``results.json`` dict of
:func:`ballot_jax.experiment.run_experiment` into

* ``results.csv`` — one row per method: mean and 95% confidence half-width over seeds of test
  accuracy, CWV, MCD, worst-group accuracy, DP and EO differences, reached sparsity, and Ballot's
  improvement over that method; ``runs.csv`` — one row per (method, seed) with per-group accuracy;
* ``paired.csv`` — every Ballot variant against every baseline, per metric: the per-seed paired
  differences, their mean, 95% t-interval, the seeds where Ballot is better and the verdict;
* ``results.md`` — the paper-style table (accuracy, CWV, MCD as mean ± 95% CI, sparsity),
  Ballot's relative fairness improvement over each baseline, per-group accuracy;
* PNG plots — per-group accuracy per method, accuracy against CWV / MCD, training curves.

The maths is in small pure functions (:func:`mean_ci`, :func:`method_summary`,
:func:`improvements`, :func:`sweep_summary`). Confidence intervals use Student's t with n − 1
degrees of freedom: mean ± t_{0.975, n−1} · s / √n (s the sample standard deviation); with one
seed the half-width is undefined (NaN, shown as "±n/a"). Ballot's improvement over a baseline is
the paper's figure, ``(m_base − m_ballot) / m_base`` averaged over CWV and MCD
(:func:`ballot_jax.fairness.paper_improvement`), computed on the seed means.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ballot_jax import fairness

OURS = "ballot"
METRICS = ("accuracy", "cwv", "mcd")
EXTRA_METRICS = ("worst_group_accuracy", "demographic_parity_difference", "equalized_odds_difference")
CWV_SCALE = 1e3  # CWV is shown ×10³ in the markdown tables (accuracies are fractions in [0, 1])


# ---------------------------------------------------------------------------------------------
# Pure table maths
# ---------------------------------------------------------------------------------------------


def t_critical(dof: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t critical value t_{(1+confidence)/2, dof}; NaN when ``dof < 1``."""
    if dof < 1:
        return float("nan")
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2.0, dof))


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half_width)`` of the t-interval over ``values`` (half-width NaN for n < 2).

    Non-finite values are an error: a NaN metric means a broken run, not a number to average.
    """
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"mean_ci got non-finite values: {x.tolist()}")
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan")
    return mean, t_critical(x.size - 1, confidence) * float(x.std(ddof=1)) / math.sqrt(x.size)


def _metric(run: Mapping[str, Any], key: str) -> float | None:
    if key in run and run[key] is not None:
        return float(run[key])
    test = run.get("test") or {}
    return None if test.get(key) is None else float(test[key])


def method_order(results: Mapping[str, Any]) -> list[str]:
    """Methods in the order of ``results["methods"]`` (else first appearance), Ballot first."""
    names = list(results.get("methods") or [])
    for run in results.get("runs", []):
        if run["method"] not in names:
            names.append(run["method"])
    return sorted(names, key=lambda n: n != OURS)


def method_summary(results: Mapping[str, Any], confidence: float = 0.95) -> list[dict[str, Any]]:
    """One row per method (and ``dense`` first, when present): mean and CI of each metric.

    Row keys: ``method``, ``n`` (seeds), ``seeds``, ``<metric>_mean`` / ``<metric>_ci`` for
    accuracy, cwv, mcd and the extra group metrics, ``sparsity_mean``, ``target_sparsity``,
    ``seconds_mean``, ``per_group_accuracy_mean`` (list), ``accuracy_drop_mean`` (dense − method,
    same seeds, when the dense runs exist).
    """
    rows: list[dict[str, Any]] = []
    groups: dict[str, list[Mapping[str, Any]]] = {}
    dense = list(results.get("dense") or [])
    if dense:
        groups["dense"] = [dict(d["test"], seed=d["seed"], sparsity=0.0, seconds=d.get("seconds")) for d in dense]
    for name in method_order(results):
        groups[name] = [r for r in results.get("runs", []) if r["method"] == name]
    dense_acc = {d["seed"]: float(d["test"]["accuracy"]) for d in dense}
    for name, runs in groups.items():
        if not runs:
            continue
        row: dict[str, Any] = {"method": name, "n": len(runs), "seeds": [int(r["seed"]) for r in runs]}
        for key in METRICS + EXTRA_METRICS:
            vals = [v for v in (_metric(r, key) for r in runs) if v is not None]
            row[f"{key}_mean"], row[f"{key}_ci"] = mean_ci(vals, confidence) if vals else (float("nan"),) * 2
        row["sparsity_mean"] = float(np.mean([float(r.get("sparsity", 0.0)) for r in runs]))
        targets = {r.get("target_sparsity") for r in runs if r.get("target_sparsity") is not None}
        row["target_sparsity"] = float(targets.pop()) if len(targets) == 1 else None
        secs = [float(r["seconds"]) for r in runs if r.get("seconds") is not None]
        row["seconds_mean"] = float(np.mean(secs)) if secs else float("nan")
        pga = [r.get("per_group_accuracy") or (r.get("test") or {}).get("per_group_accuracy") for r in runs]
        row["per_group_accuracy_mean"] = np.mean(np.asarray(pga, dtype=np.float64), axis=0).tolist() if all(
            p is not None for p in pga) else None
        drops = [dense_acc[r["seed"]] - float(r["accuracy"]) for r in runs if name != "dense" and r["seed"] in dense_acc]
        row["accuracy_drop_mean"] = float(np.mean(drops)) if drops else None
        rows.append(row)
    return rows


def improvements(rows: Sequence[Mapping[str, Any]], ours: str = OURS) -> dict[str, dict[str, float | None]]:
    """Ballot's relative fairness improvement over every other method, on the seed means.

    ``{baseline: {"cwv": (b−o)/b, "mcd": (b−o)/b, "paper": mean of the two}}``; a value is
    ``None`` where the baseline's metric is 0 (already perfectly fair: a ratio is undefined).
    Empty when ``ours`` is not among the rows.
    """
    by = {r["method"]: r for r in rows}
    if ours not in by:
        return {}
    o = {k: by[ours][f"{k}_mean"] for k in ("cwv", "mcd")}
    out = {}
    for name, row in by.items():
        if name == "dense" or is_ours(name):
            continue
        b = {k: row[f"{k}_mean"] for k in ("cwv", "mcd")}
        entry: dict[str, float | None] = {}
        for k in ("cwv", "mcd"):
            entry[k] = fairness.relative_improvement(b[k], o[k]) if b[k] > 0 else None
        entry["paper"] = fairness.paper_improvement(b, o) if b["cwv"] > 0 and b["mcd"] > 0 else None
        out[name] = entry
    return out


# A metric's better direction: accuracy up, unfairness down.
HIGHER_IS_BETTER = {"accuracy": True, "cwv": False, "mcd": False, "worst_group_accuracy": True}
SPARSITY_MATCH = 0.005  # reached sparsities further apart than this are not a matched comparison


def is_ours(name: str, ours: str = OURS) -> bool:
    """True for Ballot and its variants (``ballot``, ``ballot:taylor:dense``, …)."""
    return name == ours or name.startswith(ours + ":")


def paired_difference(results: Mapping[str, Any], ours: str, baseline: str, metric: str,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Per-seed paired difference ``ours − baseline`` of a test metric, over the seeds both ran.

    Every seed's methods share one dense model, so the seed is the pairing unit. Returns
    ``{"metric", "ours", "baseline", "n", "seeds", "differences", "mean", "ci", "low", "high",
    "better_count", "verdict", "matched"}``: the t-interval of the mean difference (n − 1 dof),
    how many seeds favour ``ours`` (accuracy higher, CWV/MCD lower), and the verdict from the
    interval alone — "better" / "worse" when it excludes 0, else "not distinguishable" ("n/a"
    below two seeds). ``matched`` is False when the two reached sparsities differ by more than
    :data:`SPARSITY_MATCH` (e.g. the prototype's classifier-only vote): such a pair is not a
    comparison at equal sparsity.
    """
    by = {}
    for r in results.get("runs", []):
        if r["method"] in (ours, baseline):
            by.setdefault(int(r["seed"]), {})[r["method"]] = r
    seeds = sorted(s for s, d in by.items() if ours in d and baseline in d)
    diffs = [_metric(by[s][ours], metric) - _metric(by[s][baseline], metric) for s in seeds]
    higher = HIGHER_IS_BETTER.get(metric, False)
    better = sum(1 for d in diffs if (d > 0 if higher else d < 0))
    out: dict[str, Any] = {"metric": metric, "ours": ours, "baseline": baseline, "n": len(seeds), "seeds": seeds,
                           "differences": diffs, "better_count": better}
    if not diffs:
        out.update(mean=float("nan"), ci=float("nan"), low=float("nan"), high=float("nan"), verdict="n/a", matched=None)
        return out
    mean, ci = mean_ci(diffs, confidence)
    out.update(mean=mean, ci=ci, low=mean - ci, high=mean + ci)
    if not np.isfinite(ci):
        out["verdict"] = "n/a (one seed)"
    elif out["low"] > 0 or out["high"] < 0:
        out["verdict"] = "better" if (out["low"] > 0) == higher else "worse"
    else:
        out["verdict"] = "not distinguishable"
    gap = [abs(float(by[s][ours].get("sparsity", 0)) - float(by[s][baseline].get("sparsity", 0))) for s in seeds]
    out["matched"] = bool(max(gap) <= SPARSITY_MATCH)
    return out


def paired_comparisons(results: Mapping[str, Any], metrics: Sequence[str] = METRICS,
                       confidence: float = 0.95) -> list[dict[str, Any]]:
    """:func:`paired_difference` of every Ballot variant against every baseline, per metric."""
    names = method_order(results)
    ours = [n for n in names if is_ours(n)]
    baselines = [n for n in names if not is_ours(n)]
    return [paired_difference(results, o, b, m, confidence) for o in ours for b in baselines for m in metrics]


def within_budget(accuracy: float, dense_accuracy: float, budget: float) -> bool:
    """The paper's accuracy constraint: ``dense_accuracy − accuracy ≤ budget`` (ε)."""
    return float(dense_accuracy) - float(accuracy) <= float(budget) + 1e-12


def sweep_summary(per_sparsity: Mapping[float, Mapping[str, Any]], accuracy_budget: float) -> dict[str, Any]:
    """Summary of a sweep: per sparsity, the method rows and whether each stays within ε.

    Returns ``{"accuracy_budget", "sparsities": [...], "rows": [{"sparsity", "method", metric
    means and CIs, "dense_accuracy", "within_budget", "improvement"}]}``.
    """
    out_rows = []
    for s in sorted(per_sparsity):
        rows = method_summary(per_sparsity[s])
        imp = improvements(rows)
        dense = next((r for r in rows if r["method"] == "dense"), None)
        for r in rows:
            if r["method"] == "dense":
                continue
            entry = {"sparsity": float(s), **{k: v for k, v in r.items() if k != "per_group_accuracy_mean"}}
            entry["dense_accuracy"] = dense["accuracy_mean"] if dense else None
            entry["within_budget"] = (within_budget(r["accuracy_mean"], dense["accuracy_mean"], accuracy_budget)
                                      if dense else None)
            entry["improvement"] = (imp.get(r["method"]) or {}).get("paper")
            out_rows.append(entry)
    return {"accuracy_budget": float(accuracy_budget), "sparsities": sorted(float(s) for s in per_sparsity),
            "rows": out_rows}


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def fmt_ci(mean: float, ci: float, scale: float = 100.0, digits: int = 2) -> str:
    """``"85.31 ± 1.20"`` (values × ``scale``); ``"85.31 ± n/a"`` when the CI is undefined."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    half = "n/a" if ci is None or not np.isfinite(ci) else f"{ci * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {half}"


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:+.{digits}f}%"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def comparison_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The paper-style markdown table: accuracy, CWV, MCD (mean ± 95% CI), sparsity, seeds."""
    body = []
    for r in rows:
        drop = r.get("accuracy_drop_mean")
        body.append([
            r["method"],
            f"{100 * r['sparsity_mean']:.1f}%",
            fmt_ci(r["accuracy_mean"], r["accuracy_ci"]),
            "—" if drop is None else f"{100 * drop:+.2f}",
            fmt_ci(r["cwv_mean"], r["cwv_ci"], scale=CWV_SCALE, digits=3),
            fmt_ci(r["mcd_mean"], r["mcd_ci"]),
            r["n"],
        ])
    return md_table(["method", "sparsity", "accuracy (%)", "acc. drop vs dense (pp)", "CWV (×10⁻³)", "MCD (%)", "seeds"],
                     body)


def improvement_table(imp: Mapping[str, Mapping[str, float | None]]) -> str:
    """Ballot's fairness improvement over each baseline (CWV, MCD, their mean = the paper's figure)."""
    body = [[name, _pct(v["cwv"]), _pct(v["mcd"]), _pct(v["paper"])] for name, v in imp.items()]
    return md_table(["Ballot vs", "CWV improvement", "MCD improvement", "mean (paper's figure)"], body)


def _signed(x: float, scale: float, digits: int) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x * scale:+.{digits}f}"


def paired_table(pairs: Sequence[Mapping[str, Any]]) -> str:
    """Ballot − baseline per seed, paired: mean [95% interval], seeds where Ballot is better, verdict.

    Accuracy and MCD in percentage points, CWV ×10⁻³; one row per (Ballot variant, baseline).
    """
    rows: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for p in pairs:
        rows.setdefault((p["ours"], p["baseline"]), {})[p["metric"]] = p
    body = []
    for (ours, base), by in rows.items():
        cells = [ours, base]
        for metric in METRICS:
            p = by.get(metric)
            if p is None:
                cells.append("—")
                continue
            scale, digits = (CWV_SCALE, 3) if metric == "cwv" else (100.0, 2)
            cells.append(f"{_signed(p['mean'], scale, digits)} [{_signed(p['low'], scale, digits)}, "
                         f"{_signed(p['high'], scale, digits)}] {p['better_count']}/{p['n']} **{p['verdict']}**")
        matched = all(p.get("matched") is not False for p in by.values())
        cells.append("yes" if matched else "**no** (sparsities differ)")
        body.append(cells)
    return md_table(["Ballot", "vs", "Δ accuracy (pp)", "Δ CWV (×10⁻³)", "Δ MCD (pp)", "same sparsity"], body)


PAIRED_NOTE = ("Paired by seed (each seed's methods share one dense model): Ballot − baseline on the test split, "
               "mean [95% t-interval], seeds where Ballot is better / seeds, and the verdict from the interval "
               "(\"better\" / \"worse\" only when it excludes 0). Accuracy better = higher; CWV, MCD better = lower.")


def group_metrics_table(rows: Sequence[Mapping[str, Any]], sensitive: bool = True) -> str:
    """Worst-group accuracy, run time and, for sensitive-attribute groups (``sensitive``), the
    demographic-parity and equalised-odds differences (mean ± 95% CI).

    With class-wise groups DP/EO compare a group's predictions with its own label, which says
    nothing about fairness, so they are left out.
    """
    header = ["method", "worst-group acc (%)"] + (["DP difference (%)", "EO difference (%)"] if sensitive else [])
    body = []
    for r in rows:
        row = [r["method"], fmt_ci(r["worst_group_accuracy_mean"], r["worst_group_accuracy_ci"])]
        if sensitive:
            row += [fmt_ci(r["demographic_parity_difference_mean"], r["demographic_parity_difference_ci"]),
                    fmt_ci(r["equalized_odds_difference_mean"], r["equalized_odds_difference_ci"])]
        row.append(f"{r['seconds_mean']:.0f}" if np.isfinite(r["seconds_mean"]) else "n/a")
        body.append(row)
    return md_table(header + ["seconds / run"], body)


def per_group_table(rows: Sequence[Mapping[str, Any]], group_names: Sequence[str], max_groups: int = 20) -> str:
    """Mean per-group test accuracy (%) of each method; omitted above ``max_groups`` groups."""
    if len(group_names) > max_groups:
        return f"({len(group_names)} groups: see per_group_accuracy.png and runs.csv)\n"
    body = [[r["method"]] + [f"{100 * a:.1f}" for a in (r["per_group_accuracy_mean"] or [])] for r in rows]
    return md_table(["method"] + [str(g) for g in group_names], body)


def setup_line(results: Mapping[str, Any]) -> str:
    c = results.get("config", {})
    info = (results.get("task") or {}).get("info", {})
    parts = [f"dataset **{c.get('dataset')}**", f"label {info.get('label', c.get('label'))}",
             f"groups {info.get('groups', c.get('groups'))} ({(results.get('task') or {}).get('num_groups')})",
             f"model {c.get('model')} (width {c.get('width')})", f"image {info.get('image_size', c.get('image_size'))}px",
             f"target sparsity {c.get('sparsity')}", f"epochs: dense {c.get('dense_epochs')}, "
             f"vote {(c.get('ballot') or {}).get('vote_epochs') or c.get('retrain_epochs')}, retrain {c.get('retrain_epochs')}",
             f"batch {c.get('batch_size')}, {c.get('optimizer')} lr {c.get('learning_rate')} ({c.get('schedule')})"]
    return "; ".join(parts)


def summary_markdown(results: Mapping[str, Any]) -> str:
    """The one-screen summary: setup line, comparison table and Ballot's improvement."""
    rows = method_summary(results)
    out = [setup_line(results), "", comparison_table(rows)]
    pairs = paired_comparisons(results)
    if pairs:
        out += [PAIRED_NOTE, "", paired_table(pairs)]
    imp = improvements(rows)
    if imp:
        out += ["Ballot's fairness improvement, (m_base − m_ballot) / m_base on the seed means "
                "(positive: Ballot fairer):", "", improvement_table(imp)]
    return "\n".join(out)


def results_markdown(results: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """The whole ``results.md``."""
    rows = method_summary(results)
    c = results.get("config", {})
    title = c.get("name", "experiment") + (f":{c['variant']}" if c.get("variant") else "")
    out = [f"# Results: {title}", "", setup_line(results), "",
           "Test-set metrics, mean ± 95% confidence half-width over seeds (Student t, n − 1 dof). "
           "CWV = (1/G) Σ_g (acc_g − acc)², MCD = max_g acc_g − min_g acc_g; lower is fairer.", "",
           comparison_table(rows)]
    pairs = paired_comparisons(results)
    if pairs:
        out += ["## Paired differences: Ballot − baseline", "", PAIRED_NOTE, "", paired_table(pairs)]
    imp = improvements(rows)
    if imp:
        out += ["## Ballot's fairness improvement", "",
                "(m_base − m_ballot) / m_base per metric on the seed means, and its mean over CWV and MCD "
                "(the figure the paper reports). Positive: Ballot is fairer.", "", improvement_table(imp)]
    groups = ((results.get("task") or {}).get("info") or {}).get("groups", c.get("groups"))
    out += ["## Group metrics", "", group_metrics_table(rows, sensitive=groups != "classes")]
    names = (results.get("task") or {}).get("group_names") or []
    if names:
        out += ["## Per-group test accuracy (%, seed mean)", "", per_group_table(rows, names)]
    if plots:
        out += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not np.isfinite(v) else f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return "" if v is None else v


def write_csv(path: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Writes ``rows`` (dicts) with ``columns``; NaN and None become empty cells."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([_csv_value(r.get(c)) for c in columns])
    return path


def summary_rows_for_csv(results: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``results.csv`` rows (one per method) and their columns."""
    rows = method_summary(results)
    imp = improvements(rows)
    cols = ["method", "n", "target_sparsity", "sparsity_mean"]
    for k in METRICS + EXTRA_METRICS:
        cols += [f"{k}_mean", f"{k}_ci"]
    cols += ["accuracy_drop_mean", "seconds_mean", "ballot_improvement_cwv", "ballot_improvement_mcd",
             "ballot_improvement_mean"]
    for m in METRICS:
        cols += [f"paired_{m}_{k}" for k in ("mean", "low", "high", "better", "verdict")]
    for r in rows:
        v = imp.get(r["method"], {})
        r["ballot_improvement_cwv"], r["ballot_improvement_mcd"], r["ballot_improvement_mean"] = (
            v.get("cwv"), v.get("mcd"), v.get("paper"))
        if r["method"] != "dense" and not is_ours(r["method"]) and any(x["method"] == OURS for x in rows):
            for m in METRICS:  # Ballot − this baseline, paired by seed
                p = paired_difference(results, OURS, r["method"], m)
                r.update({f"paired_{m}_mean": p["mean"], f"paired_{m}_low": p["low"], f"paired_{m}_high": p["high"],
                          f"paired_{m}_better": f"{p['better_count']}/{p['n']}", f"paired_{m}_verdict": p["verdict"]})
    return rows, cols


PAIRED_COLUMNS = ["ours", "baseline", "metric", "n", "mean", "ci", "low", "high", "better_count", "verdict", "matched",
                  "seeds", "differences"]


def runs_rows_for_csv(results: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``runs.csv`` rows (one per method × seed, dense included) and their columns."""
    names = (results.get("task") or {}).get("group_names") or []
    out = []
    entries = [dict(d["test"], method="dense", seed=d["seed"], sparsity=0.0, seconds=d.get("seconds"))
               for d in results.get("dense") or []]
    entries += list(results.get("runs", []))
    for r in entries:
        row = {"method": r["method"], "seed": r["seed"], "sparsity": r.get("sparsity"),
               "target_sparsity": r.get("target_sparsity")}
        for k in METRICS + EXTRA_METRICS:
            row[k] = _metric(r, k)
        row["seconds"] = r.get("seconds")
        pga = r.get("per_group_accuracy") or (r.get("test") or {}).get("per_group_accuracy") or []
        for i, a in enumerate(pga):
            row[f"acc[{names[i] if i < len(names) else i}]"] = a
        out.append(row)
    cols = ["method", "seed", "target_sparsity", "sparsity", *METRICS, *EXTRA_METRICS, "seconds"]
    cols += [f"acc[{n}]" for n in names]
    return out, cols


def _dense_logs(results: Mapping[str, Any], workdir: str) -> dict[int, list]:
    out = {}
    for d in results.get("dense") or []:
        path = os.path.join(workdir, f"seed_{d['seed']}", "dense", "result.json")
        if os.path.exists(path):
            with open(path) as f:
                out[int(d["seed"])] = json.load(f).get("log", [])
    return out


def training_curves(log: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch points of a run's stage log: ``[{"x", "stage", "epoch", "loss", "accuracy"}]``.

    ``x`` counts epochs across the stages in order (1, 2, ...), so the stages of one run lie
    end to end on one axis.
    """
    points, x = [], 0
    for e in log:
        if e.get("phase") != "epoch" or "train_loss" not in e:
            continue
        x += 1
        points.append({"x": x, "stage": e["stage"], "epoch": e.get("epoch"), "loss": float(e["train_loss"]),
                       "accuracy": float(e.get("train_accuracy", float("nan")))})
    return points


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colors(names: Sequence[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {n: ("black" if n == "dense" else cmap(i % 10)) for i, n in enumerate(names)}


def plot_per_group(rows: Sequence[Mapping[str, Any]], group_names: Sequence[str], path: str) -> str:
    """Grouped bars of mean per-group accuracy per method (sorted curves above 20 groups)."""
    plt = _plt()
    rows = [r for r in rows if r.get("per_group_accuracy_mean")]
    colors = _colors([r["method"] for r in rows])
    g = len(group_names)
    fig, ax = plt.subplots(figsize=(max(6.0, min(0.5 * g * max(len(rows), 1) / 3 + 3, 16)), 4))
    if g <= 20:
        width = 0.8 / max(len(rows), 1)
        for i, r in enumerate(rows):
            ax.bar(np.arange(g) + (i - (len(rows) - 1) / 2) * width, np.asarray(r["per_group_accuracy_mean"]) * 100,
                   width, label=r["method"], color=colors[r["method"]])
        ax.set_xticks(np.arange(g))
        ax.set_xticklabels([str(n) for n in group_names], rotation=45 if g > 8 else 0, ha="right" if g > 8 else "center")
        ax.set_xlabel("group")
    else:
        for r in rows:
            ax.plot(np.sort(np.asarray(r["per_group_accuracy_mean"]) * 100), label=r["method"], color=colors[r["method"]])
        ax.set_xlabel(f"groups sorted by accuracy ({g})")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Per-group test accuracy (seed mean)")
    ax.legend(fontsize=8, ncol=min(len(rows), 4))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_fairness(results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], path: str) -> str:
    """Accuracy against CWV and against MCD: one small dot per seed, a marker with 95% CI per method."""
    plt = _plt()
    colors = _colors([r["method"] for r in rows])
    runs = list(results.get("runs", [])) + [dict(d["test"], method="dense", seed=d["seed"])
                                            for d in results.get("dense") or []]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, scale, label in ((axes[0], "cwv", CWV_SCALE, "CWV (×10⁻³)"), (axes[1], "mcd", 100.0, "MCD (%)")):
        for r in rows:
            m = r["method"]
            pts = [(float(x[key]) * scale, float(x["accuracy"]) * 100) for x in runs if x["method"] == m]
            if pts:
                ax.scatter(*zip(*pts), s=12, alpha=0.35, color=colors[m])
            ci = lambda v: 0.0 if v is None or not np.isfinite(v) else v  # noqa: E731
            ax.errorbar(r[f"{key}_mean"] * scale, r["accuracy_mean"] * 100, xerr=ci(r[f"{key}_ci"]) * scale,
                        yerr=ci(r["accuracy_ci"]) * 100, fmt="o" if m != OURS else "*", ms=9 if m == OURS else 6,
                        color=colors[m], label=m, capsize=3)
        ax.set_xlabel(label + " — lower is fairer")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Accuracy vs fairness (dots: seeds; markers: mean ± 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(results: Mapping[str, Any], workdir: str, path: str) -> str:
    """Training loss and accuracy per epoch of every run (stages end to end), one row per method."""
    plt = _plt()
    logs: dict[str, dict[int, list]] = {"dense": _dense_logs(results, workdir)}
    for r in results.get("runs", []):
        logs.setdefault(r["method"], {})[int(r["seed"])] = r.get("log", [])
    logs = {m: v for m, v in logs.items() if any(training_curves(lg) for lg in v.values())}
    names = list(logs)
    fig, axes = plt.subplots(max(len(names), 1), 2, figsize=(10, 2.2 * max(len(names), 1)), squeeze=False)
    for i, m in enumerate(names):
        for seed, lg in sorted(logs[m].items()):
            pts = training_curves(lg)
            xs = [p["x"] for p in pts]
            axes[i][0].plot(xs, [p["loss"] for p in pts], marker=".", lw=1, label=f"seed {seed}")
            axes[i][1].plot(xs, [100 * p["accuracy"] for p in pts], marker=".", lw=1)
            if seed == min(logs[m]):  # stage boundaries, from the first seed
                for j in range(1, len(pts)):
                    if pts[j]["stage"] != pts[j - 1]["stage"]:
                        for ax in axes[i]:
                            ax.axvline(pts[j]["x"] - 0.5, color="gray", ls=":", lw=0.8)
        axes[i][0].set_ylabel(f"{m}\ntrain loss")
        axes[i][1].set_ylabel("train acc (%)")
        stages = list(dict.fromkeys(p["stage"] for p in training_curves(next(iter(logs[m].values())))))
        axes[i][1].set_title(" → ".join(stages), fontsize=8)
        axes[i][0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("epoch (stages end to end)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_reports(results: Mapping[str, Any], workdir: str, *, plots: bool = True) -> list[str]:
    """Writes results.csv, runs.csv, results.md and (``plots``) the PNG plots; returns the paths."""
    os.makedirs(workdir, exist_ok=True)
    paths = []
    rows, cols = summary_rows_for_csv(results)
    paths.append(write_csv(os.path.join(workdir, "results.csv"), rows, cols))
    run_rows, run_cols = runs_rows_for_csv(results)
    paths.append(write_csv(os.path.join(workdir, "runs.csv"), run_rows, run_cols))
    pairs = paired_comparisons(results)
    if pairs:
        paths.append(write_csv(os.path.join(workdir, "paired.csv"), pairs, PAIRED_COLUMNS))
    pngs: list[str] = []
    if plots and results.get("runs"):
        summary = method_summary(results)
        names = (results.get("task") or {}).get("group_names") or []
        if names:
            pngs.append(plot_per_group(summary, names, os.path.join(workdir, "per_group_accuracy.png")))
        pngs.append(plot_accuracy_fairness(results, summary, os.path.join(workdir, "accuracy_vs_fairness.png")))
        pngs.append(plot_training_curves(results, workdir, os.path.join(workdir, "training_curves.png")))
    md = os.path.join(workdir, "results.md")
    with open(md, "w") as f:
        f.write(results_markdown(results, pngs))
    paths.append(md)
    return paths + pngs


# ---------------------------------------------------------------------------------------------
# Sweep
# ---------------------------------------------------------------------------------------------


def sweep_markdown(summary: Mapping[str, Any]) -> str:
    """``sweep.md``: per sparsity and method, accuracy / CWV / MCD and whether it stays within ε."""
    eps = summary["accuracy_budget"]
    body = []
    for r in summary["rows"]:
        ok = r["within_budget"]
        body.append([f"{100 * r['sparsity']:g}%", r["method"], fmt_ci(r["accuracy_mean"], r["accuracy_ci"]),
                     "n/a" if r.get("dense_accuracy") is None else f"{100 * r['dense_accuracy']:.2f}",
                     "n/a" if ok is None else ("yes" if ok else "**no**"),
                     fmt_ci(r["cwv_mean"], r["cwv_ci"], scale=CWV_SCALE, digits=3), fmt_ci(r["mcd_mean"], r["mcd_ci"]),
                     _pct(r.get("improvement")) if r["method"] != OURS else "—", r["n"]])
    head = (f"# Sparsity sweep\n\nTest metrics (mean ± 95% CI over seeds) at each target sparsity Ω. "
            f"\"within ε\": dense accuracy − accuracy ≤ ε = {100 * eps:g} pp (the paper's accuracy constraint). "
            "Last column: Ballot's fairness improvement over the method (mean over CWV and MCD).\n\n")
    return head + md_table(["Ω", "method", "accuracy (%)", "dense acc (%)", f"within ε", "CWV (×10⁻³)", "MCD (%)",
                             "Ballot impr.", "seeds"], body)


def plot_sweep(summary: Mapping[str, Any], path: str) -> str:
    """Accuracy, CWV and MCD against target sparsity; hollow markers where a method breaks ε."""
    plt = _plt()
    names = list(dict.fromkeys(r["method"] for r in summary["rows"]))
    colors = _colors(names)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for m in names:
        rs = sorted((r for r in summary["rows"] if r["method"] == m), key=lambda r: r["sparsity"])
        xs = [100 * r["sparsity"] for r in rs]
        for ax, key, scale in ((axes[0], "accuracy", 100), (axes[1], "cwv", CWV_SCALE), (axes[2], "mcd", 100)):
            ys = [r[f"{key}_mean"] * scale for r in rs]
            err = [0.0 if not np.isfinite(r[f"{key}_ci"]) else r[f"{key}_ci"] * scale for r in rs]
            ax.errorbar(xs, ys, yerr=err, color=colors[m], lw=1.5 if m == OURS else 1, capsize=2,
                        label=m if key == "accuracy" else None)
            for x, y, r in zip(xs, ys, rs):
                ax.scatter([x], [y], s=36, color=colors[m] if r["within_budget"] is not False else "white",
                           edgecolors=colors[m], zorder=3)
    dense = sorted({(r["sparsity"], r["dense_accuracy"]) for r in summary["rows"] if r.get("dense_accuracy") is not None})
    if dense:
        xs = [100 * s for s, _ in dense]
        axes[0].plot(xs, [100 * a for _, a in dense], "k--", lw=1, label="dense")
        axes[0].plot(xs, [100 * (a - summary["accuracy_budget"]) for _, a in dense], "k:", lw=1, label="dense − ε")
    for ax, label in zip(axes, ("test accuracy (%)", "CWV (×10⁻³)", "MCD (%)")):
        ax.set_xlabel("target sparsity Ω (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Sparsity sweep (hollow: outside the accuracy budget ε)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_sweep_reports(summary: Mapping[str, Any], workdir: str, *, plots: bool = True) -> list[str]:
    """Writes sweep.json, sweep.csv, sweep.md and (``plots``) sweep.png; returns the paths."""
    os.makedirs(workdir, exist_ok=True)
    paths = []
    path = os.path.join(workdir, "sweep.json")
    with open(path, "w") as f:
        json.dump(_finite(summary), f, indent=1)
    paths.append(path)
    cols = ["sparsity", "method", "n", "sparsity_mean"] + [f"{k}_{s}" for k in METRICS for s in ("mean", "ci")]
    cols += ["dense_accuracy", "within_budget", "improvement"]
    paths.append(write_csv(os.path.join(workdir, "sweep.csv"), summary["rows"], cols))
    pngs = [plot_sweep(summary, os.path.join(workdir, "sweep.png"))] if plots and summary["rows"] else []
    md = os.path.join(workdir, "sweep.md")
    with open(md, "w") as f:
        f.write(sweep_markdown(summary) + "".join(f"\n![{os.path.basename(p)}]({os.path.basename(p)})\n" for p in pngs))
    paths.append(md)
    return paths + pngs


def _finite(x: Any) -> Any:
    """NaN/inf → None, recursively (strict JSON)."""
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
