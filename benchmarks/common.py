"""Shared pieces of the benchmark scripts: result rows and tables, paired timing, compile
accounting, and the small models, contexts and synthetic data the benchmarks run on.

Every benchmark measures ratios inside one process (both sides of a ratio alternate on the same
machine state), so a loaded machine slows both sides alike; the 1-minute load average is printed
and stored with every table because absolute times on a shared 2-core machine mean little.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import re
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ballot_jax import loop  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
# Prepared TFDS data and decoded arrays live outside the repository (UTKFace must never be copied in).
CACHE_DIR = Path(os.environ.get("BALLOT_BENCH_CACHE", str(Path(tempfile.gettempdir()) / "ballot_jax_bench")))
UTK_ARCHIVE = Path(os.environ.get("BALLOT_UTK_ARCHIVE", str(ROOT.parent / "shared" / "data" / "UTKFace.tar.gz")))


# ---------------------------------------------------------------------------------------------
# Rows, tables, result files
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One measured quantity with its goal. ``met`` is None for information-only rows."""

    id: str
    what: str
    value: float | None
    unit: str
    goal: str
    met: bool | None
    note: str = ""

    def value_str(self) -> str:
        v = self.value
        if v is None:
            return "n/a"
        if self.unit == "x":
            return f"{v:.2f}x"
        if self.unit == "%":
            return f"{v:.1f}%"
        if self.unit in ("count", "compiles"):
            return f"{int(v)}"
        if abs(v) >= 100:
            return f"{v:.0f} {self.unit}"
        return f"{v:.3g} {self.unit}"

    def met_str(self) -> str:
        return {True: "yes", False: "NO", None: "-"}[self.met]


def process_age_seconds() -> float:
    """Seconds since this process started (Linux /proc: what the peer prototype reports too)."""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return time.time() - (boot + start_ticks / os.sysconf("SC_CLK_TCK"))


def loadavg() -> tuple[float, float, float]:
    """(1, 5, 15)-minute load averages."""
    return os.getloadavg()


def load_str() -> str:
    a, b, c = loadavg()
    return f"load average {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} CPUs"


def wait_for_quiet(max_load: float = 2.5, max_wait_s: float = 0.0, poll_s: float = 15.0) -> float:
    """Waits (at most ``max_wait_s``) until the 1-minute load average is below ``max_load``."""
    t0 = time.time()
    while loadavg()[0] >= max_load and time.time() - t0 < max_wait_s:
        time.sleep(poll_s)
    return loadavg()[0]


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| id | measurement | value | goal | met | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        note = r.note.replace("|", "/")
        lines.append(f"| {r.id} | {r.what} | {r.value_str()} | {r.goal} | {r.met_str()} | {note} |")
    return "\n".join(lines)


def text_table(rows: Sequence[Row]) -> str:
    head = ("id", "measurement", "value", "goal", "met", "note")
    body = [(r.id, r.what, r.value_str(), r.goal, r.met_str(), r.note) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(5)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths), "-" * 4)]
    out += [fmt.format(*row) for row in body]
    return "\n".join(out)


