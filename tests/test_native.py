"""The native CPU kernels (lt_jax/models/native.py, lt_jax/csrc/conv3x3.cc): values and
gradients against float64 NumPy written from the definition of a padded 3x3 convolution,
determinism, the fallbacks, and the models and host-memory setting that use them."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lt_jax.models import native
from tests import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # for tests.test_kernels

pytestmark = pytest.mark.skipif(
    not native.available(), reason=f"native kernels unavailable: {native.unavailable_reason()}"
)


def _taps(h, w, s):
    """Output size and, per tap (a, b), the slices of the 1-padded input that it reads."""
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    for a in range(3):
        for b in range(3):
            rows = slice(a, a + s * (ho - 1) + 1, s)
            yield ho, wo, a, b, (rows, slice(b, b + s * (wo - 1) + 1, s))


def numpy_conv(x, w, s):
    """y[n, o, p] = sum_{a, b} xpad[n, s*o + a, s*p + b] @ w[a, b], in float64."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = 0.0
    for _, _, a, b, (rows, cols) in _taps(x.shape[1], x.shape[2], s):
        y = y + xp[:, rows, cols, :] @ w[a, b]
    return y


def numpy_conv_grads(x, w, g, s):
    """Gradients of sum(numpy_conv(x, w, s) * g) w.r.t. x and w, from the same sums."""
    x, w, g = (np.asarray(v, np.float64) for v in (x, w, g))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for _, _, a, b, (rows, cols) in _taps(x.shape[1], x.shape[2], s):
        dxp[:, rows, cols, :] += g @ w[a, b].T
        dw[a, b] = np.einsum("nopk,nopm->km", xp[:, rows, cols, :], g)
    return dxp[:, 1:-1, 1:-1, :], dw


def _close(actual, expected, tol=2e-6):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    err = np.max(np.abs(actual - expected)) / (np.max(np.abs(expected)) + 1e-30)
    assert err < tol, err


# (batch, height, width, in channels, out channels, stride)
SHAPES = [
    (2, 8, 8, 16, 16, 1),
    (3, 9, 7, 16, 32, 2),  # odd sizes, stride 2
    (2, 8, 8, 3, 16, 1),  # RGB stem: input gradient through XLA's transpose
    (1, 5, 6, 32, 16, 2),
    (2, 4, 4, 64, 64, 1),
    (2, 6, 6, 32, 48, 1),  # 48 outputs: one block of 16 at a time
    (1, 3, 40, 16, 16, 1),  # wider than a register tile, with a remainder
    (1, 1, 1, 16, 16, 1),
    (40, 4, 4, 16, 16, 1),  # more images than work chunks
    (2, 6, 6, 128, 64, 1),  # wide: dw split by channels, not by images
    (3, 5, 5, 96, 128, 2),
    (2, 3, 3, 256, 256, 1),
]


@pytest.mark.parametrize("n, h, w, k, m, s", SHAPES)
def test_conv3x3_matches_numpy_values_and_gradients(n, h, w, k, m, s):
    rng = np.random.default_rng(n * 1000 + h * 10 + k)
    x = rng.standard_normal((n, h, w, k)).astype(np.float32)
    wt = rng.standard_normal((3, 3, k, m)).astype(np.float32)
    y, vjp = jax.vjp(lambda x_, w_: native.conv3x3(x_, w_, s), jnp.asarray(x), jnp.asarray(wt))
    expected = numpy_conv(x, wt, s)
    _close(y, expected)
    g = rng.standard_normal(expected.shape).astype(np.float32)
    dx, dw = vjp(jnp.asarray(g))
    ref_dx, ref_dw = numpy_conv_grads(x, wt, g, s)
    _close(dx, ref_dx)
    _close(dw, ref_dw)


