"""Quickstart: the embedded digits colour/gray task (no download), every method in a few minutes.

A smoke demo, not a benchmark (see :mod:`ballot_jax.data.quickstart`): scikit-learn's digits
at 16×16, digits 0-4 mostly in colour and 5-9 mostly in gray during training, every test image
in both renderings. Groups are the ten classes (the paper's class-wise fairness). The model is
the small conv net at double width (about 15k weights), trained with SGD (lr 0.1, momentum 0.9)
on a cosine schedule: 10 dense epochs, 3 vote epochs, 6 retraining epochs, 80% sparsity.

Variants: ``color`` (groups = colour vs gray), ``classes_by_color`` (20 groups, digit × rendering),
``bench`` (trained to a plateau: 60 dense + 5 vote + 40 retraining epochs, the
:func:`ballot_jax.config.bench_epochs` rule).
"""

from ballot_jax import config as config_lib

VARIANTS = {
    "classes": {"groups": "classes"},
    "color": {"groups": "color"},
    "classes_by_color": {"groups": "classes*color"},
    # Trained to a plateau: epochs by the :bench rule for its 1,078 training images (clipped to 40).
    "bench": config_lib.bench_epochs(1_078),
}


def get_config(arg: str | None = None):
    """The quickstart config; ``arg`` is a comma-separated list of :data:`VARIANTS`."""
    c = config_lib.base_config()
    c.dataset = "quickstart"
    c.groups = "classes"
    c.model = "cnn_small"
    c.width = 2.0
    c.augment = False
    c.dense_epochs = 10
    c.retrain_epochs = 6
    c.ballot.vote_epochs = 3
    c.batch_size = 32
    c.learning_rate = 0.1
    c.schedule = "cosine"
    c.sparsity = 0.8
    c.lth.rate = 0.6  # 80% sparsity in two rounds (60%, then 80%) ...
    c.lth.round_epochs = 3  # ... the first one 3 epochs long
    c.seeds = 3
    return config_lib.apply_variants(c, arg, VARIANTS, name="quickstart")
