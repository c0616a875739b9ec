"""The stage machine: a run is a list of stages applied to an explicit, checkpointed state.

A :class:`Stage` is ``begin`` → ``epochs`` × ``epoch`` → ``end``; each is a function
``(ctx, state[, epoch]) -> (state, info)`` that reads only its arguments (the :class:`Context`
holds what never changes during a run: the model, the data, the compiled steps). After every
one of them the whole :class:`RunState` is saved with Orbax together with a JSON record of the
position (stage, phase, epoch) and every ``info`` logged so far. Rerunning :func:`run_stages` on
the same directory restores the newest readable checkpoint and continues from there, so a
killed run ends with the same result and finished work is never recomputed.

Randomness is a pure function of (seed, stage, epoch): data order and augmentation come from
the data pipeline's ``(seed, epoch)`` and the RNG key is derived with ``fold_in``; nothing random
is carried that a restore could get wrong.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import numpy as np
import optax

from ballot_jax import fairness, masks, parallel, train

PyTree = Any
Info = dict[str, Any]
log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


class CheckpointError(RuntimeError):
    """No checkpoint in a directory could be read."""


@flax.struct.dataclass
class RunState:
    """Everything needed to resume a method's run; nothing derivable.

    ``train``: params, batch stats, optimizer state, mask and step. ``rewind_params`` /
    ``rewind_batch_stats``: the rewind point (θ0 or θk). ``votes``: int32 vote counts shaped like
    the mask (``None`` on unprunable leaves). ``extras``: method-specific arrays with a fixed
    structure per method (e.g. summed scores for the tie-break, the current group weights).
    """

    train: train.TrainState
    rewind_params: PyTree
    rewind_batch_stats: PyTree
    votes: PyTree
    extras: PyTree


@dataclasses.dataclass(frozen=True)
class Stage:
    """One named stage: optional ``begin`` and ``end`` hooks around ``epochs`` calls of ``epoch``."""

    name: str
    epochs: int = 0
    begin: Callable[["Context", RunState], tuple[RunState, Info]] | None = None
    epoch: Callable[["Context", RunState, int], tuple[RunState, Info]] | None = None
    end: Callable[["Context", RunState], tuple[RunState, Info]] | None = None


@dataclasses.dataclass
class Context:
    """What stays fixed during a run: model, data, optimizer, compiled steps and settings.

    The compiled steps are created once and shared by every stage and every method, so a whole
    experiment compiles each step once per shape.
    """

    apply_fn: Callable[..., Any]
    task: Any  # ballot_jax.data.TaskData
    config: Any  # ml_collections.ConfigDict
    opt: train.OptimizerConfig
    tx: optax.GradientTransformation
    seed: int
    batch_size: int
    eval_batch_size: int
    is_prunable: masks.PathFilter
    sharding: Any = None
    train_step: Callable = None  # type: ignore[assignment]
    eval_step: Callable = None  # type: ignore[assignment]
    progress: Callable[[str, int, int], Any] | None = None
    _cache: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.train_step is None:
            self.train_step = train.make_train_step(self.apply_fn, self.tx)
        if self.eval_step is None:
            self.eval_step = train.make_eval_step(self.apply_fn)

    @property
    def steps_per_epoch(self) -> int:
        """Training steps in one epoch (the last partial batch is dropped)."""
        return self.task.train.num_batches(self.batch_size, True)

    def learning_rates(self, epochs: int) -> np.ndarray:
        """Per-step learning rates of a stage of ``epochs`` epochs (cached, host array)."""
        key = ("lr", epochs)
        if key not in self._cache:
            n = max(epochs * self.steps_per_epoch, 1)
            self._cache[key] = train.learning_rates(train.make_schedule(self.opt, n), n)
        return self._cache[key]

    def cached(self, name: str, factory: Callable[[], Any]) -> Any:
        """A per-context cache for compiled helpers that stages share."""
        if name not in self._cache:
            self._cache[name] = factory()
        return self._cache[name]

    def replicate(self, tree: PyTree) -> PyTree:
        """``tree`` replicated on every device of the batch sharding's mesh (on the default device without one).

        With a sharded batch and replicated state, the jitted steps run data-parallel: XLA
        inserts the all-reduces (see :mod:`ballot_jax.parallel`).
        """
        # Without a mesh everything is committed to the default device: a state mixing committed
        # (restored, device_put) and uncommitted arrays would compile the steps once per mix.
        return parallel.replicate(tree, self.sharding if self.sharding is not None else jax.devices()[0])


# ---------------------------------------------------------------------------------------------
# Building blocks used by the methods' stages
# ---------------------------------------------------------------------------------------------


def data_seed(ctx: Context, stage_tag: int) -> int:
    """The data-order seed of a stage: differs per stage, fixed per (seed, stage)."""
    return int(ctx.seed) * 1000 + int(stage_tag)


def train_epoch(
    ctx: Context,
    ts: train.TrainState,
    *,
    stage: str,
    stage_tag: int,
    epoch: int,
    epochs: int,
    step_fn: Callable | None = None,
    step_args: Sequence[Any] = (),
    after_step: Callable[[train.TrainState, int], None] | None = None,
    every: int = 0,
    on_every: Callable[[train.TrainState, Any], None] | None = None,
) -> tuple[train.TrainState, Info, Any]:
    """One epoch of masked training; returns (state, info, extra step outputs summed).

    ``step_fn(ts, batch, lr, *step_args) -> (ts, metrics[, extra])`` defaults to the context's
    train step. With ``every`` = N > 0, ``on_every(ts, extra_sum)`` is called after every N steps
    with the extra outputs summed since the previous call (then the sum restarts); what is left
    at the end of the epoch is returned. The learning rate at step i of the stage is ``ctx.learning_rates(epochs)[i]``.
    A non-finite loss raises :class:`NonFiniteLossError` naming the stage and epoch; the caller's
    last checkpoint is untouched.
    """
    step_fn = step_fn or ctx.train_step
    lrs = ctx.learning_rates(epochs)
    spe = ctx.steps_per_epoch
    total, extra_total = None, None
    t0 = time.perf_counter()
    batches = ctx.task.train.batches(
        batch_size=ctx.batch_size,
        epoch=epoch,
        seed=data_seed(ctx, stage_tag),
        shuffle=True,
        augment=bool(ctx.config.augment),
        drop_remainder=True,
        sharding=ctx.sharding,
    )
    for i, batch in enumerate(batches):
        out = step_fn(ts, batch, lrs[min(epoch * spe + i, len(lrs) - 1)], *step_args)
        ts, metrics = out[0], out[1]
        total = train.sum_metrics(total, metrics)
        if len(out) > 2:
            extra_total = out[2] if extra_total is None else train.add_trees(extra_total, out[2])
        if every and on_every is not None and (i + 1) % every == 0 and extra_total is not None:
            on_every(ts, extra_total)
            extra_total = None
        if after_step is not None:
            after_step(ts, epoch * spe + i + 1)
        if ctx.progress is not None:
            ctx.progress(stage, epoch * spe + i + 1, epochs * spe)
    if total is None:
        raise ValueError(
            f"stage {stage!r}: the training split yields no full batch of {ctx.batch_size}; "
            "use a smaller batch_size or more data"
        )
    info = train.summarize(total)
    info["seconds"] = time.perf_counter() - t0
    if info["nonfinite_steps"]:
        raise NonFiniteLossError(
            f"non-finite training loss in stage {stage!r}, epoch {epoch}, first at step "
            f"{info['first_nonfinite_step']} of the run ({info['nonfinite_steps']} of the epoch's {spe} steps); "
            "nothing of this epoch was saved and the last good checkpoint is kept. "
            "Lower the learning rate or check the input data, then rerun to resume."
        )
    info.pop("first_nonfinite_step")
    return ts, {"train_" + k: v for k, v in info.items()}, extra_total


def evaluate(ctx: Context, ts: train.TrainState, split_name: str) -> dict[str, Any]:
    """Fairness and accuracy metrics of the masked model on a split (one device pass).

    The same weights evaluated again on the same split (e.g. the dense run's last epoch and its
    end) reuse the first result: arrays are immutable, so the same array objects hold the same values.
    """
    memo = ctx.cached("evaluate_memo", dict)
    return copy.deepcopy(memo_by_identity(memo, split_name, (ts.params, ts.batch_stats, ts.mask),
                                          lambda: _evaluate(ctx, ts, split_name)))


def memo_by_identity(memo: dict, key: Any, inputs: PyTree, compute: Callable[[], Any]) -> Any:
    """``compute()``, or its last result under ``key`` if ``inputs`` holds the very same array
    objects as then: arrays are immutable, so the same objects hold the same values."""
    leaves = jax.tree.leaves(inputs)
    last = memo.get(key)
    if last is not None and len(last[0]) == len(leaves) and all(a is b for a, b in zip(last[0], leaves)):
        return last[1]
    value = compute()
    memo[key] = (leaves, value)
    return value


def _evaluate(ctx: Context, ts: train.TrainState, split_name: str) -> dict[str, Any]:
    split = getattr(ctx.task, split_name)
    counts = train.evaluate_counts(
        ctx.eval_step,
        ts,
        split.batches(
            batch_size=ctx.eval_batch_size,
            epoch=0,
            seed=0,
            shuffle=False,
            augment=False,
            drop_remainder=False,
            sharding=ctx.sharding,
        ),
        num_groups=ctx.task.num_groups,
        num_classes=ctx.task.num_classes,
    )
    return fairness.metrics_from_counts(np.asarray(counts), group_names=list(ctx.task.group_names))


def fresh_train_state(ctx: Context, params: PyTree, batch_stats: PyTree, mask: masks.Mask) -> train.TrainState:
    """A new train state at ``params`` with ``mask`` applied and a fresh optimizer state."""
    return ctx.replicate(train.create_train_state(params, batch_stats, ctx.tx, mask))


def initial_state(ctx: Context, variables: Mapping[str, PyTree], extras: PyTree = None, votes: PyTree = None) -> RunState:
    """A run state at θ0 = ``variables`` with an all-kept mask; θ0 is also the rewind point."""
    # Placed first, as every later state is: fresh from init they are uncommitted, and the state
    # and copy helpers would compile once more for the first (uncommitted) call.
    params = ctx.replicate(variables["params"])
    batch_stats = ctx.replicate(variables.get("batch_stats", {}))
    mask = masks.init_mask(params, ctx.is_prunable)
    return ctx.replicate(RunState(
        train=fresh_train_state(ctx, params, batch_stats, mask),
        rewind_params=train.copy_tree(params),
        rewind_batch_stats=train.copy_tree(batch_stats),
        votes=votes if votes is not None else {},
        extras=extras if extras is not None else {},
    ))


# ---------------------------------------------------------------------------------------------
# Checkpointed execution
# ---------------------------------------------------------------------------------------------


def _manager(directory: str):
    """An Orbax manager that writes asynchronously: ``save`` returns once the state is copied to
    the host, and the write (to a temporary directory, renamed when complete) overlaps the next
    epoch. A kill mid-write leaves the previous checkpoint as the newest complete one."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=3, create=True, enable_async_checkpointing=True),
    )