def test_numpy_reference_gradient_matches_finite_differences():
    """The test's own reference, checked once against central differences."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 5, 4, 2)), rng.standard_normal((3, 3, 2, 3))
    g = rng.standard_normal(numpy_conv(x, w, 2).shape)
    dx, dw = numpy_conv_grads(x, w, g, 2)
    eps = 1e-6

    def loss(x_, w_):
        return np.sum(numpy_conv(x_, w_, 2) * g)

    for which, grad, indices in (
        (0, dx, [(0, 4, 3, 1), (0, 0, 0, 0)]),
        (1, dw, [(0, 1, 1, 2), (2, 2, 0, 0), (1, 0, 1, 1)]),
    ):
        for idx in indices:
            args_up, args_down = [x.copy(), w.copy()], [x.copy(), w.copy()]
            args_up[which][idx] += eps
            args_down[which][idx] -= eps
            fd = (loss(*args_up) - loss(*args_down)) / (2 * eps)
            assert abs(fd - grad[idx]) < 1e-6 * max(1.0, abs(fd)), (which, idx, fd, grad[idx])


def test_conv3x3_matches_xla_convolution_inside_jit():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((4, 16, 16, 32)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 32, 64)), jnp.float32)
    mine = jax.jit(lambda x, w: native.conv3x3(x, w, 2))(x, w)
    xla = native._xla_conv(x, w, 2)
    _close(mine, xla, tol=1e-6)


def test_results_do_not_depend_on_the_run():
    """Fixed work chunks, partial sums added in chunk order: bitwise repeatable."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((64, 8, 8, 32)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 32, 32)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((64, 8, 8, 32)), jnp.float32)
    step = jax.jit(lambda x, w, g: jax.vjp(lambda w_: native.conv3x3(x, w_, 1), w)[1](g)[0])
    first = np.asarray(step(x, w, g))
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(step(x, w, g)), first)


def test_unsupported_shapes_are_clear_errors_not_crashes():
    assert not native.supports((2, 8, 8, 16), (3, 3, 16, 8), 1, jnp.float32)
    assert not native.supports((2, 8, 8, 16), (3, 3, 16, 16), 3, jnp.float32)
    assert not native.supports((2, 8, 8, 16), (3, 3, 16, 16), 1, jnp.bfloat16)
    assert native.supports((2, 8, 8, 3), (3, 3, 3, 16), 2, jnp.float32)
    with pytest.raises(Exception, match="multiple of 16"):
        native.conv3x3(jnp.ones((1, 4, 4, 16)), jnp.ones((3, 3, 16, 8)), 1).block_until_ready()


@pytest.mark.parametrize("shape", [(128, 32, 32, 16), (5, 3, 7, 32), (6, 64), (1, 1, 1, 16)])
def test_channel_sums_match_float64(shape):
    rng = np.random.default_rng(3)
    a = (rng.standard_normal(shape) * 0.5 + 5.0).astype(np.float32)  # far from zero mean
    b = rng.standard_normal(shape).astype(np.float32)
    total, products = jax.jit(native.channel_sums)(jnp.asarray(a), jnp.asarray(b))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    axes = tuple(range(len(shape) - 1))
    _close(total, a64.sum(axes), tol=1e-6)
    _close(products, (a64 * b64).sum(axes), tol=1e-6)
    _, squares = jax.jit(native.channel_sums)(jnp.asarray(a), jnp.asarray(a))
    _close(squares, (a64 * a64).sum(axes), tol=1e-6)


def _run(code, tmp_path, base=None, fast_compile=True, **env):
    """Run ``code`` in a fresh process on ONE CPU device (the native kernels' condition),
    with the environment ``base`` (default: this one) updated by ``env``. ``fast_compile``:
    XLA at its lowest optimisation level (most of these programs compile a lot, run little)."""
    flags = xla_flags(1, fast_compile=fast_compile)
    full = dict(os.environ if base is None else base, XLA_FLAGS=flags, **env)
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


