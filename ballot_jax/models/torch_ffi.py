"""PyTorch's convolution products as compiled XLA FFI targets, so that steps calling them are cached.

JAX never writes an executable that calls back into Python to its persistent compilation cache, so
with Python callbacks every process compiles the train, vote and evaluation steps of
``conv_impl="auto_torch"`` again (the reference train step: 3.6 s, every time). A custom call to a
registered FFI target has no Python in it: its executable is cached like any other, and a later
process only has to register the target again before it runs it.

``torch_conv_ffi.cc`` (next to this file) holds three small C++ handlers that call the same ATen
functions as the Python callbacks in :mod:`.torch_conv` on XLA's buffers in place. This module
compiles it once per machine into a shared library (a C++17 compiler, ``$CXX`` or ``c++``, PyTorch's
headers from the installed wheel and jaxlib's FFI headers), keyed by a hash of the source, the
compiler, PyTorch's installation and version and jaxlib's version, under ``$BALLOT_JAX_BUILD_DIR`` (default
``~/.cache/ballot_jax``), and registers the handlers with XLA.

* :func:`ensure_registered` — build (first time), load and register; ``False`` with one logged
  warning naming the reason and the fix when that is not possible, so the caller can fall back to
  Python callbacks (same values, not cached).
* ``BALLOT_JAX_TORCH_FFI=0`` in the environment skips all of this (Python callbacks).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("torch_conv_ffi.cc")
ENV_SWITCH = "BALLOT_JAX_TORCH_FFI"
ENV_BUILD_DIR = "BALLOT_JAX_BUILD_DIR"
# product -> (XLA custom-call target name, exported C symbol). The "_v1" suffix changes whenever the
# handlers' signature does, so a cached executable never calls a handler of another signature.
TARGETS = {
    "forward": ("ballot_torch_conv_forward_v1", "BallotTorchConvForward"),
    "input_grad": ("ballot_torch_conv_input_grad_v1", "BallotTorchConvInputGrad"),
    "kernel_grad": ("ballot_torch_conv_kernel_grad_v1", "BallotTorchConvKernelGrad"),
}
_BUILD_TIMEOUT_S = 900


class BuildError(RuntimeError):
    """The handlers could not be compiled or loaded here (message: the reason, first line)."""


def build_dir() -> Path:
    """Where built libraries are kept: ``$BALLOT_JAX_BUILD_DIR`` or ``~/.cache/ballot_jax``."""
    if os.environ.get(ENV_BUILD_DIR):
        return Path(os.environ[ENV_BUILD_DIR])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ballot_jax"


def _compiler() -> str:
    cxx = os.environ.get("CXX") or "c++"
    path = shutil.which(cxx)
    if path is None:
        raise BuildError(f"no C++ compiler found ({cxx!r}; set $CXX or install g++/clang++)")
    return path


def _command(torch: Any, compiler: str, output: Path) -> list[str]:
    from torch.utils import cpp_extension  # noqa: PLC0415 (optional dependency)

    includes = [*cpp_extension.include_paths(), jax.ffi.include_dir()]
    libs = cpp_extension.library_paths()
    abi = int(bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)))
    return [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            *[f"-I{p}" for p in includes], str(SOURCE), *[f"-L{p}" for p in libs],
            *[f"-Wl,-rpath,{p}" for p in libs], "-lc10", "-ltorch_cpu", "-o", str(output)]


def library_path(torch: Any, compiler: str) -> Path:
    """The library's path for this source, compiler, PyTorch and jaxlib (built or not)."""
    import jaxlib  # noqa: PLC0415

    key = hashlib.sha256()
    # The torch directory too: the library links (and keeps an rpath to) that installation's libtorch.
    for part in (SOURCE.read_bytes(), compiler.encode(), torch.__version__.encode(), torch.__file__.encode(),
                 jaxlib.__version__.encode(), sys.platform.encode()):
        key.update(part)
        key.update(b"\0")
    return build_dir() / f"torch_conv_ffi-{key.hexdigest()[:16]}.so"


def build(torch: Any) -> Path:
    """Compile the handlers unless already built; the library's path. ``BuildError`` on failure.

    Written to a temporary name and renamed into place, so concurrent builders never load a
    half-written library."""
    compiler = _compiler()
    path = library_path(torch, compiler)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("compiling the PyTorch convolution handlers for XLA once (about 10-20 s) into %s", path)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        proc = subprocess.run(_command(torch, compiler, Path(tmp)), capture_output=True, text=True,
                              timeout=_BUILD_TIMEOUT_S)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:300])
            raise BuildError(f"compiling {SOURCE.name} failed: {first}")
        os.replace(tmp, path)
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"compiling {SOURCE.name} took over {_BUILD_TIMEOUT_S} s") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _register(library: Path) -> None:
    lib = ctypes.CDLL(str(library))
    for target, symbol in TARGETS.values():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")


@functools.cache
def ensure_registered() -> bool:
    """True when the FFI handlers are registered with XLA in this process (built first if needed).

    False when ``BALLOT_JAX_TORCH_FFI=0`` or they cannot be built or loaded here; the latter is
    logged once as a warning with the reason and the fix. Needs PyTorch (imported here). Decided
    once per process."""
    return try_register()


def try_register() -> bool:
    """:func:`ensure_registered` without its once-per-process memory (build, load, register)."""
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    import torch  # noqa: PLC0415 (optional dependency; also loads libtorch before the library)

    try:
        _register(build(torch))
    except (BuildError, OSError, AttributeError) as e:
        log.warning("PyTorch convolutions run as Python callbacks, which JAX does not keep in its "
                    "compilation cache (every process compiles the steps again): %s. Fix: install a "
                    "C++17 compiler (or set $CXX); set %s=0 to use callbacks without this warning",
                    str(e).splitlines()[0] if str(e) else type(e).__name__, ENV_SWITCH)
        return False
    return True


__all__ = ["BuildError", "build", "build_dir", "ensure_registered", "try_register", "library_path", "TARGETS", "SOURCE"]
