"""experiments/run.py: a second process with the same config compiles nothing (persistent cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.seeds=1", "--config.methods=ballot,magnitude", "--config.dense_epochs=1", "--config.retrain_epochs=1",
        "--config.ballot.vote_epochs=1", "--config.lth.round_epochs=1", "--config.progress=False", "--config.plots=False"]


def _run(workdir, cache):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "run.py"),
                           "--config=" + os.path.join(REPO, "configs", "quickstart.py"), *TINY,
                           f"--config.compilation_cache_dir={cache}", f"--workdir={workdir}"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(workdir, "timings.json")) as f:
        return json.load(f)["compilation_cache"]


@pytest.mark.slow  # two whole quickstart processes (≈ 40 s); the two tests below check the cache in seconds
def test_second_process_hits_the_cache_and_gives_the_same_bytes(tmp_path):
    cache = tmp_path / "cache"
    first = _run(tmp_path / "a", cache)
    second = _run(tmp_path / "b", cache)
    assert first["misses"] == first["written"] > 0 and any(cache.iterdir())
    assert second["misses"] == second["written"] == 0 and second["hits"] == second["requests"] > 0
    assert (tmp_path / "a" / "results.json").read_bytes() == (tmp_path / "b" / "results.json").read_bytes()


def _counts_in_two_processes(script: str, cache) -> list[list[int]]:
    """[requests, hits, misses, written] of ``script`` (printing them last) run in two processes in a row."""
    counts = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", script, str(cache)],
                              capture_output=True, text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
        counts.append([int(v) for v in proc.stdout.split()[-4:]])
    return counts


_CALLBACK_SCRIPT = """
import sys, jax, jax.numpy as jnp, numpy as np
from ballot_jax import experiment
experiment.use_compilation_cache(sys.argv[1])
f = jax.jit(lambda x: jax.pure_callback(lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct((3,), jnp.float32), x) + 1)
f(jnp.ones(3, jnp.float32)).block_until_ready()
c = experiment.cache_counts()
print(c["requests"], c["hits"], c["misses"], c["written"])
"""


def test_an_executable_with_a_python_callback_counts_as_a_miss_in_every_process(tmp_path):
    """JAX never writes executables that call back into Python (as conv_impl='auto_torch' steps do) to
    the cache, and its own 'cache_misses' event does not count them: cache_counts() must."""
    first, second = _counts_in_two_processes(_CALLBACK_SCRIPT, tmp_path / "cache")
    assert first[2] >= 1 and first[2] == first[0] - first[1]
    assert second[2] >= 1 and second[1] == first[3]  # the callback's executable is missed again; the rest hit


_TORCH_SCRIPT = """
import sys, jax, jax.numpy as jnp
from ballot_jax import experiment
from ballot_jax.models import conv, torch_conv
experiment.use_compilation_cache(sys.argv[1])
assert torch_conv.use_ffi()
pads = ((1, 1), (1, 1))
loss = lambda x, k: jnp.sum(conv.apply_plan(x, k, (1, 1), pads, None, "torch") ** 2)
g = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4)))
jax.block_until_ready(g)
c = experiment.cache_counts()
print(c["requests"], c["hits"], c["misses"], c["written"])
"""


def test_pytorch_convolutions_as_ffi_targets_are_cached_across_processes(tmp_path):
    """conv_impl='auto_torch' steps call PyTorch through compiled FFI targets (not Python callbacks),
    so a second process finds them in the cache."""
    pytest.importorskip("torch")
    from ballot_jax.models import torch_conv

    if not torch_conv.use_ffi():
        pytest.skip("the FFI handlers cannot be built here (see the logged warning)")
    first, second = _counts_in_two_processes(_TORCH_SCRIPT, tmp_path / "cache")
    assert first[3] == first[2] >= 1  # every miss written, the step with PyTorch's products included
    assert second[2] == 0 and second[1] == second[0] == first[0]