MODEL_CHECK = f"""
import json, sys
import jax, numpy as np
sys.path.insert(0, {ROOT!r})
from lt_jax.models import kernels, native
from tests.test_kernels import resnet14_train_step

def run(impl):
    return resnet14_train_step(impl, kernels.compiler_options())

v_x, s_x, g_x, calls_x = run("xla")
v_c, s_c, g_c, calls_c = run("cpu")
grad_err = max(
    float(np.max(np.abs(np.asarray(b) - np.asarray(a))) / (np.max(np.abs(np.asarray(a))) + 1e-12))
    for a, b in zip(jax.tree.leaves(g_x), jax.tree.leaves(g_c), strict=True)
)
stat_err = max(
    float(np.max(np.abs(np.asarray(b) - np.asarray(a)) / (np.abs(np.asarray(a)) + 1e-3)))
    for a, b in zip(jax.tree.leaves(s_x), jax.tree.leaves(s_c), strict=True)
)
print(json.dumps(dict(
    available=native.available(), why=native.unavailable_reason(), enabled=kernels.native_enabled(),
    loss_err=abs(float(v_c) - float(v_x)) / abs(float(v_x)), grad_err=grad_err, stat_err=stat_err,
    calls_xla=calls_x, calls_cpu=calls_c,
)))
"""


CALLS_CHECK = f"""
import json, sys
sys.path.insert(0, {ROOT!r})
from lt_jax.models import kernels, native
from tests.test_kernels import resnet14_train_step

calls = resnet14_train_step("cpu", kernels.compiler_options(), trace_only=True)
print(json.dumps(dict(
    available=native.available(), why=native.unavailable_reason(), enabled=kernels.native_enabled(),
    calls_cpu=calls,
)))
"""


def test_resnet_on_one_cpu_device_uses_the_native_kernels_with_xlas_numbers(tmp_path):
    """A ResNet-14 train step with impl "cpu" on one device runs the native convolutions
    and BatchNorm sums and gets the plain XLA program's loss, gradients and statistics."""
    out, _ = _run(MODEL_CHECK, tmp_path)
    assert out["available"] and out["enabled"], out
    assert out["calls_xla"] == 0
    # 13 convolutions (3 passes each, the stem's input gradient aside) + 13 BatchNorms.
    assert out["calls_cpu"] >= 13 * 3 - 1 + 13
    assert out["loss_err"] < 1e-5
    assert out["grad_err"] < 1e-4, out
    assert out["stat_err"] < 1e-4, out


def test_without_a_compiler_the_models_fall_back_to_xla(tmp_path):
    """No usable compiler (a fresh cache, $CXX failing): one warning, and the traced train step
    calls none of the native ops (XLA's, whose numbers tests/test_kernels.py checks)."""
    out, err = _run(CALLS_CHECK, tmp_path, CXX="/bin/false", LT_JAX_CACHE=str(tmp_path))
    assert not out["available"] and not out["enabled"]
    assert "failed" in out["why"] and "native CPU convolution unavailable" in err
    assert out["calls_cpu"] == 0  # XLA's ops (tests/test_kernels.py checks their numbers)


def test_native_kernels_can_be_switched_off(tmp_path):
    out, _ = _run(CALLS_CHECK, tmp_path, LT_JAX_NATIVE="0")
    assert out["why"] == "disabled by LT_JAX_NATIVE=0" and out["calls_cpu"] == 0


