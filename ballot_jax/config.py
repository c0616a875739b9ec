"""The configuration every experiment has: one place for every key, its default and meaning.

``configs/*.py`` start from :func:`base_config` and override what their dataset needs. The dict
is locked, so a misspelt key (``--config.sparsty=0.9``) is an error that names it instead of a
silently ignored setting.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import ml_collections
from ml_collections import config_dict
from ml_collections.config_flags import config_path

from ballot_jax import masks, train
from ballot_jax.data import tasks as data_tasks

placeholder = config_dict.placeholder


def base_config() -> ml_collections.ConfigDict:
    """Defaults for every key (paper recipe for optimisation, quickstart-sized data)."""
    c = ml_collections.ConfigDict()
    # --- identity (set by configs/*.py; name the default work directory) -----------------------
    c.name = "base"  # config name (configs/<name>.py); the default workdir is runs/<name>[_<variant>]
    c.variant = ""  # the variants applied, comma-separated (configs/utkface.py:cpu,gender_by_race)
    # --- what to compare -----------------------------------------------------------------------
    c.methods = "all"  # comma-separated method names, or "all"
    c.seeds = 3  # number of seeds; seed i uses seed_offset + i
    c.seed_offset = 0  # seeds run are seed_offset … seed_offset + seeds − 1
    c.sparsity = 0.9  # fraction of prunable weights removed (every method)
    c.sweep = ""  # comma-separated sparsities for a sweep over Ω (empty: just `sparsity`)
    c.accuracy_budget = 0.05  # ε: a method is "within budget" if dense acc − acc ≤ ε
    # --- data (ballot_jax.data.tasks) ------------------------------------------------------------
    d = data_tasks.DEFAULTS  # the one home of the data defaults (their meanings are documented there too)
    c.dataset = d["dataset"]  # quickstart | utk_face | celeb_a | cifar10_s | cifar100 | tiny_imagenet
    c.label = config_dict.FieldReference(d["label"], field_type=str)  # attribute used as the class label (None: the dataset's default, e.g. utk_face: race)
    c.groups = d["groups"]  # fairness groups: "classes" (paper), an attribute (race, gender, color, Male…) or "classes*ATTR"
    c.image_size = config_dict.FieldReference(d["image_size"], field_type=int)  # side length fed to the model (None: the dataset's default)
    c.data_dir = config_dict.FieldReference(d["data_dir"], field_type=str)  # TFDS data dir (None: ~/tensorflow_datasets or $TFDS_DATA_DIR)
    c.manual_dir = config_dict.FieldReference(d["manual_dir"], field_type=str)  # where the downloaded archives are (None: <data_dir>/downloads/manual)
    c.prepare = d["prepare"]  # prepare a missing dataset from manual_dir automatically
    c.in_memory = d["in_memory"]  # hold the splits in memory ("true"), stream them ("false") or decide by size ("auto")
    c.in_memory_max_mb = d["in_memory_max_mb"]  # size limit of in_memory="auto"
    c.data_on_device = d["data_on_device"]  # put in-memory splits on the accelerator (gather + augmentation jitted)
    c.worker_count = d["worker_count"]  # grain worker processes for streamed splits (0: in process)
    c.read_threads = d["read_threads"]  # grain reader threads for streamed splits
    c.train_limit = config_dict.FieldReference(d["train_limit"], field_type=int)  # keep only the first N training examples (None: all)
    c.val_limit = config_dict.FieldReference(d["val_limit"], field_type=int)  # keep only the first N validation examples (None: all)
    c.test_limit = config_dict.FieldReference(d["test_limit"], field_type=int)  # keep only the first N test examples (None: all)
    c.data_seed = d["data_seed"]  # quickstart only: seed of its split and colouring
    c.color_fraction = d["color_fraction"]  # quickstart only: share of digits 0-4 in colour (5-9: in gray)
    c.val_fraction = d["val_fraction"]  # quickstart only: validation share
    c.test_fraction = d["test_fraction"]  # quickstart only: test share
    c.augment = True  # random crop + horizontal flip on training batches
    # --- model ----------------------------------------------------------------------------------
    c.model = "cnn_small"  # cnn_small | resnet18 | resnet50 | vgg16
    c.width = 1.0  # channel multiplier (1.0: the standard widths)
    c.stem = "cifar"  # ResNet stem: "cifar" (3x3/1) or "imagenet" (7x7/2 + max-pool)
    c.conv_impl = "auto"  # convolution lowering: "auto" (XLA, fastest per shape), "auto_torch" (CPU: PyTorch's kernels on large maps; pip install torch), "xla", "patches", "hybrid", "torch" or "fwd/dx/dk"
    c.dtype = "float32"  # compute dtype, float32 or bfloat16 (params stay float32)
    c.keep_stem = False  # never prune the first convolution
    c.keep_head = False  # never prune the classifier
    # --- training budget (the same for every method) --------------------------------------------
    c.retrain_epochs = 10  # epochs every method trains its chosen mask (the retraining budget)
    c.dense_epochs = 10  # epochs of the shared dense run
    c.batch_size = 32  # training batch size
    c.eval_batch_size = 256  # evaluation batch size
    c.rewind_step = 0  # 0: rewind to θ0; k > 0: late rewinding to θ_k
    # --- optimiser (paper prototype: SGD 0.1, momentum 0.9, wd 2e-4, ×0.1 at 40/60/80%) ---------
    opt = train.OptimizerConfig()  # the one home of the optimiser defaults
    c.optimizer = opt.optimizer  # sgd | adam | adamw
    c.learning_rate = opt.learning_rate  # peak learning rate
    c.momentum = opt.momentum  # SGD momentum
    c.weight_decay = opt.weight_decay  # L2 weight decay
    c.nesterov = opt.nesterov  # Nesterov momentum
    c.schedule = opt.schedule  # step | cosine | warmup_cosine | constant | warmup_constant (restarts per stage)
    c.decay_boundaries = opt.decay_boundaries  # fractions of a stage where the "step" schedule decays
    c.decay_factor = opt.decay_factor  # multiplier at each "step" boundary
    c.warmup_fraction = opt.warmup_fraction  # share of a stage spent warming up (warmup_* schedules)
    # --- Ballot (config.ballot) -------------------------------------------------------------------
    # The default Ballot (criterion, trajectory, retraining) was chosen on the validation split of the
    # :bench ablations (docs/method.md); the paper's setting is ballot.criterion="gradient",
    # ballot.vote_trajectory="ticket", ballot.retrain_from="rewind_point".
    c.ballot = ml_collections.ConfigDict()
    c.ballot.criterion = "taylor"  # selection criterion, gradient | taylor | magnitude_veto | group_balanced | prototype
    c.ballot.vote_trajectory = "dense"  # votes on the masked ticket's retraining ("ticket") or the dense net trained on ("dense")
    c.ballot.retrain_from = "trained"  # retrain the mask from θ0/θ_k ("rewind_point") or θ_T ("trained": lr rewinding)
    c.ballot.band = 0.1  # magnitude_veto: half-width of the re-ranked band around each cut-off, a fraction of k_l
    c.ballot.vote_epochs = placeholder(int)  # epochs of the vote trajectory, one vote round after each (None: retrain_epochs)
    c.ballot.vote_source = "pass"  # "pass" (a gradient pass over vote_data per vote) or "train_steps"
    c.ballot.vote_data = "val"  # split the vote gradients are taken on, "val" or "train"
    c.ballot.eta = 1.0  # weight η of the fairness gradient in s = â + η·f̂
    c.ballot.score = "abs"  # "abs" |â + η f̂| or "signed" â + η f̂
    c.ballot.quotas = "magnitude"  # per-layer kept counts, magnitude | uniform | erk
    c.ballot.acc_floor = 0.05  # floor on acc_g in the fairness weights w_g = 1/acc_g
    c.ballot.diag_batches = 2  # batches for the per-group conflict diagnostic (0: off)
    c.ballot.diag_max_groups = 32  # skip that diagnostic above this many groups
    c.ballot.vote_interval_steps = 0  # train_steps source: a vote round every N steps (0: per epoch)
    # --- Magnitude (config.magnitude) ---------------------------------------------------------------
    c.magnitude = ml_collections.ConfigDict()
    c.magnitude.schedule = "oneshot"  # "oneshot" or "gradual"
    c.magnitude.gradual_epochs = placeholder(int)  # gradual: epochs to reach the target (None: retrain_epochs)
    # --- Random (config.random) -----------------------------------------------------------------------
    c.random = ml_collections.ConfigDict()
    c.random.quotas = "magnitude"  # per-layer counts from the magnitude ticket | uniform | erk
    # --- LTH (config.lth) ----------------------------------------------------------------------------
    c.lth = ml_collections.ConfigDict()
    c.lth.rate = 0.2  # fraction of the remaining weights pruned per round
    c.lth.schedule = "iterative"  # "iterative" or "oneshot"
    c.lth.round_epochs = placeholder(int)  # epochs of each intermediate round (None: retrain_epochs)
    c.lth.max_rounds = placeholder(int)  # cap on the number of rounds (None: no cap)
    # --- SafeCompress (config.safecompress) --------------------------------------------------------
    c.safecompress = ml_collections.ConfigDict()
    c.safecompress.distribution = "erk"  # per-layer densities, erk | uniform
    c.safecompress.epochs = placeholder(int)  # training epochs (None: dense_epochs + retrain_epochs, the same budget)
    c.safecompress.init = "random"  # initial mask positions, random | magnitude
    c.safecompress.end_fraction = 0.75  # no mask updates after this fraction of training
    c.safecompress.momentum = 0.9  # gradient moving average for momentum growth
    c.safecompress.interval = placeholder(int)  # steps between mask updates (None: one epoch)
    c.safecompress.drop_fraction = 0.3  # initial drop fraction (cosine-decayed)
    c.safecompress.growth = "gradient"  # regrowth by gradient | momentum | random
    c.safecompress.candidates = 3  # candidate masks per update (1: plain RigL)
    c.safecompress.fairness_metric = "cwv"  # fairness test metric, cwv | mcd
    c.safecompress.acc_budget = 0.02  # candidates within this val accuracy of the best qualify
    # --- FairScratch (config.fairscratch) ----------------------------------------------------------
    c.fairscratch = ml_collections.ConfigDict()
    c.fairscratch.init = "kaiming_normal"  # frozen weights, model | kaiming_normal | signed_constant | scaled_signed_constant
    c.fairscratch.fairness_weight = 1.0  # weight λ of the fairness surrogate
    c.fairscratch.surrogate = "auto"  # auto | loss_variance | dp | eo
    c.fairscratch.learning_rate = placeholder(float)  # score learning rate (None: learning_rate)
    c.fairscratch.distribution = "uniform"  # per-layer densities, uniform | erk
    c.fairscratch.epochs = placeholder(int)  # score-training epochs (None: dense_epochs + retrain_epochs)
    c.fairscratch.optimizer = "sgd"  # optimizer of the scores, sgd | adam | adamw
    c.fairscratch.momentum = placeholder(float)  # (None: momentum)
    c.fairscratch.weight_decay = placeholder(float)  # (None: weight_decay)
    c.fairscratch.schedule = placeholder(str)  # (None: schedule)
    # --- scale-out --------------------------------------------------------------------------------
    c.distributed = False  # call jax.distributed.initialize() (multi-host)
    c.compilation_cache_dir = "~/.cache/ballot_jax/xla"  # persistent XLA compilation cache of experiments/*.py ("": off)
    c.data_parallel = True  # split batches over all devices when there are several (ballot_jax.parallel)
    # --- reporting --------------------------------------------------------------------------------
    c.progress = True  # tqdm progress bars per stage
    c.plots = True  # write PNG plots with the reports
    c.check_masks = True  # verify after every method that masked weights are exactly zero
    c.lock()
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks values that would otherwise fail late or give wrong numbers."""
    masks.check_sparsity(config.sparsity)
    for s in parse_sweep(config):
        masks.check_sparsity(s, "sweep sparsity")
    for key in ("retrain_epochs", "dense_epochs", "batch_size", "eval_batch_size", "seeds"):
        if int(config[key]) < (0 if key == "dense_epochs" else 1):
            raise ValueError(f"config.{key}={config[key]!r} must be a positive integer")
    if config.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"config.dtype={config.dtype!r}; valid: float32, bfloat16")


