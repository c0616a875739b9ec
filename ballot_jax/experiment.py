"""The experiment driver: every method × seed on one task, same sparsity and budget.

``run_experiment(config, workdir)`` is what ``experiments/run.py`` calls. Per seed it trains the
dense model once (shared by every method that starts from it), then runs each method's stages
with :func:`ballot_jax.loop.run_stages`, checkpointing under ``<workdir>/seed_<s>/<method>/``.
After each run its test metrics are written to ``results.json`` at once, so nothing computed is
lost on a crash, and a rerun skips every finished run.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ballot_jax import config as config_lib
from ballot_jax import loop, masks, methods, models, parallel, train
from ballot_jax.methods import common

log = logging.getLogger(__name__)

RESULTS = "results.json"
TIMINGS = "timings.json"


def build_model(config: Any, task: Any):
    """The Flax module for ``config.model`` sized for the task.

    ``conv_impl="auto_torch"`` in a run partitioned over several devices becomes ``"auto"`` (with a
    warning): PyTorch's kernels would see each convolution's whole batch on one device, which
    undoes the data parallelism (the values would be right).
    """
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    conv_impl = config.conv_impl
    if conv_impl == "auto_torch" and parallel.context_sharding(config) is not None:
        log.warning("conv_impl='auto_torch' runs on one device; this run is split over %d devices, so it uses "
                    "conv_impl='auto' (set data_parallel=False to use PyTorch's kernels on one device)",
                    jax.device_count())
        conv_impl = "auto"
    return models.create(
        config.model,
        num_classes=task.num_classes,
        width=float(config.width),
        stem=config.stem,
        dtype=dtype,
        conv_impl=conv_impl,
    )


def init_variables(model: Any, image_shape: tuple[int, ...], seed: int) -> dict[str, Any]:
    """θ0 of ``model`` for ``seed`` (params and batch statistics)."""
    # Not jitted on purpose: a jitted init fuses the initialisers' arithmetic and draws weights that
    # differ in the last bit (measured), which would change every result of a given seed; with an
    # optimisation barrier after each draw the bits stay, but every draw compiles as its own kernel
    # (ResNet-18: 5.7-6.9 s of compilation against 1.6-2.0 s op by op, measured). lazy_init
    # runs the same initialisers op by op (bit-identical weights, tested) but skips the forward pass
    # that model.init computes only to throw away, and _declare_batch_norm skips the batch norms'
    # parameter-only arithmetic that lazy_init would still evaluate: ResNet-18's initialisation
    # compiles 34 small programs (73 without the interceptor).
    with nn.intercept_methods(_declare_batch_norm):
        variables = model.lazy_init(jax.random.PRNGKey(seed), jax.ShapeDtypeStruct((1, *image_shape), jnp.float32),
                                    train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _declare_batch_norm(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    """Method interceptor for initialisation: a ``flax.linen.BatchNorm`` call only declares its
    variables, exactly as flax's would (names, shapes, dtypes, initialisers, values), and returns
    its input; every other method (and a subclass's own ``__call__``) runs as usual.

    ``lazy_init`` evaluates eagerly every expression that depends on the variables alone, one
    compilation per op and shape: a batch norm's ``rsqrt(var + ε) · scale`` and its broadcasts,
    ResNet-18: 39 of its 73 compilations, ≈ 1 s of a cold start. An initialisation's output is
    thrown away, and a batch norm's has its input's shape. The constant initial values (flax's
    zeros and ones) are made on the host, which compiles nothing.
    """
    module = context.module
    if not (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"
            and type(module).__call__ is nn.BatchNorm.__call__):  # a subclass's own __call__ runs as written
        return next_fun(*args, **kwargs)
    x = args[0] if args else kwargs["x"]
    axes = module.axis if isinstance(module.axis, (tuple, list)) else (module.axis,)
    feature_shape = [x.shape[ax] for ax in sorted({ax % x.ndim for ax in axes})]
    stats_dtype = jnp.float32 if module.force_float32_reductions else module.param_dtype
    module.variable("batch_stats", "mean", lambda s: _host_full(s, 0, stats_dtype), feature_shape)
    module.variable("batch_stats", "var", lambda s: _host_full(s, 1, stats_dtype), feature_shape)
    for name, used, init, value in (("scale", module.use_scale, module.scale_init, 1),
                                    ("bias", module.use_bias, module.bias_init, 0)):
        if used:
            if init is (jax.nn.initializers.ones if value else jax.nn.initializers.zeros):
                init = functools.partial(_host_initializer, value=value)
            module.param(name, init, feature_shape, module.param_dtype)
    return x


def _host_full(shape: Any, value: float, dtype: Any) -> jax.Array:
    """``jnp.full(shape, value, dtype)`` made on the host and placed (no compilation)."""
    return jax.device_put(np.full(tuple(shape), value, np.dtype(dtype)))


def _host_initializer(key: Any, shape: Any, dtype: Any = jnp.float32, *, value: float) -> jax.Array:
    """A constant initialiser (flax's ``ones``/``zeros``) that compiles nothing."""
    del key
    return _host_full(shape, value, dtype)


def make_context(config: Any, task: Any, model: Any, *, progress: Callable | None = None, sharding: Any = None) -> loop.Context:
    """A run context with compiled steps shared by every stage, method and seed.

    Without an explicit ``sharding`` the batches are split over all devices when there are
    several (``config.data_parallel``, see :mod:`ballot_jax.parallel`); state is replicated.
    """
    opt = train.OptimizerConfig.from_config(config)
    sharding = parallel.context_sharding(config) if sharding is None else sharding
    return loop.Context(
        apply_fn=model.apply,
        task=parallel.distribute_task(task),
        config=config,
        opt=opt,
        tx=train.make_optimizer(opt),
        seed=int(config.seed_offset),
        batch_size=int(config.batch_size),
        eval_batch_size=int(config.eval_batch_size),
        is_prunable=masks.prunable_filter(keep_stem=bool(config.keep_stem),
                                          keep_head=bool(config.keep_head)),
        sharding=sharding,
        progress=progress,
    )


def reached_sparsity(state: loop.RunState) -> float:
    """Fraction of prunable weights that are exactly zero in the final params."""
    leaves = masks.prunable_leaves(state.train.params, state.train.mask)
    zeros = sum(int(np.count_nonzero(np.asarray(p) == 0)) for p in leaves)
    total = sum(int(np.size(p)) for p in leaves)
    return zeros / max(total, 1)


def _run_dir(workdir: str, seed: int, name: str) -> str:
    return os.path.join(workdir, f"seed_{seed}", name)


def _load_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, data: Any) -> None:
    if not parallel.is_main_process():
        return  # multi-host: every process computes the same results, process 0 writes them
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written results file


def run_dense(ctx: loop.Context, variables: dict, workdir: str) -> tuple[loop.RunState, dict]:
    """The shared dense run of ``ctx.seed`` (resumed or skipped when already done)."""
    state0 = loop.initial_state(ctx, variables)
    directory = _run_dir(workdir, ctx.seed, "dense")
    t0 = time.perf_counter()
    state, meta = loop.run_stages(ctx, [common.dense_stage(ctx)], state0, directory, run_name=f"seed {ctx.seed} dense")
    result_path = os.path.join(directory, "result.json")
    if os.path.exists(result_path):
        return state, _load_json(result_path)
    result = {"seed": ctx.seed, "test": loop.evaluate(ctx, state.train, "test"), "plateau": common.plateau(meta["log"]),
              "seconds": time.perf_counter() - t0, "log": meta["log"]}
    if not result["plateau"]["reached"]:
        log.warning("seed %d: the dense model has not reached a plateau (%s): fairness comparisons of its tickets "
                    "may be noise; train longer (dense_epochs, or the config's :bench variant)", ctx.seed, result["plateau"])
    _write_json(result_path, result)
    return state, result


def run_method(ctx: loop.Context, name: str, dense: loop.RunState | None, variables: dict, workdir: str) -> dict:
    """One method at ``ctx.seed``: its stages, then test metrics and a mask-integrity check."""
    method = methods.get(name)
    directory = _run_dir(workdir, ctx.seed, methods.directory_name(name))
    result_path = os.path.join(directory, "result.json")
    if os.path.exists(result_path):
        log.info("seed %d %s: finished earlier, skipping", ctx.seed, name)
        return _load_json(result_path)
    start = dense if method.from_dense else loop.initial_state(ctx, variables)
    state0 = method.initial_state(ctx, start)
    t0 = time.perf_counter()
    state, meta = loop.run_stages(ctx, method.stages(ctx), state0, directory, run_name=f"seed {ctx.seed} {name}")
    seconds = time.perf_counter() - t0
    test = loop.evaluate(ctx, state.train, "test")
    integrity = loop.check_mask_integrity(state, f"{name} (seed {ctx.seed})") if ctx.config.check_masks else None
    violations = None if integrity is None else integrity["nonzero_masked_weights"]
    result = {
        "method": name,
        "seed": ctx.seed,
        "sparsity": reached_sparsity(state),
        "target_sparsity": float(ctx.config.sparsity),
        "accuracy": test["accuracy"],
        "cwv": test["cwv"],
        "mcd": test["mcd"],
        "per_group_accuracy": test["per_group_accuracy"],
        "test": test,
        "mask": masks.summary(state.train.mask),
        "mask_integrity": {"checked": violations is not None, "nonzero_masked_weights": violations},
        "seconds": seconds,
        "log": meta["log"],
    }
    if parallel.is_main_process():
        np.savez_compressed(os.path.join(directory, "mask.npz"), **masks.to_numpy(state.train.mask))
    _write_json(result_path, result)
    return result


def run_experiment(config: ml_collections.ConfigDict, workdir: str, *, progress: Callable | None = None) -> dict:
    """Runs every configured method × seed and writes ``<workdir>/results.json``.

    Returns the results dict: ``{"config", "task", "dense": [per seed], "runs": [per method and
    seed], "timings"}``; each run has method, seed, sparsity (reached), accuracy, cwv, mcd,
    per_group_accuracy, the full test metrics, the mask summary, the stage log and its wall
    time ``seconds``. The file is rewritten after every finished run; wall times go to
    ``timings.json`` instead (:func:`split_timings`), so that ``results.json`` is the same, byte
    for byte, whenever the config and seeds are (on CPU; tested).
    """
    from ballot_jax import data  # heavy import kept out of module import time

    parallel.initialize(config)  # multi-host runtime first (config.distributed), before any JAX use
    config_lib.validate(config)
    os.makedirs(workdir, exist_ok=True)
    names = methods.parse(config.methods)
    methods.check(names, config)
    t_start = time.perf_counter()
    task = data.load_task(config)
    model = build_model(config, task)
    base_ctx = make_context(config, task, model, progress=progress)
    results: dict[str, Any] = {
        "config": config.to_dict(),
        "task": {"num_classes": task.num_classes, "num_groups": task.num_groups, "class_names": list(task.class_names),
                 "group_names": list(task.group_names), "info": loop.jsonable(task.info)},
        "methods": names,
        "dense": [],
        "runs": [],
    }
    start_run = getattr(progress, "start_run", None)  # StageProgress labels its bars per run
    n_runs = int(config.seeds) * len(names)
    for i in range(int(config.seeds)):
        seed = int(config.seed_offset) + i
        ctx = dataclasses.replace(base_ctx, seed=seed)
        variables = init_variables(model, task.image_shape, seed)
        dense_state = None
        if any(methods.get(n).from_dense for n in names):
            if start_run:
                start_run(f"seed {seed} dense")
            dense_state, dense_result = run_dense(ctx, variables, workdir)
            results["dense"].append({k: v for k, v in dense_result.items() if k != "log"})
        for j, name in enumerate(names):
            if start_run:
                start_run(f"[{i * len(names) + j + 1}/{n_runs}] seed {seed} {name}")
            run = run_method(ctx, name, dense_state, variables, workdir)
            if dense_state is not None:
                run["dense_accuracy"] = results["dense"][-1]["test"]["accuracy"]
            run["config"] = results["config"]
            results["runs"].append(run)
            _write_results(workdir, results)
    results["timings"] = {"total_seconds": time.perf_counter() - t_start,
                          "train_step_compilations": train.compilation_count(base_ctx.train_step),
                          "devices": 1 if base_ctx.sharding is None else int(base_ctx.sharding.mesh.size),
                          "compilation_cache": cache_counts()}
    _write_results(workdir, results)
    return results


def _timing_key(run: Mapping[str, Any]) -> str:
    return f"{run.get('method', 'dense')}/{run['seed']}"


def split_timings(results: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(deterministic, timings)``: the results without wall times, and the wall times alone.

    ``deterministic`` is what ``results.json`` holds (byte-identical for the same config and
    seed on CPU); ``timings`` (``timings.json``) holds this process's ``total_seconds`` and
    compile count and each run's ``seconds`` keyed ``"<method>/<seed>"`` (``"dense/<seed>"``).
    """
    timings: dict[str, Any] = dict(results.get("timings") or {})
    per_run: dict[str, float | None] = {}
    out = {k: v for k, v in results.items() if k != "timings"}
    for key in ("dense", "runs"):
        entries = []
        for r in results.get(key) or []:
            per_run[_timing_key(r)] = r.get("seconds")
            entries.append({k: v for k, v in r.items() if k != "seconds"})
        out[key] = entries
    timings["seconds"] = per_run
    return out, timings


def load_results(workdir: str) -> dict[str, Any]:
    """``results.json`` of ``workdir`` with the wall times of ``timings.json`` merged back in."""
    results = _load_json(os.path.join(workdir, RESULTS))
    path = os.path.join(workdir, TIMINGS)
    if os.path.exists(path):
        timings = _load_json(path)
        per_run = timings.pop("seconds", {})
        for key in ("dense", "runs"):
            for r in results.get(key) or []:
                r["seconds"] = per_run.get(_timing_key(r))
        results["timings"] = timings
    return results


def _write_results(workdir: str, results: Mapping[str, Any]) -> None:
    deterministic, timings = split_timings(results)
    _write_json(os.path.join(workdir, TIMINGS), timings)
    _write_json(os.path.join(workdir, RESULTS), deterministic)


# ---------------------------------------------------------------------------------------------
# The command-line job: work directory, saved config, logging, progress bars, comparison, sweep
# ---------------------------------------------------------------------------------------------

CONFIG_JSON = "config.json"
# Keys that never change a run's numbers: a different value may reuse the same work directory.
NEUTRAL_KEYS = frozenset({
    "name", "variant", "methods", "seeds", "sweep", "accuracy_budget", "data_dir", "manual_dir", "prepare",
    "in_memory", "in_memory_max_mb", "data_on_device", "worker_count", "read_threads", "distributed",
    "progress", "plots", "check_masks", "compilation_cache_dir",
})

CACHE_EVENTS: collections.Counter = collections.Counter()  # JAX's '/jax/compilation_cache/…' events


def use_compilation_cache(directory: str) -> str | None:
    """Turns on JAX's persistent compilation cache in ``directory`` ("" or None: off).

    Every compiled computation is cached, however fast it compiled, so a rerun, a resumed run or
    the next process compiles nothing it compiled before — except executables that call back into
    Python, which JAX never writes to the cache (``conv_impl="auto_torch"`` only when its C++ handlers
    cannot be built, see :mod:`ballot_jax.models.torch_ffi`). Call it before the first compilation
    of the process (the scripts do). Hits and misses (:func:`cache_counts`) are
    written to ``timings.json``. Returns the directory used.
    """
    if not directory:
        return None
    directory = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if not CACHE_EVENTS.get("_listening"):
        CACHE_EVENTS["_listening"] = 1
        jax.monitoring.register_event_listener(
            lambda event, **_: CACHE_EVENTS.update([event.rsplit("/", 1)[-1]])
            if event.startswith("/jax/compilation_cache/") else None)
    return directory


def cache_counts() -> dict[str, Any]:
    """This process's persistent-cache counts: ``requests``, ``hits``, ``misses`` (requests − hits) and
    ``written`` entries, plus JAX's raw ``events``.

    JAX's own ``cache_misses`` event counts entries *written*, not misses: an executable JAX never
    writes — one that calls back into Python, as the ``conv_impl="auto_torch"`` steps do when its
    C++ handlers cannot be built — is compiled again by every process without appearing there, so
    misses are derived here.
    """
    events = {k: v for k, v in CACHE_EVENTS.items() if not k.startswith("_")}
    requests, hits = events.get("compile_requests_use_cache", 0), events.get("cache_hits", 0)
    return {"requests": requests, "hits": hits, "misses": requests - hits,
            "written": events.get("cache_misses", 0), "events": events}


def config_conflicts(saved: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Result-changing keys (dotted, ``lth.rate``) whose value differs between a saved config and ``config``.

    A key only ``config`` has is ignored: a key added to :func:`ballot_jax.config.base_config` by a
    newer version keeps its default, so an old work directory still resumes. A key only the saved
    config has was renamed or removed since (``epochs`` is now ``retrain_epochs``): its runs may have
    used a setting this version cannot express, so it is a conflict (value, ``"<absent>"``).
    """
    saved, config = (config_lib.flat_keys(json.loads(json.dumps(loop.jsonable(x)))) for x in (saved, config))  # tuples → lists
    return {key: (saved[key], config.get(key, ABSENT)) for key in sorted(saved)
            if key.split(".")[0] not in NEUTRAL_KEYS and saved[key] != config.get(key, ABSENT)}


ABSENT = "<absent>"  # a saved key this version of the config does not have


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the resolved config to ``<workdir>/config.json``.

    If the directory already holds a config that differs in a result-changing key, raises
    :class:`WorkdirConflictError` naming the keys: finished runs there would otherwise be reused
    silently.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_JSON)
    current = loop.jsonable(config.to_dict())
    if os.path.exists(path):
        diff = config_conflicts(_load_json(path), current)
        if diff:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
            raise WorkdirConflictError(f"{workdir} holds runs of a different configuration ({lines}); "
                             "pass another --workdir, or delete the directory to start over")
    _write_json(path, current)
    return path


class WorkdirConflictError(ValueError):
    """The work directory holds runs of a configuration that differs in a result-changing key."""


def run_comparison(config: ml_collections.ConfigDict, workdir: str, *, progress: Callable | None = None) -> tuple[dict, list[str]]:
    """Compare mode: every method × seed at ``config.sparsity``, then the reports.

    Returns ``(results, paths)``: the results dict of :func:`run_experiment` and the files
    written (results.json / .csv / .md, timings.json, plots, config.json).
    """
    save_config(config, workdir)
    results = run_experiment(config, workdir, progress=progress)
    from ballot_jax import report  # after the runs: a long run picks up the newest report code
    paths = [os.path.join(workdir, n) for n in (CONFIG_JSON, RESULTS, TIMINGS)]
    if parallel.is_main_process():  # multi-host: one writer
        paths += report.write_reports(results, workdir, plots=bool(config.plots))
    return results, paths


def sweep_configs(config: ml_collections.ConfigDict) -> list[tuple[float, ml_collections.ConfigDict]]:
    """One compare config per sparsity of ``config.sweep`` (each with ``sweep`` cleared)."""
    out = []
    for s in config_lib.parse_sweep(config):
        sub = ml_collections.ConfigDict(config.to_dict())
        sub.sparsity = float(s)
        sub.sweep = ""
        out.append((float(s), sub))
    return out


def sweep_dir(workdir: str, sparsity: float) -> str:
    """``<workdir>/sparsity_<s>`` (e.g. ``sparsity_0.9``)."""
    return os.path.join(workdir, f"sparsity_{sparsity:g}")


def run_sweep(config: ml_collections.ConfigDict, workdir: str, *, progress: Callable | None = None) -> tuple[dict, list[str]]:
    """Sweep mode: the comparison at every sparsity of ``config.sweep``, then sweep.md and plots.

    Each sparsity has its own work directory (``<workdir>/sparsity_0.9/``, a complete compare
    run that resumes on its own); the sweep summary goes to ``<workdir>/sweep.{json,md}``.
    """
    from ballot_jax import report

    save_config(config, workdir)
    per_sparsity, paths = {}, [os.path.join(workdir, CONFIG_JSON)]
    for s, sub in sweep_configs(config):
        log.info("sweep: sparsity %g", s)
        results, sub_paths = run_comparison(sub, sweep_dir(workdir, s), progress=progress)
        per_sparsity[s] = results
        paths += sub_paths
    summary = report.sweep_summary(per_sparsity, accuracy_budget=float(config.accuracy_budget))
    if parallel.is_main_process():  # multi-host: one writer
        paths += report.write_sweep_reports(summary, workdir, plots=bool(config.plots))
    return summary, paths


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: Callable | None = None) -> tuple[dict, list[str]]:
    """The whole job of ``experiments/run.py``: a sweep when ``config.sweep`` is set, else a comparison."""
    config_lib.validate(config)
    methods.check(methods.parse(config.methods), config)  # a bad method option fails before any training
    parallel.initialize(config)  # jax.distributed.initialize() when config.distributed
    if config_lib.parse_sweep(config):
        return run_sweep(config, workdir, progress=progress)
    return run_comparison(config, workdir, progress=progress)
