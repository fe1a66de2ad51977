"""Native CPU kernels for XLA:CPU, built on first use from ``lt_jax/csrc/conv3x3.cc``.

XLA:CPU's own (Eigen) convolutions are the largest part of a CPU training step, and
their weight gradients run at about half the speed of the forward pass. The C++ file
holds direct convolutions for the three passes of a 3x3, padding-1 convolution
(stride 1 or 2, NHWC/HWIO, float32) and BatchNorm's per-channel sums, registered as
XLA FFI custom calls that work off XLA's intra-op thread pool. :func:`conv3x3` is the
convolution with its gradient wired to them, :func:`channel_sums` the sums.

The library is compiled for the host (``-O3 -march=native``) with the system C++
compiler (``$CXX``, else ``c++``/``g++``/``clang++``) against the FFI headers that jaxlib
ships, and cached under ``$LT_JAX_CACHE`` (default ``~/.cache/lt_jax``) keyed by the
source, the compiler, jaxlib and the CPU, so a later run, or another machine sharing the
home directory, never loads a build that was not made for it. Building takes about 8 s
once. Without a compiler (or with ``LT_JAX_NATIVE=0``) :func:`available` is False, a
one-line warning says why, and the models keep XLA's ops: the numbers are the same,
only slower. On an x86 CPU without AVX-512 the library is built for the BatchNorm sums
only and the convolutions stay XLA's (:func:`convolutions_enabled`; ``LT_JAX_NATIVE=1``
forces them): there, measured on a 2-core AVX2 AMD EPYC, ResNet-32 at batch 128 trained
at 44.6 images/s with every native kernel, about 117 with none, and 140-150 with the
native sums beside XLA's convolutions.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.resources
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

_TARGETS = {
    "lt_jax_conv3x3_fwd": "LtJaxConv3x3Fwd",
    "lt_jax_conv3x3_dgrad": "LtJaxConv3x3Dgrad",
    "lt_jax_conv3x3_wgrad": "LtJaxConv3x3Wgrad",
    "lt_jax_channel_sums": "LtJaxChannelSums",
}
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-w")
# Tuned for the host's vector unit where the compiler can (GCC/Clang on x86: -march;
# Clang on Apple/ARM: -mcpu), else the compiler's portable default.
_ARCH_FLAGS = (("-march=native",), ("-mcpu=native",), ())
_LANES = 16  # the kernels vectorise over 16 output channels

_lock = threading.Lock()
_state: dict = {}


def _source() -> bytes:
    return importlib.resources.files("lt_jax").joinpath("csrc/conv3x3.cc").read_bytes()


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


@functools.cache
def _cpu_identity() -> str:
    """What -march=native depends on: the architecture and the CPU's feature flags (read
    once per process: every Conv trace asks)."""
    ident = [platform.machine()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:  # the first CPU's entries are enough
                if line.startswith(("flags", "Features", "model name")) and line not in ident:
                    ident.append(line)
    except OSError:
        ident.append(platform.processor())
    return "".join(ident)


def cache_root() -> str:
    """lt_jax's cache folder: ``$LT_JAX_CACHE``, else ``$XDG_CACHE_HOME/lt_jax`` or
    ``~/.cache/lt_jax`` (not created here)."""
    return os.environ.get("LT_JAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lt_jax"
    )


def _cache_dir() -> str:
    root = cache_root()
    try:
        os.makedirs(root, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    return tempfile.gettempdir()


def _build() -> str:
    """Path of the compiled library for this host, compiling it if needed (raises on failure)."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set $CXX)")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    include = jax.ffi.include_dir()
    source = _source()
    key = hashlib.sha256()
    parts = (source, version, jax.__version__, jax.lib.__version__, _cpu_identity())
    for part in (*parts, _FLAGS, _ARCH_FLAGS):
        key.update(part if isinstance(part, bytes) else repr(part).encode())
    lib = os.path.join(_cache_dir(), f"conv3x3-{key.hexdigest()[:16]}.so")
    if os.path.exists(lib):
        return lib
    log = logging.getLogger("lt_jax")
    log.info("building the native CPU kernels (once per CPU and version, about 10 s): %s", lib)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "conv3x3.cc")
        with open(src, "wb") as f:
            f.write(source)
        out = os.path.join(tmp, "conv3x3.so")
        errors = []
        for arch in _ARCH_FLAGS:
            proc = subprocess.run(
                [cxx, *_FLAGS, *arch, "-I", include, src, "-o", out],
                capture_output=True,
                text=True,
            )
            if proc.returncode == 0:
                break
            errors.append(proc.stderr.strip()[-1000:])
        else:
            raise RuntimeError(f"{cxx} failed: {errors[-1]}")
        # Atomic, so concurrent processes (pytest -n, several runs) never load a partial file.
        staged = f"{lib}.{os.getpid()}.tmp"
        shutil.copyfile(out, staged)
        os.replace(staged, lib)
    log.info("built the native CPU kernels in %.1f s", time.time() - started)
    return lib


def _load():
    """The library, loaded; a cached file that does not load (truncated by a full disk,
    say) is removed and rebuilt once."""
    path = _build()
    try:
        return ctypes.cdll.LoadLibrary(path)
    except OSError as e:
        logging.warning("lt_jax: rebuilding the native library, %s did not load: %s", path, e)
        os.remove(path)
        return ctypes.cdll.LoadLibrary(_build())