def _write_error(mngr, index: int, e: OSError) -> CheckpointError:
    previous = [i for i in mngr.all_steps() if i != index]
    return CheckpointError(
        f"could not write checkpoint {index} to {mngr.directory}: {e}. "
        + (f"The previous checkpoint ({max(previous)}) is intact: " if previous else "")
        + "free disk space (or choose another --workdir) and rerun the same command to resume."
    )


def _save(mngr, index: int, state: RunState, meta: Mapping[str, Any]) -> None:
    """Starts writing checkpoint ``index`` (waiting first for the previous write to finish)."""
    import orbax.checkpoint as ocp

    try:
        mngr.wait_until_finished()  # a failed previous write raises here, before anything newer is started
    except OSError as e:
        raise _write_error(mngr, index - 1, e) from e
    try:
        # a deep copy: the run's meta keeps growing while the write runs in the background
        meta = copy.deepcopy(dict(meta))
        mngr.save(index, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    except OSError as e:
        raise _write_error(mngr, index, e) from e


def _finish(mngr) -> None:
    """Waits for the last checkpoint write and releases the manager's threads."""
    try:
        mngr.wait_until_finished()
    except OSError as e:
        raise _write_error(mngr, max(mngr.all_steps(), default=0) + 1, e) from e
    finally:
        mngr.close()


def _restore_latest(mngr, target: RunState) -> tuple[RunState, dict] | None:
    """The newest readable checkpoint; unreadable ones are reported and skipped."""
    import orbax.checkpoint as ocp

    for index in sorted(mngr.all_steps(), reverse=True):
        try:
            restored = mngr.restore(
                index,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
            )
            return restored["state"], dict(restored["meta"])
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped, loudly
            log.warning("checkpoint %d in %s is unreadable (%s: %s); trying the previous one",
                        index, mngr.directory, type(e).__name__, e)
    return None


def run_stages(
    ctx: Context,
    stages: Sequence[Stage],
    state: RunState,
    directory: str | None,
    *,
    run_name: str = "",
    check_masks: bool = True,
) -> tuple[RunState, dict[str, Any]]:
    """Runs ``stages`` from ``state``, checkpointing into ``directory`` after every step.

    With ``check_masks`` (default) every stage ends with :func:`check_mask_integrity`, whose
    result is logged with the stage.

    Checkpoints are written asynchronously (:func:`_manager`); the last one has landed when this
    returns. Returns the final state and the run record ``{"stages": [...], "log": [info, ...],
    "done": True}``. With a ``directory`` holding a finished run, nothing is recomputed. ``state``
    must have the structure every checkpoint of this run has (it is the restore target).
    """
    names = [s.name for s in stages]
    state = ctx.replicate(state)  # every leaf on the mesh (also the restore target's shardings)
    meta: dict[str, Any] = {"run": run_name, "stages": names, "stage": 0, "phase": "begin", "epoch": 0, "log": [], "done": False}
    mngr = _manager(directory) if directory else None
    try:
        state, meta = _run(ctx, stages, state, meta, mngr, directory, run_name, check_masks)
    finally:
        if mngr is not None:
            _finish(mngr)  # the last write lands (or its error is raised) before returning
    meta["done"] = True
    return state, meta


def _run(ctx, stages, state, meta, mngr, directory, run_name, check_masks):
    """The body of :func:`run_stages` (restore, then every remaining phase); the caller closes ``mngr``."""
    names = meta["stages"]
    index = 0
    if mngr is not None and mngr.all_steps():
        restored = _restore_latest(mngr, state)
        if restored is None:
            raise CheckpointError(f"no readable checkpoint in {directory}; delete it to start over")
        state, meta = restored
        index = max(mngr.all_steps()) + 1
        if meta.get("stages") != names:
            raise CheckpointError(
                f"{directory} holds a run with stages {meta.get('stages')}, not {names}: "
                "use another work directory for a different configuration"
            )
        log.info("%s: resuming at stage %r, phase %s, epoch %s", run_name, names[min(meta['stage'], len(names) - 1)],
                 meta["phase"], meta["epoch"])

    def checkpoint():
        nonlocal index, state
        state = ctx.replicate(state)  # arrays made on the host side (e.g. group weights) join the mesh too
        if mngr is not None:
            _save(mngr, index, state, meta)
            index += 1

    def record(stage: Stage, phase: str, epoch: int | None, info: Info):
        entry = {"stage": stage.name, "phase": phase}
        if epoch is not None:
            entry["epoch"] = epoch
        info = dict(info)
        # Wall times go to their own list so the log (and results.json) is deterministic.
        timing = {k: info.pop(k) for k in list(info) if k.endswith("seconds")}
        entry.update(jsonable(info))
        meta["log"].append(entry)
        if timing:
            meta.setdefault("timings", []).append({**{k: entry[k] for k in ("stage", "phase", "epoch") if k in entry},
                                                   **jsonable(timing)})
        log.info("%s %s %s", run_name, entry, timing or "")

    while meta["stage"] < len(stages):
        stage = stages[meta["stage"]]
        if meta["phase"] == "begin":
            if stage.begin is not None:
                state, info = stage.begin(ctx, state)
                record(stage, "begin", None, info)
            meta.update(phase="epochs", epoch=0)
            checkpoint()
        if meta["phase"] == "epochs":
            while meta["epoch"] < stage.epochs:
                e = meta["epoch"]
                state, info = stage.epoch(ctx, state, e)
                record(stage, "epoch", e, info)
                meta["epoch"] = e + 1
                checkpoint()
            meta["phase"] = "end"
        if meta["phase"] == "end":
            info = {}
            if stage.end is not None:
                state, info = stage.end(ctx, state)
            if check_masks:
                info = dict(info, mask_check=check_mask_integrity(state, f"{run_name} stage {stage.name!r}"))
            if stage.end is not None or check_masks:
                record(stage, "end", None, info)
            meta.update(stage=meta["stage"] + 1, phase="begin", epoch=0)
            if meta["stage"] == len(stages):
                meta["done"] = True
            checkpoint()
    return state, meta


class MaskIntegrityError(AssertionError):
    """A pruned weight is not exactly zero: a bug in a method, never a user error."""


def check_mask_integrity(state: RunState, where: str) -> dict[str, Any]:
    """Counts pruned weights that are not exactly 0.0; raises if there is any."""
    violations = masks.zero_violations(state.train.params, state.train.mask)
    if violations:
        raise MaskIntegrityError(f"{where}: {violations} pruned weights are not exactly zero; please report this bug")
    return {"nonzero_masked_weights": 0, "sparsity": masks.sparsity(state.train.mask)}


def jsonable(x: Any) -> Any:
    """Host Python values for JSON: mappings → dicts with str keys, tuples → lists, arrays →
    lists/numbers; any other non-JSON object → its ``str``."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
        a = np.asarray(x)
        return a.item() if a.ndim == 0 else a.tolist()
    if x is None or isinstance(x, (str, bool, int, float)):
        return x
    return str(x)