def parse_sweep(config: Any) -> list[float]:
    """The sparsities of a sweep (``config.sweep`` = "0.5,0.8,0.9"), or ``[]``."""
    text = str(config.get("sweep", "") or "").strip()
    return [float(x) for x in text.split(",") if x.strip()]


def flat_keys(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf of a (nested) config by its dotted key: ``{"sparsity": 0.9, "lth.rate": 0.2, …}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def set_key(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """``config.<key> = value`` for a dotted ``key`` (``"lth.rate"``); an unknown key is a
    ``ValueError`` that names it and the closest valid keys."""
    if key not in flat_keys(config):
        import difflib  # pylint: disable=import-outside-toplevel

        close = difflib.get_close_matches(key, list(flat_keys(config)), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown config key {key!r}{hint} (every key: ballot_jax.config.base_config())")
    config_path.set_value(key, config, value)


def override(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """``config`` with ``overrides`` set; keys dotted (``{"lth.rate": 0.3}``) or nested
    (``{"lth": {"rate": 0.3}}``). Keys must exist (see :func:`set_key`); returns ``config``."""
    for key, value in flat_keys(overrides).items():
        set_key(config, key, value)
    return config


def make(overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> ml_collections.ConfigDict:
    """:func:`base_config` with overrides (dotted or nested keys, as :func:`override` takes them)."""
    return override(base_config(), {**(overrides or {}), **kwargs})


def apply_variants(
    config: ml_collections.ConfigDict,
    arg: str | None,
    variants: Mapping[str, Mapping[str, Any]],
    *,
    name: str,
    soft: Sequence[str] = ("cpu", "bench"),
) -> ml_collections.ConfigDict:
    """Applies the comma-separated variants of ``arg`` (``"cpu,gender_by_race"``) to ``config``.

    ``variants`` maps a variant name to the keys it overrides (dotted for a method's keys,
    ``"lth.rate"``). The ``soft`` variants (sizes such
    as ``cpu`` and ``bench``) are applied first and any other variant may override their keys, so
    ``cpu,resnet50`` is a narrow ResNet-50. Unknown names, and two other variants that set one
    key to different values (``resnet18,vgg16``), are errors naming the valid choices. Sets
    ``config.name`` and ``config.variant`` (the variants in the order given).
    """
    given = [v.strip() for v in (arg or "").split(",") if v.strip()]
    chosen = [v for v in given if v in soft] + [v for v in given if v not in soft]
    unknown = [v for v in chosen if v not in variants]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(map(repr, unknown))} of configs/{name}.py; "
                         f"valid variants: {', '.join(variants)} (combine with commas, e.g. {name}.py:cpu)")
    setter: dict[str, str] = {}
    for v in chosen:
        for key, value in variants[v].items():
            if (key in setter and setter[key] != v and setter[key] not in soft
                    and variants[setter[key]][key] != value):
                raise ValueError(f"variants {setter[key]!r} and {v!r} both set config.{key}; choose one")
            setter[key] = v
            set_key(config, key, value)
    config.name = name
    config.variant = ",".join(dict.fromkeys(given))
    return config


def key_docs() -> list[tuple[str, str, Any, str]]:
    """``(section, key, default, meaning)`` for every leaf key of :func:`base_config` (dotted inside a
    method's section, ``lth.rate``), from its comments."""
    import inspect
    import re

    leaves = flat_keys(base_config())
    rows, section = [], ""
    for line in inspect.getsource(base_config).splitlines():
        head = re.match(r"\s*# --- (.+?) -+\s*$", line)
        if head:
            section = re.sub(r"\s*\(.*\)$", "", head.group(1)).strip()
            continue
        m = re.match(r"\s*c\.([\w.]+) = .*?(?:  # (.*))?$", line)
        if m and m.group(1) in leaves:
            rows.append((section, m.group(1), leaves[m.group(1)], (m.group(2) or "").strip()))
    return rows


def key_table() -> str:
    """A markdown table of every config key (section, key, default, meaning) for the README."""
    out = ["| section | key | default | meaning |", "|---|---|---|---|"]
    for section, key, default, meaning in key_docs():
        shown = "None" if default is None else repr(default)
        out.append(f"| {section} | `{key}` | `{shown}` | {meaning.replace('|', '&#124;')} |")
    return "\n".join(out) + "\n"


# Variants every dataset config offers (configs/<name>.py:resnet50 ...).
MODEL_VARIANTS: dict[str, dict[str, Any]] = {
    "resnet18": {"model": "resnet18"},
    "resnet50": {"model": "resnet50"},
    "vgg16": {"model": "vgg16"},
}


def cpu_variant(**overrides: Any) -> dict[str, Any]:
    """The ``cpu`` size of the dataset configs: finishes on a 2-core CPU instead of a GPU/TPU.

    ResNet-18 at width 0.25 on 32×32 images with the ImageNet stem (8×8 maps after it: about
    1 ms per training image on 2 cores), 3 dense + 2 vote + 2 retraining epochs without
    augmentation (too few epochs to overfit), batch 128, SGD on a cosine schedule at lr 0.1,
    90% sparsity, LTH pruning 70% per round (at 90% sparsity: two rounds, the first of one
    epoch). ``overrides`` adjust it per dataset.
    """
    v = {"model": "resnet18", "width": 0.25, "image_size": 32, "stem": "imagenet", "conv_impl": "auto",
         "dense_epochs": 3, "ballot.vote_epochs": 2, "retrain_epochs": 2, "batch_size": 128, "augment": False,
         "sparsity": 0.9, "schedule": "cosine", "learning_rate": 0.1, "lth.rate": 0.7, "lth.round_epochs": 1}
    v.update(overrides)
    return v


# Training images one seed of a :bench comparison (dense + ballot, lth, magnitude, random) sees.
# The cpu model trains at ≈ 2,500 images/s on 2 cores (measured: UTKFace, batch 128, 7.5 s per
# 18,961-image epoch), so 1.75 M images ≈ 12 min per seed, ≈ 40 min for 3 seeds with evaluation.
BENCH_IMAGES_PER_SEED = 1_750_000


def bench_epochs(train_images: int, images_per_seed: int = BENCH_IMAGES_PER_SEED) -> dict[str, int]:
    """The :bench epoch counts of a dataset with ``train_images`` training images, by one rule.

    A seed of the comparison trains dense D + ballot (V + E) + lth (R + E) + magnitude E + random
    E epochs with D = 1.5 E and V = R = E / 8, i.e. 5.75 E epochs; E is chosen so that they
    see ``images_per_seed`` images, clipped to [2, 40] (the dense run's cosine schedule then
    ends on a plateau).
    """
    e = int(min(40, max(2, round(images_per_seed / (5.75 * max(int(train_images), 1))))))
    v = max(1, round(e / 8))
    return {"retrain_epochs": e, "dense_epochs": int(round(1.5 * e)), "ballot.vote_epochs": v, "lth.round_epochs": v}


def bench_variant(train_images: int, **overrides: Any) -> dict[str, Any]:
    """The ``bench`` size: the ``cpu`` model trained until it plateaus, so fairness differences are signal.

    :func:`cpu_variant`'s model and image size (ResNet-18 at width 0.25, 32×32), with augmentation
    (random crop + flip), SGD with momentum on a cosine schedule at lr 0.1, batch 128, and the
    epoch counts of :func:`bench_epochs` for the dataset's training-set size. The dense run's
    plateau (validation accuracy of its last 3 epochs within 1 point, every class predicted) is
    recorded in results.json. ``overrides`` adjust it per dataset.
    """
    v = cpu_variant(augment=True)
    v.update(bench_epochs(train_images))
    v.update(overrides)
    return v


README_TABLE_MARKERS = ("<!-- config-table:start -->", "<!-- config-table:end -->")


def write_readme_table(path: str = "README.md") -> bool:
    """Regenerates the config table between the README's markers; True if the file changed."""
    start, end = README_TABLE_MARKERS
    with open(path) as f:
        text = f.read()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{key_table()}{end}{tail}"
    if new != text:
        with open(path, "w") as f:
            f.write(new)
    return new != text