def _convolutions_are_fast() -> bool:
    """Whether the native convolutions beat XLA's on this host: they are tuned for AVX-512
    (16 float32 lanes, 24 accumulators of the 32 vector registers). On an AVX2-only x86
    CPU (AMD EPYC, 2 cores, ResNet-32 batch 128, XLA's convolutions otherwise) the step
    ran at 44.6 images/s with them against 140-150 without them."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True  # other vector units: the compiler's own tuning (-mcpu=native)
    identity = _cpu_identity()  # holds /proc/cpuinfo's flags line where there is one
    if "flags" not in identity:
        return True  # unknown: keep the previous behaviour (build and use them)
    return "avx512f" in identity.split()


def available() -> bool:
    """True when the native convolution is built and registered with XLA:CPU."""
    with _lock:
        if "ok" not in _state:
            _state["ok"] = False
            setting = os.environ.get("LT_JAX_NATIVE", "auto")
            if setting == "0":
                _state["why"] = "disabled by LT_JAX_NATIVE=0"
            else:
                try:
                    lib = _load()
                    for target, symbol in _TARGETS.items():
                        capsule = jax.ffi.pycapsule(getattr(lib, symbol))
                        jax.ffi.register_ffi_target(target, capsule, platform="cpu")
                    _state.update(ok=True, library=lib)
                except Exception as e:  # any failure means: keep XLA's convolutions
                    _state["why"] = f"{type(e).__name__}: {e}"
                    logging.warning(
                        "lt_jax: native CPU convolution unavailable (%s); using XLA's, "
                        "which is slower",
                        _state["why"],
                    )
        return _state["ok"]


def unavailable_reason() -> str | None:
    available()
    return _state.get("why")


def convolutions_enabled() -> bool:
    """True when :func:`conv3x3` should replace XLA's convolutions: the library is
    :func:`available` and the host is one where the kernels are faster (AVX-512, or not
    x86), or ``LT_JAX_NATIVE=1`` asks for them anyway."""
    if not available():
        return False
    return os.environ.get("LT_JAX_NATIVE") == "1" or _convolutions_are_fast()


def convolutions_off_reason() -> str | None:
    """Why :func:`convolutions_enabled` is False, else None."""
    if not available():
        return unavailable_reason()
    if convolutions_enabled():
        return None
    return (
        "this x86 CPU has no AVX-512: XLA's convolutions are faster here than the native "
        "kernels' 16-lane tiles (LT_JAX_NATIVE=1 forces them); the BatchNorm sums stay native"
    )


def supports(x_shape, w_shape, stride: int, dtype) -> bool:
    """Whether :func:`conv3x3` runs natively for these shapes (else use XLA's convolution)."""
    return (
        len(x_shape) == 4
        and tuple(w_shape[:2]) == (3, 3)
        and stride in (1, 2)
        and w_shape[3] % _LANES == 0
        and jnp.dtype(dtype) == jnp.float32
    )


def _out_shape(x_shape, w_shape, stride):
    n, h, w, _ = x_shape
    return (n, (h - 1) // stride + 1, (w - 1) // stride + 1, w_shape[3])


def _fwd_call(x, w, stride):
    out = jax.ShapeDtypeStruct(_out_shape(x.shape, w.shape, stride), jnp.float32)
    return jax.ffi.ffi_call("lt_jax_conv3x3_fwd", out)(x, w, stride=np.int64(stride))


def _xla_conv(x, w, stride):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x, w, stride: int = 1):
    """``conv_general_dilated(x, w, (stride, stride), padding 1, NHWC/HWIO)`` in float32,
    computed by the native kernels (call :func:`available` first; shapes per :func:`supports`)."""
    return _fwd_call(x, w, stride)


def _conv3x3_fwd(x, w, stride):
    return _fwd_call(x, w, stride), (x, w)


def _conv3x3_bwd(stride, res, g):
    x, w = res
    g = g.astype(jnp.float32)
    dw = jax.ffi.ffi_call("lt_jax_conv3x3_wgrad", jax.ShapeDtypeStruct(w.shape, jnp.float32))(
        x, g, stride=np.int64(stride)
    )
    if x.shape[3] % _LANES == 0:
        dx = jax.ffi.ffi_call("lt_jax_conv3x3_dgrad", jax.ShapeDtypeStruct(x.shape, jnp.float32))(
            g, w, stride=np.int64(stride)
        )
    else:  # e.g. the RGB stem: XLA's transpose (its input gradient is rarely used at all)
        dx = jax.vjp(lambda x_: _xla_conv(x_, w, stride), x)[1](g)[0]
    return dx, dw


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def channel_sums_supported(shape, dtype) -> bool:
    """Whether :func:`channel_sums` runs natively for an array of this shape and dtype."""
    return len(shape) >= 2 and shape[-1] % _LANES == 0 and jnp.dtype(dtype) == jnp.float32


def channel_sums(a, b):
    """Per-channel ``(sum(a), sum(a * b))`` over all but the last axis, float32 inputs of one
    shape; the leading axis (images) is summed block by block, the block totals in double."""
    shape = jax.ShapeDtypeStruct((2, a.shape[-1]), jnp.float32)
    out = jax.ffi.ffi_call("lt_jax_channel_sums", shape)(a, b)
    return out[0], out[1]