def report(name: str, rows: Sequence[Row], *, out_dir: str | Path | None = None, meta: Mapping[str, Any] | None = None,
           load_before: str | None = None, smoke: bool = False) -> dict[str, Any]:
    """Prints the table (with the load average) and writes ``<out_dir>/<name>.json`` and ``.md``."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    load_after = load_str()
    record = {
        "benchmark": name,
        "smoke": bool(smoke),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_before": load_before,
        "load_after": load_after,
        "platform": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "rows": [dataclasses.asdict(r) for r in rows],
        "meta": loop.jsonable(dict(meta or {})),
    }
    loads = f"{load_before} (start) / {load_after} (end)" if load_before else load_after
    if smoke:
        loads += " [SMOKE: tiny settings, the numbers mean nothing]"
    print(f"\n== {name} == {loads}")
    print(text_table(rows))
    with open(out_dir / f"{name}.json", "w") as f:
        json.dump(record, f, indent=1)
    with open(out_dir / f"{name}.md", "w") as f:
        f.write(f"# {name}\n\n{record['time']}, {loads}, jax {jax.__version__} on {record['platform']}\n\n")
        f.write(markdown_table(rows) + "\n")
    return record


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="a tiny version that runs in a few seconds (for tests)")
    p.add_argument("--out", default=None, help=f"directory for the JSON/markdown results (default {RESULTS_DIR})")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to this long for the 1-min load average to drop below 2.5")
    return p


def standard_main(name: str, description: str, run: Callable[..., tuple[list[Row], dict]],
                  argv: Sequence[str] | None = None,
                  extra_args: Callable[[argparse.ArgumentParser], None] | None = None):
    """Parses the common flags, runs ``run(smoke=..., **extra)``, prints and writes the table."""
    p = parser(description)
    if extra_args is not None:
        extra_args(p)
    args = p.parse_args(argv)
    if args.wait_quiet:
        wait_for_quiet(2.5, args.wait_quiet)
    before = load_str()
    extra = {k: v for k, v in vars(args).items() if k not in ("smoke", "out", "wait_quiet")}
    rows, meta = run(smoke=args.smoke, **extra)
    return report(name, rows, out_dir=args.out, meta=meta, load_before=before, smoke=args.smoke)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def block(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def paired(measures: Mapping[str, Callable[[], float]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Runs every measurement ``rounds`` times, alternating the order each round (ABAB.., BA..).

    Each callable does one measurement and returns its seconds. ``warmup`` rounds (compilation,
    caches) are run first and discarded.
    """
    names = list(measures)
    for _ in range(warmup):
        for n in names:
            measures[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            out[n].append(float(measures[n]()))
    return out


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median of the per-round ratios (rounds are paired: both sides ran back to back)."""
    return float(statistics.median(a / b for a, b in zip(num, den)))


def median(xs: Iterable[float]) -> float:
    return float(statistics.median(list(xs)))


def timed_steps(step: Callable[[Any], Any], state: Any, n: int) -> tuple[Any, float]:
    """Runs ``state = step(state)`` n times; returns (state, seconds per call), blocking at the end."""
    t0 = time.perf_counter()
    for _ in range(n):
        state = step(state)
    block(state)
    return state, (time.perf_counter() - t0) / n


# ---------------------------------------------------------------------------------------------
# Compilation accounting
# ---------------------------------------------------------------------------------------------

_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_QUIET_LOGGERS = ("jax._src.interpreters.pxla", "jax._src.dispatch", "jax._src.compiler")
_COMPILING_RE = re.compile(r"Compiling (\S+) with global shapes and types (.*?)\. Argument mapping", re.S)


class CompileLog:
    """Records every XLA compilation (name, signature) and the time spent tracing + compiling.

    Use as a context manager. ``compiles`` is one ``(name, signature)`` per backend compilation
    (from the ``jax_log_compiles`` log); ``seconds`` the summed trace, lowering and backend
    compile durations (from ``jax.monitoring``).
    """

    def __init__(self, log_shapes: bool = True) -> None:
        self.log_shapes = log_shapes
        self.compiles: list[tuple[str, str]] = []
        self.backend: list[tuple[str, float]] = []
        self.seconds = 0.0
        self._handler = None
        self._old_flag = None

    def _on_duration(self, event: str, duration: float, **kw: Any) -> None:
        if event in _COMPILE_EVENTS:
            self.seconds += duration
            if event.endswith("backend_compile_duration"):
                self.backend.append((str(kw.get("fun_name", "?")), duration))

    def __enter__(self) -> "CompileLog":
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        if self.log_shapes:
            log = self

            class _Handler(logging.Handler):
                def emit(self, record: logging.LogRecord) -> None:
                    m = _COMPILING_RE.search(record.getMessage())
                    if m:
                        log.compiles.append((m.group(1), m.group(2)))

            self._handler = _Handler(level=logging.DEBUG)
            pxla = logging.getLogger("jax._src.interpreters.pxla")
            pxla.addHandler(self._handler)
            self._saved = [(lg, lg.level, lg.propagate) for lg in map(logging.getLogger, _QUIET_LOGGERS)]
            pxla.setLevel(logging.DEBUG)
            self._null = logging.NullHandler()
            for lg, _, _ in self._saved:  # the compile log is for counting here, not for the console
                lg.propagate = False
                lg.addHandler(self._null)
            self._old_flag = jax.config.jax_log_compiles
            jax.config.update("jax_log_compiles", True)
        return self

    def __exit__(self, *exc: Any) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_duration)
        if self._handler is not None:
            logging.getLogger("jax._src.interpreters.pxla").removeHandler(self._handler)
            for lg, level, propagate in self._saved:
                lg.removeHandler(self._null)
                lg.setLevel(level)
                lg.propagate = propagate
            jax.config.update("jax_log_compiles", self._old_flag)

    def duplicates(self) -> list[tuple[str, str, int]]:
        """(name, signature, times) compiled more than once with the same signature."""
        counts: dict[tuple[str, str], int] = {}
        for key in self.compiles:
            counts[key] = counts.get(key, 0) + 1
        return [(n, s, c) for (n, s), c in counts.items() if c > 1]

    def by_name(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n, _ in self.compiles:
            out[n] = out.get(n, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------------------------------
# Models, data, contexts
# ---------------------------------------------------------------------------------------------


def small_resnet(num_classes: int = 10, conv_impl: str = "auto", smoke: bool = False):
    """The small benchmark ResNet: resnet18, width 0.25, CIFAR stem (``cnn_small`` in smoke runs)."""
    from ballot_jax import models

    if smoke:
        return models.create("cnn_small", num_classes=num_classes, width=0.5, conv_impl=conv_impl)
    return models.create("resnet18", num_classes=num_classes, width=0.25, stem="cifar", conv_impl=conv_impl)


def reference_resnet(conv_impl: str = "auto", num_classes: int = 5, smoke: bool = False, dtype: str = "float32"):
    """The reference-setting model: ResNet-18, ImageNet stem, width 1.0 (``cnn_small`` in smoke runs);
    ``dtype`` is the compute dtype (params stay float32)."""
    from ballot_jax import models

    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    if smoke:
        return models.create("cnn_small", num_classes=num_classes, width=0.5, conv_impl=conv_impl, dtype=dt)
    return models.create("resnet18", num_classes=num_classes, width=1.0, stem="imagenet", conv_impl=conv_impl, dtype=dt)


def synthetic_arrays(n: int, hw: int, num_classes: int, num_groups: int, seed: int) -> tuple[np.ndarray, ...]:
    """uint8 images whose mean depends on the label (learnable), labels and groups (round robin)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    groups = (np.arange(n) % num_groups).astype(np.int32)
    base = rng.integers(0, 160, size=(n, hw, hw, 3))
    images = np.clip(base + labels[:, None, None, None] * (90 // max(num_classes - 1, 1)), 0, 255).astype(np.uint8)
    return images, labels, groups


def synthetic_task(*, n_train: int, n_val: int, n_test: int, hw: int = 32, num_classes: int = 10, num_groups: int = 2,
                   on_device: bool = True, seed: int = 0):
    """A TaskData of ArraySplits over synthetic images (device-resident by default)."""
    from ballot_jax.data import ArraySplit, TaskData

    splits = {}
    for i, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        x, y, g = synthetic_arrays(n, hw, num_classes, num_groups, seed * 10 + i)
        splits[name] = ArraySplit(x, y, g, on_device=on_device, name=name)
    return TaskData(train=splits["train"], val=splits["val"], test=splits["test"], num_classes=num_classes,
                    num_groups=num_groups, class_names=[str(c) for c in range(num_classes)],
                    group_names=[f"g{g}" for g in range(num_groups)], image_shape=(hw, hw, 3),
                    info={"dataset": "synthetic"})


def config(**overrides: Any):
    """``ballot_jax.config.make(**overrides)`` (the paper's optimiser recipe; one device)."""
    from ballot_jax import config as config_lib

    overrides.setdefault("data_parallel", False)  # the benchmarks measure one device
    return config_lib.make(**overrides)


def make_context(cfg: Any, task: Any, model: Any):
    from ballot_jax import experiment

    return experiment.make_context(cfg, task, model)


def init_run_state(ctx: Any, model: Any, task: Any, seed: int = 0):
    from ballot_jax import experiment, loop

    variables = experiment.init_variables(model, task.image_shape, seed)
    return loop.initial_state(ctx, variables), variables


def param_bytes(params: Any) -> int:
    return int(sum(np.size(x) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)))


def compiled_peak_bytes(compiled: Any) -> dict[str, int]:
    """Peak-memory estimate of a compiled executable: arguments + outputs − aliased + temporaries."""
    m = compiled.memory_analysis()
    arg = int(m.argument_size_in_bytes)
    out = int(m.output_size_in_bytes)
    alias = int(m.alias_size_in_bytes)
    temp = int(m.temp_size_in_bytes)
    return {"argument": arg, "output": out, "alias": alias, "temp": temp, "peak": arg + out - alias + temp}


# ---------------------------------------------------------------------------------------------
# A small generated UTKFace-like archive (smoke runs; the real one is used when present)
# ---------------------------------------------------------------------------------------------


def generated_utk_archive(directory: str | Path, n: int = 96, seed: int = 0) -> Path:
    """Writes ``<directory>/UTKFace.tar.gz`` with ``n`` 200x200 JPEGs named like UTKFace files."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "UTKFace.tar.gz"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz") as tf:
        info = tarfile.TarInfo("UTKFace")
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
        for i in range(n):
            age, gender, race = int(rng.integers(1, 90)), int(rng.integers(0, 2)), i % 5
            name = f"UTKFace/{age}_{gender}_{race}_2017010{i // 1000}{i:09d}.jpg.chip.jpg"
            small = rng.integers(0, 256, size=(25, 25, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((200, 200), Image.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
            data = buf.getvalue()
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    os.replace(tmp, path)
    return path


def utk_archive(smoke: bool) -> tuple[Path, bool]:
    """(archive path, is_real): the real UTKFace archive unless smoke or absent."""
    if not smoke and UTK_ARCHIVE.exists():
        return UTK_ARCHIVE, True
    return generated_utk_archive(CACHE_DIR / ("generated_utk_smoke" if smoke else "generated_utk"),
                                 n=160 if smoke else 2000), False
