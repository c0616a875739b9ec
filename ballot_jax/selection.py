"""``select_subnetwork``: Ballot's mask for your own model and data, without writing a loop.

Example (runs on a CPU in a few seconds)::

    import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
    import ballot_jax

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
            return nn.Dense(3, name="head")(x.mean((1, 2)))

    rng = np.random.default_rng(0)
    def split(n):  # images in [0, 1], integer labels and group ids
        y = rng.integers(0, 3, n)
        return {"image": rng.random((n, 8, 8, 3), np.float32) + y[:, None, None, None],
                "label": y, "group": rng.integers(0, 2, n)}

    model = Net()
    theta0 = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    result = ballot_jax.select_subnetwork(model.apply, theta0, split(256), split(64),
                                          sparsity=0.8, criterion="taylor", dense_epochs=2,
                                          vote_epochs=2, batch_size=32, return_details=True)
    mask = result.mask           # pytree shaped like the params: bool leaves / None
    print(result.sparsity, result.ticket_share_kept, result.diagnostics[-1]["val_accuracy"])

The lower-level pieces are public too, for people who bring their own loop:
:func:`ballot_jax.conflicts.accuracy_fairness_gradients` (a, f from one vjp),
:func:`~ballot_jax.conflicts.scores`, :func:`~ballot_jax.conflicts.cast_votes`,
:func:`~ballot_jax.conflicts.mask_from_votes` and :mod:`ballot_jax.masks`.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np

from ballot_jax import config as config_lib
from ballot_jax import loop, masks, train
from ballot_jax.methods import ballot, common

PyTree = Any
# The keys of config.ballot that select_subnetwork takes as keyword arguments (vote_epochs is its own
# argument; retrain_from only matters to the retraining that follows the mask).
BALLOT_OPTIONS = tuple(k for k in ballot.OPTIONS if k not in ("vote_epochs", "retrain_from"))


@dataclasses.dataclass
class SubnetworkResult:
    """What :func:`select_subnetwork` found: the mask and how it was chosen."""

    mask: masks.Mask
    sparsity: float
    votes: PyTree
    score_sum: PyTree
    diagnostics: list[dict[str, Any]]  # one entry per vote round (val metrics, conflicts)
    ticket_share_kept: float  # share of the magnitude ticket's weights the mask keeps (equal quotas)
    magnitude_ticket_jaccard: float  # shared / union with the magnitude ticket
    trained_params: PyTree  # θ_T the magnitude ticket came from


@dataclasses.dataclass
class _Task:
    train: Any
    val: Any
    test: Any
    num_classes: int
    num_groups: int
    class_names: list
    group_names: list
    image_shape: tuple
    info: dict


def _as_split(data: Any, name: str):
    if hasattr(data, "batches") and hasattr(data, "num_batches"):
        return data
    from ballot_jax.data import ArraySplit

    if not isinstance(data, Mapping) or not {"image", "label", "group"} <= set(data):
        raise ValueError(
            f"{name} must be a ballot_jax.data Split or a mapping with 'image' [N,H,W,C], 'label' [N] "
            f"and 'group' [N] arrays; got {type(data).__name__}"
        )
    return ArraySplit(np.asarray(data["image"]), np.asarray(data["label"]), np.asarray(data["group"]), name=name)


def _max_id(split: Any, key: str) -> int:
    values = getattr(split, key + "s", None)
    if values is None:
        raise ValueError(f"pass num_{'classes' if key == 'label' else 'groups'} explicitly for a streamed split")
    return int(np.max(values)) + 1


def select_subnetwork(
    apply_fn: Callable[..., Any],
    variables: Mapping[str, PyTree],
    train_data: Any,
    val_data: Any,
    *,
    sparsity: float,
    criterion: str | None = None,
    trained_variables: Mapping[str, PyTree] | None = None,
    num_classes: int | None = None,
    num_groups: int | None = None,
    dense_epochs: int = 3,
    vote_epochs: int = 3,
    batch_size: int = 32,
    eval_batch_size: int = 256,
    optimizer: train.OptimizerConfig | None = None,
    keep_stem: bool = False,
    keep_head: bool = False,
    seed: int = 0,
    workdir: str | None = None,
    return_details: bool = False,
    **ballot_options: Any,
) -> masks.Mask | SubnetworkResult:
    """Ballot's subnetwork for a Flax model: returns a mask pytree shaped like the params.

    Args:
      apply_fn: ``model.apply``; called as ``apply_fn(variables, x, train=bool[, mutable=...])``.
      variables: the initial variables θ0 (``{"params": ..., "batch_stats": ...}``); the ticket is
        rewound to them.
      train_data / val_data: Splits from :mod:`ballot_jax.data`, or mappings of arrays ``image``
        f32[N,H,W,C], ``label`` int[N], ``group`` int[N] (the fairness groups; pass ``label`` again
        for the paper's class-wise fairness). Validation accuracies per group set the fairness
        weights w_g = 1/acc_g; every group must occur in ``val_data``.
      sparsity: fraction of prunable weights removed, in [0, 1).
      criterion: the selection criterion (:data:`ballot_jax.conflicts.CRITERIA`: ``gradient``,
        ``taylor``, ``magnitude_veto``, ``group_balanced``, ``prototype``); None: the default of
        :func:`ballot_jax.config.base_config`.
      trained_variables: θ_T, if you have trained the dense model already; otherwise it is
        trained here for ``dense_epochs``.
      vote_epochs: epochs of the vote trajectory; one vote round after each.
      optimizer: :class:`ballot_jax.train.OptimizerConfig` (default: the paper's SGD recipe).
      workdir: checkpoint directory (resumable); None keeps everything in memory.
      ballot_options: ``vote_trajectory``, ``band``, ``vote_source``, ``vote_data``, ``eta``,
        ``score``, ``quotas``, ``acc_floor``, ``diag_batches``, ``diag_max_groups`` (see
        :mod:`ballot_jax.methods.ballot`).

    Returns:
      The Ballot mask, or a :class:`SubnetworkResult` with votes and diagnostics when
      ``return_details``.
    """
    masks.check_sparsity(sparsity)
    train_split = _as_split(train_data, "train_data")
    val_split = _as_split(val_data, "val_data")
    num_classes = num_classes or max(_max_id(train_split, "label"), _max_id(val_split, "label"))
    num_groups = num_groups or max(_max_id(train_split, "group"), _max_id(val_split, "group"))
    image_shape = tuple(getattr(train_split, "image_shape", ()))
    task = _Task(train_split, val_split, val_split, num_classes, num_groups, [str(c) for c in range(num_classes)],
                 [str(g) for g in range(num_groups)], image_shape, {})
    if criterion is not None:
        ballot_options["criterion"] = criterion
    for key in ballot_options:
        if key not in BALLOT_OPTIONS:
            raise ValueError(f"unknown option {key!r}; Ballot options: {', '.join(BALLOT_OPTIONS)}")
    cfg = config_lib.make(sparsity=float(sparsity), retrain_epochs=int(vote_epochs), dense_epochs=int(dense_epochs),
                          batch_size=int(batch_size), augment=False,
                          ballot=dict(ballot_options, vote_epochs=int(vote_epochs)))
    ballot.settings(types.SimpleNamespace(config=cfg))  # a bad option fails here, before any training
    opt = optimizer or train.OptimizerConfig()
    ctx = loop.Context(apply_fn=apply_fn, task=task, config=ml_collections.FrozenConfigDict(cfg), opt=opt,
                       tx=train.make_optimizer(opt), seed=seed, batch_size=batch_size, eval_batch_size=eval_batch_size,
                       is_prunable=masks.prunable_filter(keep_stem=keep_stem, keep_head=keep_head))
    state = loop.initial_state(ctx, variables)
    sub = (lambda name: None) if workdir is None else (lambda name: f"{workdir}/{name}")
    if trained_variables is None:
        state, _ = loop.run_stages(ctx, [common.dense_stage(ctx)], state, sub("dense"), run_name="dense")
    else:
        trained = loop.fresh_train_state(ctx, trained_variables["params"], trained_variables.get("batch_stats", {}),
                                         state.train.mask)
        state = state.replace(train=trained)
    trained_params = jax.tree.map(np.asarray, state.train.params)
    ticket_stage = ballot.build_stages(ctx)[0]
    state, meta = loop.run_stages(ctx, [ticket_stage], ballot.initial_state(ctx, state), sub("ticket"),
                                  run_name="ballot ticket")
    mask = state.train.mask
    if not return_details:
        return mask
    end = [e for e in meta["log"] if e["stage"] == "ticket" and e["phase"] == "end"][-1]
    return SubnetworkResult(
        mask=mask,
        sparsity=masks.sparsity(mask),
        votes=state.votes,
        score_sum=state.extras["score_sum"],
        diagnostics=[e for e in meta["log"] if e["stage"] == "ticket" and e["phase"] == "epoch"],
        ticket_share_kept=end["ticket_share_kept"],
        magnitude_ticket_jaccard=end["jaccard_with_magnitude_ticket"],
        trained_params=trained_params,
    )
