"""P5: train-step time fed by the real input pipeline / fed from device-resident arrays.

Data: UTKFace prepared as TFDS array_record (``ballot_jax.data.prepare``) from the real archive
(``../shared/data/UTKFace.tar.gz``) when present, else from a generated UTKFace-like archive;
prepared once into a cache directory outside the repository (``$BALLOT_BENCH_CACHE``, default
``<tmp>/ballot_jax_bench``). The task is loaded with ``in_memory=False``: the training split is
a ``SourceSplit`` that reads, decodes (JPEG 200x200) and resizes (64x64) every example on the fly
through grain. The same split materialised once gives the host ``ArraySplit`` (numpy batches)
and the device ``ArraySplit`` (jitted gather). The batches of the three paths are identical.

Each measurement is one pass over ``n_train`` examples (batch 32, shuffled) through the masked
train step of a small model (ResNet-18 width 0.25 with the ImageNet stem, 64x64, the reference
architecture narrowed); the paths alternate and the ratios are medians of paired rounds. The
pipeline's own rate (batches/s with no training) is reported for information.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.common import Row  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

NAME = "input_pipeline"
GOAL = 1.10


def load_streamed_task(smoke: bool, n_train: int, augment: bool):
    """The utk_face task with a streamed (grain) training split, preparing the data if needed."""
    from ballot_jax import data

    archive, real = common.utk_archive(smoke)
    data_dir = common.CACHE_DIR / ("tfds_real" if real else f"tfds_{archive.parent.name}")
    cfg = dict(dataset="utk_face", label="race", groups="classes", image_size=64, data_dir=str(data_dir),
               manual_dir=str(archive.parent), in_memory=False, train_limit=n_train, val_limit=32, test_limit=32)
    t0 = time.perf_counter()
    task = data.load_task(cfg)
    return task, {"archive": str(archive), "real_archive": real, "data_dir": str(data_dir),
                  "load_seconds": time.perf_counter() - t0}


def run(smoke: bool = False, n_train: int | None = None, rounds: int | None = None,
        augment: bool = False) -> tuple[list[Row], dict]:
    from benchmarks.masked_step import make_states
    from ballot_jax import models, train

    n_train = n_train or (64 if smoke else 640)
    rounds = rounds or (1 if smoke else 3)
    batch_size = 32
    task, meta = load_streamed_task(smoke, n_train, augment)
    streamed = task.train
    t0 = time.perf_counter()
    host = streamed.materialize(on_device=False)
    meta["materialize_seconds"] = time.perf_counter() - t0
    device = host.with_device(True)
    splits = {"stream": streamed, "host": host, "device": device}

    width = 0.25
    model = (models.create("cnn_small", num_classes=task.num_classes, width=0.5, conv_impl="auto") if smoke else
             models.create("resnet18", num_classes=task.num_classes, width=width, stem="imagenet", conv_impl="auto"))
    state, _, _, tx = make_states(model, 64, batch_size=batch_size)
    step = train.make_train_step(model.apply, tx)
    lr = np.float32(0.01)
    box = {"state": state, "epoch": 0}

    def epoch_of(name: str):
        def one() -> float:
            box["epoch"] += 1
            batches = splits[name].batches(batch_size=batch_size, epoch=box["epoch"], seed=0, shuffle=True,
                                           augment=augment, drop_remainder=True)
            s, n = box["state"], 0
            t = time.perf_counter()
            for b in batches:
                s, _ = step(s, b, lr)
                n += 1
            common.block(s)
            box["state"] = s
            return (time.perf_counter() - t) / n

        return one

    def pipeline_only(name: str) -> float:
        t = time.perf_counter()
        n = 0
        for b in splits[name].batches(batch_size=batch_size, epoch=0, seed=0, shuffle=True, augment=augment,
                                      drop_remainder=True):
            common.block(b)
            n += 1
        return (time.perf_counter() - t) / n

    t = common.paired({k: epoch_of(k) for k in splits}, rounds=rounds, warmup=1)
    alone = {k: pipeline_only(k) for k in splits}
    r_stream = common.median_ratio(t["stream"], t["device"])
    r_host = common.median_ratio(t["host"], t["device"])
    src = "real UTKFace" if meta["real_archive"] else "generated archive"
    rows = [
        Row("P5", f"step time, TFDS/grain streamed / device arrays ({src}, 64x64, batch 32)", r_stream, "x",
            f"<= {GOAL}x", r_stream <= GOAL,
            f"{common.median(t['stream']) * 1e3:.0f} ms vs {common.median(t['device']) * 1e3:.0f} ms per step; "
            f"pipeline alone {alone['stream'] * 1e3:.0f} ms/batch"),
        Row("P5", "step time, host ArraySplit / device arrays", r_host, "x", f"<= {GOAL}x", r_host <= GOAL,
            f"{common.median(t['host']) * 1e3:.0f} ms per step; pipeline alone {alone['host'] * 1e3:.1f} ms/batch"),
    ]
    meta.update({"seconds_per_step": t, "pipeline_only_seconds_per_batch": alone, "n_train": n_train,
                 "rounds": rounds, "augment": augment, "model_width": width,
                 "read_threads": getattr(streamed, "read_threads", None)})
    return rows, meta


def main(argv=None):
    def extra(p):
        p.add_argument("--n-train", dest="n_train", type=int, default=None, help="examples per pass (default 640)")
        p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
        p.add_argument("--augment", action="store_true", help="random crop + flip on every path")

    return common.standard_main(NAME, __doc__.splitlines()[0], run, argv, extra)


if __name__ == "__main__":
    main()
