"""The selection-criteria ablation: Ballot variants side by side, and a default chosen on validation.

A comparison run whose ``methods`` hold several Ballot variants (``ballot``,
``ballot:taylor:dense``, ``ballot:magnitude_veto:trained``, …) and the baselines shares each
seed's dense model among all of them. From its ``results.json`` this module

* reads every run's **validation** metrics (the end of its last stage) — the only split a
  default may be chosen on — next to its test metrics;
* pairs every variant with LTH and magnitude pruning by seed, on validation (for the choice) and
  on test (for the report), with :func:`ballot_jax.report.paired_difference`;
* chooses the default by :func:`choose`: among the variants at matched sparsity whose validation
  accuracy is not distinguishably below LTH's, the one with the lowest mean relative validation
  unfairness (CWV and MCD, against LTH and magnitude); if none qualifies, the most accurate one;
* writes the tables as markdown (:func:`ablation_markdown`): test metrics, paired test
  differences against LTH and magnitude, the share of the magnitude ticket each mask keeps, and
  per-layer sparsity.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ballot_jax import report

BASELINES = ("lth", "magnitude")
VAL_METRICS = ("accuracy", "cwv", "mcd")


def validation_metrics(run: Mapping[str, Any]) -> dict[str, float] | None:
    """The validation metrics a run logged at the end of its last stage (``None`` if absent)."""
    ends = [e for e in run.get("log", []) if e.get("phase") == "end" and isinstance(e.get("val"), Mapping)]
    if not ends:
        return None
    val = ends[-1]["val"]
    return {k: float(val[k]) for k in VAL_METRICS}


def on_validation(results: Mapping[str, Any]) -> dict[str, Any]:
    """A results dict whose runs carry their validation metrics in place of the test ones.

    Runs without logged validation metrics are left out (and counted in ``"skipped"``).
    """
    runs, skipped = [], 0
    for r in results.get("runs", []):
        val = validation_metrics(r)
        if val is None:
            skipped += 1
            continue
        runs.append({"method": r["method"], "seed": r["seed"], "sparsity": r.get("sparsity"), **val})
    return {"methods": results.get("methods"), "runs": runs, "skipped": skipped}


def subset(results: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The results of ``names`` only (and the dense runs), e.g. one comparison out of an ablation."""
    out = dict(results)
    out["methods"] = list(names)
    out["runs"] = [r for r in results.get("runs", []) if r["method"] in names]
    return out


def variants(results: Mapping[str, Any]) -> list[str]:
    """The Ballot variants of a results dict, in their configured order."""
    return [n for n in report.method_order(results) if report.is_ours(n)]


