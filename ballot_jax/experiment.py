"""The experiment driver: every method × seed on one task, same sparsity and budget.

``run_experiment(config, workdir)`` is what ``experiments/run.py`` calls. Per seed it trains the
dense model once (shared by every method that starts from it), then runs each method's stages
with :func:`ballot_jax.loop.run_stages`, checkpointing under ``<workdir>/seed_<s>/<method>/``.
After each run its test metrics are written to ``results.json`` at once, so nothing computed is
lost on a crash, and a rerun skips every finished run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ballot_jax import config as config_lib
from ballot_jax import loop, masks, methods, models, train
from ballot_jax.methods import common

log = logging.getLogger(__name__)

RESULTS = "results.json"


def build_model(config: Any, task: Any):
    """The Flax module for ``config.model`` sized for the task."""
    dtype = jnp.bfloat16 if config.get("dtype", "float32") == "bfloat16" else jnp.float32
    return models.create(
        config.model,
        num_classes=task.num_classes,
        width=float(config.get("width", 1.0)),
        stem=config.get("stem", "cifar"),
        dtype=dtype,
        conv_impl=config.get("conv_impl", "xla"),
    )


def init_variables(model: Any, image_shape: tuple[int, ...], seed: int) -> dict[str, Any]:
    """θ0 of ``model`` for ``seed`` (params and batch statistics)."""
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def make_context(config: Any, task: Any, model: Any, *, progress: Callable | None = None, sharding: Any = None) -> loop.Context:
    """A run context with compiled steps shared by every stage, method and seed."""
    opt = train.OptimizerConfig.from_config(config)
    return loop.Context(
        apply_fn=model.apply,
        task=task,
        config=config,
        opt=opt,
        tx=train.make_optimizer(opt),
        seed=int(config.get("seed_offset", 0)),
        batch_size=int(config.batch_size),
        eval_batch_size=int(config.eval_batch_size),
        is_prunable=masks.prunable_filter(keep_stem=bool(config.get("keep_stem", False)),
                                          keep_head=bool(config.get("keep_head", False))),
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
    result = {"seed": ctx.seed, "test": loop.evaluate(ctx, state.train, "test"), "seconds": time.perf_counter() - t0,
              "log": meta["log"]}
    _write_json(result_path, result)
    return state, result


def run_method(ctx: loop.Context, name: str, dense: loop.RunState | None, variables: dict, workdir: str) -> dict:
    """One method at ``ctx.seed``: its stages, then test metrics and a mask-integrity check."""
    method = methods.get(name)
    directory = _run_dir(workdir, ctx.seed, name)
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
    violations = masks.zero_violations(state.train.params, state.train.mask) if ctx.config.get("check_masks", True) else None
    if violations:
        raise AssertionError(f"{name} (seed {ctx.seed}): {violations} masked weights are not zero — a bug, please report it")
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
    np.savez_compressed(os.path.join(directory, "mask.npz"), **masks.to_numpy(state.train.mask))
    _write_json(result_path, result)
    return result


def run_experiment(config: ml_collections.ConfigDict, workdir: str, *, progress: Callable | None = None) -> dict:
    """Runs every configured method × seed and writes ``<workdir>/results.json``.

    Returns the results dict: ``{"config", "task", "dense": [per seed], "runs": [per method and
    seed], "timings"}``; each run has method, seed, sparsity (reached), accuracy, cwv, mcd,
    per_group_accuracy, the full test metrics, the mask summary and the stage log.
    """
    from ballot_jax import data  # heavy import kept out of module import time

    config_lib.validate(config)
    os.makedirs(workdir, exist_ok=True)
    names = methods.parse(config.methods)
    t_start = time.perf_counter()
    task = data.load_task(config)
    model = build_model(config, task)
    base_ctx = make_context(config, task, model, progress=progress)
    results: dict[str, Any] = {
        "config": config.to_dict(),
        "task": {"num_classes": task.num_classes, "num_groups": task.num_groups, "class_names": list(task.class_names),
                 "group_names": list(task.group_names), "info": _jsonable(task.info)},
        "methods": names,
        "dense": [],
        "runs": [],
    }
    out_path = os.path.join(workdir, RESULTS)
    for i in range(int(config.seeds)):
        seed = int(config.get("seed_offset", 0)) + i
        ctx = dataclasses.replace(base_ctx, seed=seed)
        variables = init_variables(model, task.image_shape, seed)
        dense_state = None
        if any(methods.get(n).from_dense for n in names):
            dense_state, dense_result = run_dense(ctx, variables, workdir)
            results["dense"].append({k: v for k, v in dense_result.items() if k != "log"})
        for name in names:
            run = run_method(ctx, name, dense_state, variables, workdir)
            if dense_state is not None:
                run["dense_accuracy"] = results["dense"][-1]["test"]["accuracy"]
            run["config"] = results["config"]
            results["runs"].append(run)
            _write_json(out_path, results)
    results["timings"] = {"total_seconds": time.perf_counter() - t_start,
                          "train_step_compilations": base_ctx.train_step._cache_size()}
    _write_json(out_path, results)
    return results


def _jsonable(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except TypeError:
        if isinstance(x, dict):
            return {str(k): _jsonable(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [_jsonable(v) for v in x]
        return str(x)
