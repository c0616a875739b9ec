"""The configuration every experiment has: one place for every key, its default and meaning.

``configs/*.py`` start from :func:`base_config` and override what their dataset needs. The dict
is locked, so a misspelt key (``--config.sparsty=0.9``) is an error that names it instead of a
silently ignored setting.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from ballot_jax import masks

placeholder = config_dict.placeholder


def base_config() -> ml_collections.ConfigDict:
    """Defaults for every key (paper recipe for optimisation, quickstart-sized data)."""
    c = ml_collections.ConfigDict()
    # --- what to compare -----------------------------------------------------------------------
    c.methods = "all"  # comma-separated method names, or "all"
    c.seeds = 3  # number of seeds; seed i uses seed_offset + i
    c.seed_offset = 0
    c.sparsity = 0.9  # fraction of prunable weights removed (every method)
    c.sweep = ""  # comma-separated sparsities for a sweep over Ω (empty: just `sparsity`)
    c.accuracy_budget = 0.05  # ε: a method is "within budget" if dense acc − acc ≤ ε
    # --- data (ballot_jax.data.tasks) ------------------------------------------------------------
    c.dataset = "quickstart"
    c.label = placeholder(str)
    c.groups = "classes"
    c.image_size = placeholder(int)
    c.data_dir = placeholder(str)
    c.manual_dir = placeholder(str)
    c.prepare = True
    c.in_memory = "auto"
    c.in_memory_max_mb = 2048
    c.data_on_device = False
    c.worker_count = 0
    c.read_threads = 2
    c.train_limit = placeholder(int)
    c.val_limit = placeholder(int)
    c.test_limit = placeholder(int)
    c.data_seed = 0
    c.color_fraction = 0.95
    c.val_fraction = 0.1
    c.test_fraction = 0.3
    c.augment = True
    # --- model ----------------------------------------------------------------------------------
    c.model = "cnn_small"
    c.width = 1.0
    c.stem = "cifar"
    c.conv_impl = "auto"
    c.dtype = "float32"  # or bfloat16 (compute only; params stay float32)
    c.keep_stem = False  # never prune the first convolution
    c.keep_head = False  # never prune the classifier
    # --- training budget (the same for every method) --------------------------------------------
    c.epochs = 10  # retraining epochs after a mask is chosen
    c.dense_epochs = 10
    c.batch_size = 32
    c.eval_batch_size = 256
    c.rewind_step = 0  # 0: rewind to θ0; k > 0: late rewinding to θ_k
    # --- optimiser (paper prototype: SGD 0.1, momentum 0.9, wd 2e-4, ×0.1 at 40/60/80%) ---------
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 2e-4
    c.nesterov = False
    c.schedule = "step"
    c.decay_boundaries = (0.4, 0.6, 0.8)
    c.decay_factor = 0.1
    c.warmup_fraction = 0.0
    # --- Ballot ---------------------------------------------------------------------------------
    c.vote_epochs = placeholder(int)  # default: epochs
    c.vote_source = "pass"
    c.vote_data = "val"
    c.eta = 1.0
    c.score = "abs"
    c.quotas = "magnitude"
    c.acc_floor = 0.05
    c.diag_batches = 2
    c.diag_max_groups = 32
    # --- baselines --------------------------------------------------------------------------------
    c.magnitude_schedule = "oneshot"
    c.lth_rate = 0.2
    c.lth_schedule = "iterative"
    c.lth_round_epochs = placeholder(int)
    c.lth_max_rounds = placeholder(int)
    c.sc_distribution = "erk"
    c.sc_interval = placeholder(int)
    c.sc_drop_fraction = 0.3
    c.sc_growth = "gradient"
    c.sc_candidates = 3
    c.sc_fairness_metric = "cwv"
    c.sc_acc_budget = 0.02
    c.fs_init = "kaiming_normal"
    c.fs_lambda = 1.0
    c.fs_surrogate = "auto"
    c.fs_learning_rate = placeholder(float)
    c.fs_distribution = "uniform"
    # --- scale-out --------------------------------------------------------------------------------
    c.distributed = False  # call jax.distributed.initialize() (multi-host)
    # --- reporting --------------------------------------------------------------------------------
    c.progress = True
    c.plots = True
    c.check_masks = True  # verify after every method that masked weights are exactly zero
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks values that would otherwise fail late or give wrong numbers."""
    masks.check_sparsity(config.sparsity)
    for s in parse_sweep(config):
        masks.check_sparsity(s, "sweep sparsity")
    for key in ("epochs", "dense_epochs", "batch_size", "eval_batch_size", "seeds"):
        if int(config[key]) < (0 if key == "dense_epochs" else 1):
            raise ValueError(f"config.{key}={config[key]!r} must be a positive integer")
    if config.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"config.dtype={config.dtype!r}; valid: float32, bfloat16")


def parse_sweep(config: Any) -> list[float]:
    """The sparsities of a sweep (``config.sweep`` = "0.5,0.8,0.9"), or ``[]``."""
    text = str(config.get("sweep", "") or "").strip()
    return [float(x) for x in text.split(",") if x.strip()]
