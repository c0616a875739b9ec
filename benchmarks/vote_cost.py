"""P1: cost of Ballot's votes. A voting epoch (training + the vote round) / a plain training epoch
on the same data, for G = 2, 10, 100, 200 groups and both vote sources, plus the vote round's
peak memory from the compiled memory analysis.

* ``vote_source="pass"``: train epoch, then validation per-group accuracies, then one gradient
  pass (one forward, two cotangents pulled back) over the validation split as vote data.
* ``vote_source="train_steps"``: the fairness cotangent rides in every train step's backward
  (``conflicts.make_voting_train_step``), then validation accuracies for the next weights.

Both voting epochs are the library's own ``ticket`` stage epoch (``methods.ballot``), with the
per-group cosine diagnostic off (``diag_batches=0``: it costs G backward passes by design). The
plain epoch is ``loop.train_epoch`` with the context's train step over the same batches. The
epochs of every G run in the same rounds (a plain epoch, every voting epoch, a plain epoch; the
voting order reversed every other round, one warm-up round first) and each ratio is the median
over rounds of the voting epoch over the mean of its round's two plain epochs, so that load
changes on a shared machine affect every G alike. Model: ResNet-18 width 0.25, CIFAR stem,
32x32, batch 32, synthetic data held on the device; the validation split (200 examples, so that
each of up to 200 round-robin groups occurs) is 1/9 of the training split (1,800), as 400 / 3,600
in the reference setting.

Memory: peak = arguments + outputs − aliased + temporaries of the compiled executable, for the
vote round (``pass``: the gradient pass; ``train_steps``: the voting train step) against the
plain counterpart (an eval-mode gradient of the mean loss; the plain train step), expressed in
param-sized trees (all params, float32).

For scale: in the reference setting (benchmark P4) the authors' PyTorch prototype spends 81.5 s
per ticket-plus-votes epoch against 30.7 s per dense epoch (2.65x; figures from the issue, PyTorch
is not installed here).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.common import Row  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

NAME = "vote_cost"
GOAL_RATIO = 1.7
GOAL_EXTRA_TREES = 2.25  # "at most about two extra param-sized trees"
GOAL_FLAT = 1.10  # max/min of the ratio over G


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def _plain_gradient(apply_fn):
    """Eval-mode gradient of the weighted mean loss w.r.t. the params (the plain gradient pass)."""
    from ballot_jax import train

    def grad(params, batch_stats, mask, batch):
        def loss(p):
            logits, _ = train.forward(apply_fn, p, batch_stats, mask, batch["image"], False)
            w = train.batch_weights(batch)
            return jnp.sum(train.example_losses(logits, batch["label"]) * w) / jnp.maximum(jnp.sum(w), 1.0)

        return jax.grad(loss)(params)

    return jax.jit(grad)


def memory_rows(ctx, state, G: int) -> tuple[list[Row], dict]:
    """Compiled peak memory of each vote round against its plain counterpart, in param trees."""
    from ballot_jax import conflicts

    ts = state.train
    pbytes = common.param_bytes(ts.params)
    val_batch = next(iter(ctx.task.val.batches(batch_size=ctx.eval_batch_size, epoch=0, seed=0, shuffle=False,
                                              augment=False, drop_remainder=False)))
    train_batch = next(iter(ctx.task.train.batches(batch_size=ctx.batch_size, epoch=0, seed=0, shuffle=False,
                                                  augment=False, drop_remainder=True)))
    w = jnp.ones((G,), jnp.float32)
    acc = {"a": conflicts.zeros_like_mask(ts.mask, ts.params), "f": conflicts.zeros_like_mask(ts.mask, ts.params)}
    vote_pass = conflicts.make_gradient_pass(ctx.apply_fn).lower(ts.params, ts.batch_stats, ts.mask, val_batch, w, acc)
    plain_pass = _plain_gradient(ctx.apply_fn).lower(ts.params, ts.batch_stats, ts.mask, val_batch)
    lr = jnp.float32(0.1)
    vote_step = conflicts.make_voting_train_step(ctx.apply_fn, ctx.tx).lower(ts, train_batch, lr, w)
    plain_step = ctx.train_step.lower(ts, train_batch, lr)
    mem = {k: common.compiled_peak_bytes(v.compile()) for k, v in
           (("vote_pass", vote_pass), ("plain_pass", plain_pass), ("vote_step", vote_step), ("plain_step", plain_step))}
    rows = []
    meta = {"param_bytes": pbytes, "memory": mem}
    for source, vote, plain in (("pass", "vote_pass", "plain_pass"), ("train_steps", "vote_step", "plain_step")):
        extra = (mem[vote]["peak"] - mem[plain]["peak"]) / pbytes
        rows.append(Row("P1", f"vote round peak memory beyond plain ({source}, G={G})", extra, "param trees",
                        f"<= ~2 param trees", extra <= GOAL_EXTRA_TREES,
                        f"{mem[vote]['peak'] / 2**20:.1f} MiB vs {mem[plain]['peak'] / 2**20:.1f} MiB; "
                        f"params {pbytes / 2**20:.2f} MiB"))
    return rows, meta


def run(smoke: bool = False, groups: str | None = None, rounds: int | None = None) -> tuple[list[Row], dict]:
    from ballot_jax import loop
    from ballot_jax.methods import ballot, common as mcommon

    G_list = [int(g) for g in groups.split(",")] if groups else ([2] if smoke else [2, 10, 100, 200])
    rounds = rounds or (1 if smoke else 2)
    if smoke:
        n_train, n_val, hw, eval_bs = 64, 32, 8, 32
    else:
        # Every group must occur in the validation split (its accuracies give the weights): 200
        # examples, one batch, hold each of up to 200 round-robin groups; training is 9x that.
        n_train, n_val, hw, eval_bs = 1800, 200, 32, 200
    model = common.small_resnet(num_classes=10, smoke=smoke)
    base_cfg = dict(retrain_epochs=1, dense_epochs=1, batch_size=32, eval_batch_size=eval_bs, sparsity=0.95,
                    augment=False, model="resnet18", seeds=1, ballot={"vote_epochs": 1, "diag_batches": 0})
    base_ctx = None
    ratios: dict[str, dict[int, float]] = {"pass": {}, "train_steps": {}}
    rows: list[Row] = []
    meta: dict = {"n_train": n_train, "n_val": n_val, "image": hw, "rounds": rounds, "groups": G_list}
    ctxs, states, stages = {}, {}, {}
    for G in G_list:
        # Same images and labels for every G (same seeds); only the round-robin group ids differ.
        task = common.synthetic_task(n_train=n_train, n_val=n_val, n_test=n_val, hw=hw, num_classes=10, num_groups=G)
        if base_ctx is None:
            base_ctx = common.make_context(common.config(**base_cfg), task, model)
            state0, _ = common.init_run_state(base_ctx, model, task)
        for source in ("pass", "train_steps"):
            ctx = dataclasses.replace(base_ctx, task=task, config=common.config(**base_cfg, **{"ballot.vote_source": source}))
            st = ballot.initial_state(ctx, state0)
            stage = ballot.build_stages(ctx)[0]
            st, _ = stage.begin(ctx, st)
            ctxs[G, source], states[G, source], stages[G, source] = ctx, st, stage

    def plain() -> float:
        key = (G_list[0], "pass")
        ts, info, _ = loop.train_epoch(ctxs[key], _copy(states[key]).train, stage="ticket",
                                       stage_tag=mcommon.TICKET_TAG, epoch=0, epochs=1)
        common.block(ts)
        return info["train_seconds"]

    def voting(key) -> float:
        st = _copy(states[key])
        t0 = time.perf_counter()
        st, _ = stages[key].epoch(ctxs[key], st, 0)
        common.block(st)
        return time.perf_counter() - t0

    # Every round: a plain epoch, every (G, source) voting epoch, a plain epoch; each voting epoch
    # is compared with the mean of its round's two plain epochs, so all G share the same rounds.
    # The order of the voting epochs is reversed every other round. One warm-up round (compiling).
    keys = [(G, source) for G in G_list for source in ("pass", "train_steps")]
    times: dict = {"plain": [], **{f"{G}/{s}": [] for G, s in keys}}
    for r in range(rounds + 1):
        p0 = plain()
        vt = {k: voting(k) for k in (keys if r % 2 else keys[::-1])}
        p1 = plain()
        if r == 0:
            continue
        times["plain"].append((p0 + p1) / 2)
        for (G, source), t in vt.items():
            times[f"{G}/{source}"].append(t)
        done = ", ".join(f"{G}/{s} {t:.1f} s" for (G, s), t in vt.items())
        print(f"vote_cost round {r}: plain {p0:.1f}/{p1:.1f} s, {done} ({common.load_str()})", file=sys.stderr,
              flush=True)
    for G in G_list:
        for source in ("pass", "train_steps"):
            t = times[f"{G}/{source}"]
            r = common.median_ratio(t, times["plain"])
            ratios[source][G] = r
            rows.append(Row("P1", f"voting epoch / training epoch ({source}, G={G})", r, "x", f"<= {GOAL_RATIO}x",
                            r <= GOAL_RATIO, f"{common.median(t):.2f} s vs {common.median(times['plain']):.2f} s"))
    mrows, mmeta = memory_rows(ctxs[G_list[-1], "pass"], states[G_list[-1], "pass"], G_list[-1])
    meta.update(mmeta)
    for source in ("pass", "train_steps"):
        vals = list(ratios[source].values())
        if len(vals) > 1:
            spread = max(vals) / min(vals)
            rows.append(Row("P1", f"flatness in G ({source}): max/min ratio over G={G_list}", spread, "x",
                            f"<= {GOAL_FLAT}x", spread <= GOAL_FLAT))
    rows.extend(mrows)
    meta["seconds"] = times
    return rows, meta


def main(argv=None):
    def extra(p):
        p.add_argument("--groups", default=None, help="comma-separated group counts (default 2,10,100,200)")
        p.add_argument("--rounds", type=int, default=None, help="measured rounds (default 2)")

    return common.standard_main(NAME, __doc__.splitlines()[0], run, argv, extra)


if __name__ == "__main__":
    main()