def _mean(runs: Sequence[Mapping[str, Any]], key: str) -> float:
    vals = [float(r[key]) for r in runs if r.get(key) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def ticket_share(run: Mapping[str, Any]) -> float | None:
    """The share of the magnitude ticket a Ballot run's mask keeps (logged at the vote's end)."""
    for e in run.get("log", []):
        if e.get("stage") == "ticket" and e.get("phase") == "end" and "ticket_share_kept" in e:
            return float(e["ticket_share_kept"])
    return None


def choose(results: Mapping[str, Any], baselines: Sequence[str] = BASELINES) -> dict[str, Any]:
    """The default chosen on the validation split (never on test).

    Qualifying: matched sparsity against every baseline, and a paired validation accuracy
    difference against ``baselines[0]`` (LTH) whose interval does not lie below 0. Among those,
    the lowest mean of val_m(variant) / val_m(baseline) over m ∈ {CWV, MCD} and the baselines;
    without any qualifying variant, the highest mean validation accuracy. Returns ``{"chosen",
    "qualifying", "reason", "scores"}``.
    """
    val = on_validation(results)
    scores: dict[str, dict[str, Any]] = {}
    for name in variants(results):
        entry: dict[str, Any] = {"accuracy": _mean([r for r in val["runs"] if r["method"] == name], "accuracy")}
        acc = report.paired_difference(val, name, baselines[0], "accuracy")
        ratios, matched = [], True
        for b in baselines:
            for m in ("cwv", "mcd"):
                p = report.paired_difference(val, name, b, m)
                matched &= p.get("matched") is not False
                base = _mean([r for r in val["runs"] if r["method"] == b], m)
                ours = _mean([r for r in val["runs"] if r["method"] == name], m)
                if base > 0:
                    ratios.append(ours / base)
        entry.update(accuracy_vs_first=acc["verdict"], accuracy_high=acc["high"], matched=matched,
                     unfairness_ratio=float(np.mean(ratios)) if ratios else float("nan"),
                     qualifies=bool(matched and acc["n"] > 0 and not acc["high"] < 0))
        scores[name] = entry
    qualifying = [n for n, e in scores.items() if e["qualifies"]]
    if qualifying:
        chosen = min(qualifying, key=lambda n: scores[n]["unfairness_ratio"])
        reason = (f"lowest validation unfairness relative to {', '.join(baselines)} among the variants whose "
                  f"validation accuracy is not below {baselines[0]}'s (paired interval)")
    elif scores:
        chosen = max(scores, key=lambda n: scores[n]["accuracy"])
        reason = f"no variant keeps {baselines[0]}'s validation accuracy; the most accurate one"
    else:
        chosen, reason = None, "no Ballot variant in the results"
    return {"chosen": chosen, "qualifying": qualifying, "reason": reason, "scores": scores}


def choose_across(choices: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One default for several protocols (``{protocol: choose(results)}``), still on validation only.

    Among the variants that qualify in every protocol, the lowest mean over the protocols of the
    validation unfairness ratio of :func:`choose`. Returns ``{"chosen", "qualifying", "mean_ratio"}``.
    """
    names = [set(c["scores"]) for c in choices.values()]
    common = set.intersection(*names) if names else set()
    qualifying = sorted(n for n in common if all(c["scores"][n]["qualifies"] for c in choices.values()))
    mean_ratio = {n: float(np.mean([c["scores"][n]["unfairness_ratio"] for c in choices.values()])) for n in common}
    chosen = min(qualifying, key=lambda n: mean_ratio[n]) if qualifying else None
    return {"chosen": chosen, "qualifying": qualifying, "mean_ratio": mean_ratio}


def _fmt(x: float, scale: float = 100.0, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x * scale:.{digits}f}"


def variant_table(results: Mapping[str, Any], choice: Mapping[str, Any]) -> str:
    """Per method: test accuracy / CWV / MCD (mean ± 95% CI), validation means, ticket share kept."""
    rows = {r["method"]: r for r in report.method_summary(results)}
    val = on_validation(results)
    body = []
    for name in report.method_order(results):
        r = rows.get(name)
        if r is None:
            continue
        vruns = [x for x in val["runs"] if x["method"] == name]
        shares = [s for s in (ticket_share(x) for x in results["runs"] if x["method"] == name) if s is not None]
        mark = " ← default" if name == choice.get("chosen") else ""
        body.append([f"`{name}`{mark}", f"{100 * r['sparsity_mean']:.1f}%",
                     report.fmt_ci(r["accuracy_mean"], r["accuracy_ci"]),
                     report.fmt_ci(r["cwv_mean"], r["cwv_ci"], scale=report.CWV_SCALE, digits=3),
                     report.fmt_ci(r["mcd_mean"], r["mcd_ci"]),
                     _fmt(_mean(vruns, "accuracy")), _fmt(_mean(vruns, "cwv"), report.CWV_SCALE, 3),
                     _fmt(_mean(vruns, "mcd")), _fmt(float(np.mean(shares))) if shares else "—", r["n"]])
    return report.md_table(["method", "sparsity", "test acc (%)", "test CWV (×10⁻³)", "test MCD (%)", "val acc (%)",
                             "val CWV (×10⁻³)", "val MCD (%)", "ticket kept (%)", "seeds"], body)


def layer_table(results: Mapping[str, Any]) -> str:
    """Per-layer sparsity (%) of each method's final mask, mean over seeds."""
    per: dict[str, dict[str, list[float]]] = {}
    for r in results.get("runs", []):
        for layer, d in ((r.get("mask") or {}).get("layers") or {}).items():
            per.setdefault(r["method"], {}).setdefault(layer, []).append(1.0 - float(d["density"]))
    if not per:
        return "(no mask summaries)\n"
    layers = list(next(iter(per.values())))
    names = [n for n in report.method_order(results) if n in per]
    body = [[f"`{layer}`"] + [_fmt(float(np.mean(per[n].get(layer, [np.nan]))), 100.0, 1) for n in names]
            for layer in layers]
    return report.md_table(["layer"] + [f"`{n}`" for n in names], body)


def ablation_markdown(results: Mapping[str, Any], baselines: Sequence[str] = BASELINES) -> str:
    """The ablation's tables and the choice of the default, as markdown."""
    choice = choose(results, baselines)
    pairs = [p for p in report.paired_comparisons(results) if p["baseline"] in baselines]
    out = [report.setup_line(results), "",
           "### Every method (test split; validation means for the choice)", "", variant_table(results, choice),
           "### Paired test differences, Ballot variant − baseline", "", report.PAIRED_NOTE, "",
           report.paired_table(pairs),
           "### Choice of the default (validation split only)", "",
           f"Chosen: **`{choice['chosen']}`** — {choice['reason']}.", ""]
    body = [[f"`{n}`", _fmt(e["accuracy"]), e["accuracy_vs_first"], "yes" if e["matched"] else "no",
             "n/a" if not np.isfinite(e["unfairness_ratio"]) else f"{e['unfairness_ratio']:.3f}",
             "yes" if e["qualifies"] else "no"] for n, e in choice["scores"].items()]
    out += [report.md_table(["variant", "val acc (%)", f"val acc vs {baselines[0]} (paired)", "same sparsity",
                              "val unfairness / baselines'", "qualifies"], body),
            "### Per-layer sparsity (%, seed mean)", "", layer_table(results)]
    return "\n".join(out)