AUTO_CHECK = f"""
import json, sys
sys.path.insert(0, {ROOT!r})
from lt_jax.models import kernels, native
print(json.dumps(dict(
    ok=native.available(), why=native.unavailable_reason(),
    conv=native.convolutions_enabled(), conv_why=native.convolutions_off_reason(),
    log=kernels.describe("cpu"),
)))
"""


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU flags from Linux")
def test_by_default_the_convolutions_are_native_only_where_they_beat_xla(tmp_path):
    """Unset LT_JAX_NATIVE: the library is built everywhere; on an x86 CPU without AVX-512
    only the BatchNorm sums use it and the convolutions stay XLA's (with the reason), in a
    ResNet step too; LT_JAX_NATIVE=1 forces the convolutions on anyway."""
    env = {k: v for k, v in os.environ.items() if k != "LT_JAX_NATIVE"}
    out, _ = _run(AUTO_CHECK, tmp_path, env)
    assert out["ok"] and out["why"] is None, out
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    if "avx512f" in flags:
        assert out["conv"] and out["conv_why"] is None, out
        assert out["log"] == "native 3x3 convolutions and BatchNorm sums", out
    else:
        assert not out["conv"] and "no AVX-512" in out["conv_why"], out
        assert out["log"].startswith("native BatchNorm sums, XLA's convolutions: this x86")
        forced, _ = _run(AUTO_CHECK, tmp_path, LT_JAX_NATIVE="1")
        assert forced["conv"] and forced["conv_why"] is None, forced
        step, _ = _run(CALLS_CHECK, tmp_path, env)
        assert step["enabled"], step
        # 13 BatchNorms, each a forward and a backward sum; no convolution.
        assert step["calls_cpu"] == 2 * 13, step


CACHE_LISTING = """
import json, os
from lt_jax.models import native
ok = native.available()
print(json.dumps(dict(ok=ok, files=sorted(os.listdir(os.environ["LT_JAX_CACHE"])))))
"""


def test_the_library_is_built_once_per_host_and_reused_and_rebuilt_when_corrupt(tmp_path):
    """A cached library is loaded, not rebuilt, by the next process; a corrupt one is rebuilt
    once. The cache starts with this process's build (the one the other tests load), so
    the test compiles the library once, for the rebuild."""
    cache = tmp_path / "cache"
    cache.mkdir()
    ours = native._build()
    library = cache / os.path.basename(ours)
    shutil.copy2(ours, library)
    built = library.stat().st_mtime_ns
    first, _ = _run(CACHE_LISTING, tmp_path, LT_JAX_CACHE=str(cache))
    assert first == {"ok": True, "files": [library.name]}  # found under the same key
    assert library.stat().st_mtime_ns == built
    # A cached file that does not load (truncated by a full disk, say) is rebuilt once.
    library.write_bytes(b"not a shared library")
    again, err = _run(CACHE_LISTING, tmp_path, LT_JAX_CACHE=str(cache))
    assert again == first and "rebuilding the native library" in err
    assert library.read_bytes() != b"not a shared library" and library.stat().st_size > 10_000


FAULTS = """
import json, resource, statistics
from lt_jax import cli
kept = cli.keep_host_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.sort(x * 2.0)[::-1] + 1.0).sum())  # 16 MB buffers inside
x = jnp.arange(1 << 22, dtype=jnp.float32)
for _ in range(3):
    f(x).block_until_ready()
faults = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# Median: the heap may still grow once in a while (a one-off burst of faults).
print(json.dumps(dict(kept=kept, faults=statistics.median(faults), again=cli.keep_host_memory())))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc settings")
def test_keep_host_memory_stops_per_call_page_faults(tmp_path):
    # One small program run many times: XLA's default optimisation (its sort at level 0
    # takes twice as long).
    kept, _ = _run(FAULTS, tmp_path, fast_compile=False)
    default, _ = _run(FAULTS, tmp_path, fast_compile=False, LT_JAX_KEEP_HOST_MEMORY="0")
    assert kept["kept"] and not default["kept"]
    assert not kept["again"]  # too late once JAX's backend runs
    # Each call touches ~24,000 fresh pages by default; kept memory is mostly reused
    # (a ResNet-32 step: 78,500 -> 0 faults on the development machine).
    assert default["faults"] > 10_000, default
    # Some processes still re-fault one 32 MB block per call (8,192 pages; not understood).
    assert kept["faults"] < 0.5 * default["faults"], (kept, default)
