"""Runs every benchmark, each in its own process, and prints one table of all their rows.

    python benchmarks/run_all.py                  # everything (the reference pipeline takes long)
    python benchmarks/run_all.py --smoke          # tiny versions, to check that all start
    python benchmarks/run_all.py --skip pipeline_reference,quickstart

Each benchmark writes ``<out>/<name>.json`` and ``.md``; this script then writes the combined
``<out>/summary.json`` and ``<out>/summary.md``. Every table carries the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.common import Row  # noqa: E402

# Order of the table: cheap ratios first, the reference pipeline last.
BENCHMARKS = ("vote_cost", "vote_step", "masked_step", "compilations", "checkpoint_cost", "input_pipeline", "flops",
              "throughput", "conv_lowerings", "xla_flags",
              "pipeline_reference", "quickstart")


def collect(names, out_dir: Path) -> tuple[list[Row], list[dict]]:
    rows, records = [], []
    for name in names:
        path = out_dir / f"{name}.json"
        if not path.exists():
            rows.append(Row("?", f"{name}: no result file", None, "", "", False))
            continue
        with open(path) as f:
            rec = json.load(f)
        records.append({"benchmark": name, "time": rec.get("time"), "load_before": rec.get("load_before"),
                        "load_after": rec.get("load_after")})
        rows.extend(Row(**r) for r in rec["rows"])
    return rows, records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--only", default="", help="comma-separated benchmark names")
    p.add_argument("--skip", default="", help="comma-separated benchmark names")
    p.add_argument("--collect", action="store_true", help="run nothing: tabulate the result files already in --out")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each benchmark wait up to this long for the 1-min load average to drop below 2.5")
    args = p.parse_args(argv)
    out_dir = Path(args.out) if args.out else common.RESULTS_DIR
    names = [n for n in (args.only.split(",") if args.only else BENCHMARKS) if n and n not in args.skip.split(",")]
    failures = []
    t0 = time.time()
    for name in ([] if args.collect else names):
        cmd = [sys.executable, str(Path(__file__).with_name(f"{name}.py")), f"--out={out_dir}"]
        if args.smoke:
            cmd.append("--smoke")
        if args.wait_quiet:
            cmd.append(f"--wait-quiet={args.wait_quiet}")
        print(f"-- {name}: {common.load_str()}", flush=True)
        rc = subprocess.call(cmd)
        if rc != 0:
            failures.append(name)
            (out_dir / f"{name}.json").unlink(missing_ok=True)
    rows, records = collect(names, out_dir)
    load = common.load_str() + (" [SMOKE]" if args.smoke else "")
    print(f"\n== all benchmarks == {load}, {time.time() - t0:.0f} s")
    print(common.text_table(rows))
    for r in records:
        print(f"   {r['benchmark']}: {r['time']}, {r['load_before']} -> {r['load_after']}")
    summary = {"load_at_end": load, "benchmarks": records, "failed": failures,
               "rows": [r.__dict__ for r in rows]}
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    with open(out_dir / "summary.md", "w") as f:
        f.write(f"# Benchmark summary\n\n{time.strftime('%Y-%m-%d %H:%M:%S')}, {load} at the end\n\n")
        f.write(common.markdown_table(rows) + "\n\n")
        for r in records:
            f.write(f"- {r['benchmark']}: {r['time']}, {r['load_before']} -> {r['load_after']}\n")
    if failures:
        print(f"failed: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
