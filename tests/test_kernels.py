"""Backend-specific kernels (lt_jax/models/kernels.py): which one each backend gets, and that
the CPU versions compute the same numbers as the plain XLA ops."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lt_jax.models import ResNetCifar, kernels, resnet50


@pytest.mark.parametrize(
    "backend, impl", [("cpu", "cpu"), ("gpu", "xla"), ("cuda", "xla"), ("tpu", "xla")]
)
def test_implementation_per_backend(backend, impl):
    assert kernels.implementation(backend) == impl


def test_compiler_options_only_on_cpu(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert kernels.compiler_options("gpu") is None
    assert kernels.compiler_options("tpu") is None
    assert kernels.compiler_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    # A user's own choice in XLA_FLAGS wins.
    monkeypatch.setenv(
        "XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"
    )
    assert kernels.compiler_options("cpu") is None


def test_unknown_implementation_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown kernel implementation 'fast'"):
        ResNetCifar(num_classes=3, depth=8, impl="fast", rngs=nnx.Rngs(0))


def test_a_model_without_native_kernels_never_starts_their_build(monkeypatch):
    """The small CNN (the default job's model) always runs XLA's ops: the run log's kernel
    line must not build the native library (a compiler run on a fresh machine) for it."""
    from lt_jax.models import SmallCNN, native

    def build():
        raise AssertionError("the native library was asked for")

    monkeypatch.setattr(native, "available", build)
    assert kernels.describe("cpu", "small_cnn") == "XLA's (small_cnn has no native ones)"
    model = SmallCNN(num_classes=3, impl="cpu", rngs=nnx.Rngs(0))
    model.train()
    logits, _ = model(jnp.zeros((2, 28, 28, 1)))
    assert logits.shape == (2, 3)


def test_default_model_uses_this_backends_kernels():
    model = ResNetCifar(num_classes=3, depth=8, rngs=nnx.Rngs(0))
    assert model.impl == kernels.implementation(jax.default_backend()) == "cpu"
    assert {b.impl for b in model.blocks} == {"cpu"}


def _primitives(jaxpr, out=None):
    out = set() if out is None else out
    for eqn in jaxpr.eqns:
        out.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            _primitives(sub, out)
    return out


def _train_grad_jaxpr(model, shape):
    graphdef, params, rest = nnx.split(model, nnx.Param, nnx.BatchStat)

    def loss(params, rest, x):
        logits, _ = nnx.merge(graphdef, params, rest, copy=True)(x, train=True)
        return jnp.sum(logits**2)

    return jax.make_jaxpr(jax.grad(loss))(params, rest, jnp.ones(shape)).jaxpr


def test_accelerators_get_the_plain_xla_program(monkeypatch):
    """What a GPU/TPU run traces: plain convolutions and jax.nn.relu, no CPU workaround,
    even where the native CPU kernels would be allowed (forced on here). A model depends on
    the backend only through its ``impl``, the same for both: one trace covers them."""
    monkeypatch.setattr(kernels, "native_enabled", lambda: True)
    assert kernels.implementation("gpu") == kernels.implementation("tpu") == "xla"
    assert kernels.compiler_options("gpu") is None and kernels.compiler_options("tpu") is None
    for model, shape in [
        (ResNetCifar(num_classes=3, depth=8, impl="xla", rngs=nnx.Rngs(0)), (2, 8, 8, 3)),
        (resnet50(num_classes=3, impl="xla", rngs=nnx.Rngs(0)), (1, 32, 32, 3)),
    ]:
        prims = _primitives(_train_grad_jaxpr(model, shape))
        assert "conv_general_dilated" in prims
        assert "reduce_max" not in prims  # the CPU ReLU's marker
        assert "ffi_call" not in prims  # no native CPU kernel


def test_cpu_program_uses_the_materialized_relu():
    model = ResNetCifar(num_classes=3, depth=8, impl="cpu", rngs=nnx.Rngs(0))
    prims = _primitives(_train_grad_jaxpr(model, (2, 8, 8, 3)))
    assert "reduce_max" in prims and "conv_general_dilated" in prims


def test_materialized_relu_matches_numpy_values_and_derivative():
    z = np.array([-3.0, -1e-30, -0.0, 0.0, 1e-30, 2.5, np.inf, -np.inf], np.float32)
    np.testing.assert_array_equal(np.asarray(kernels.materialized_relu(z)), np.maximum(z, 0))
    grad = jax.vmap(jax.grad(kernels.materialized_relu))(jnp.asarray(z))
    np.testing.assert_array_equal(np.asarray(grad), (z > 0).astype(np.float32))
    # second-order / forward mode also follow relu's rule
    _, tangent = jax.jvp(kernels.materialized_relu, (jnp.asarray(z),), (jnp.full(z.shape, 2.0),))
    np.testing.assert_array_equal(np.asarray(tangent), 2.0 * (z > 0))
    assert np.isnan(np.asarray(kernels.materialized_relu(jnp.array([np.nan]))))[0]


def test_relu_uses_the_materialized_form_only_when_training_on_cpu():
    x = jnp.ones((2, 3))
    assert "reduce_max" in str(jax.make_jaxpr(lambda v: kernels.relu(v, "cpu", True))(x))
    assert "reduce_max" not in str(jax.make_jaxpr(lambda v: kernels.relu(v, "cpu", False))(x))
    assert "reduce_max" not in str(jax.make_jaxpr(lambda v: kernels.relu(v, "xla", True))(x))


def resnet14_train_step(impl, options, *, trace_only=False):
    """Loss, BatchNorm statistics and gradients of one ResNet-14 train step (batch 8, 16x16,
    seed 3) with the kernels ``impl``, compiled with ``options``; also the traced program's
    number of lt_jax custom calls (only that with ``trace_only``). Also run by
    tests/test_native.py in a one-device process."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 16, 16, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 5, 8))
    model = ResNetCifar(num_classes=5, depth=14, impl=impl, rngs=nnx.Rngs(3))
    graphdef, params, rest = nnx.split(model, nnx.Param, nnx.BatchStat)

    def loss(params, rest):
        m = nnx.merge(graphdef, params, rest, copy=True)
        logits, _ = m(x, train=True)
        lse = jax.nn.logsumexp(logits, axis=-1)
        ce = jnp.mean(lse - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])
        return ce, nnx.state(m, nnx.BatchStat)

    fn = jax.value_and_grad(loss, has_aux=True)
    custom_calls = str(jax.make_jaxpr(fn)(params, rest)).count("lt_jax_")
    if trace_only:
        return custom_calls
    (value, stats), grads = jax.jit(fn, compiler_options=options)(params, rest)
    return value, stats, grads, custom_calls


def test_cpu_train_gradients_equal_the_plain_xla_programs():
    """ResNet with the CPU kernels, compiled with the CPU options, against the plain XLA
    program (jax.nn.relu, jaxlib's default compiler options): same loss and gradients
    within float32 tolerance, BatchNorm statistics included."""
    v_xla, s_xla, g_xla, _ = resnet14_train_step("xla", None)
    v_cpu, s_cpu, g_cpu, _ = resnet14_train_step("cpu", kernels.compiler_options("cpu"))
    np.testing.assert_allclose(v_cpu, v_xla, rtol=1e-5)
    flat_x, flat_c = jax.tree.leaves(g_xla), jax.tree.leaves(g_cpu)
    assert len(flat_x) == len(flat_c) > 20
    for a, b in zip(flat_x, flat_c, strict=True):
        scale = float(np.max(np.abs(a))) + 1e-12
        np.testing.assert_allclose(np.asarray(b) / scale, np.asarray(a) / scale, atol=1e-4)
    for a, b in zip(jax.tree.leaves(s_xla), jax.tree.leaves(s_cpu), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert any(float(np.max(np.abs(g))) > 0 for g in flat_x)


def _numpy_batch_norm(x, scale, bias, eps):
    """Training-mode BatchNorm in float64 NumPy: biased batch variance over all but the
    last axis."""
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)
    return (x - mean) / np.sqrt(var + eps) * scale + bias, mean, var


@pytest.mark.parametrize("shape", [(4, 5, 5, 3), (64, 200)])
def test_batch_norm_train_matches_numpy(shape):
    # Channels far from zero mean: the E[x^2] - E[x]^2 variance is checked where it is weak.
    rng = np.random.default_rng(1)
    x = (rng.normal(size=shape) * 2.0 + 3.0).astype(np.float32)
    scale = rng.uniform(0.5, 2, shape[-1]).astype(np.float32)
    bias = rng.normal(size=shape[-1]).astype(np.float32)
    y, mean, var = jax.jit(kernels.batch_norm_train, static_argnums=3)(x, scale, bias, 1e-5)
    ry, rmean, rvar = _numpy_batch_norm(x, scale, bias, 1e-5)
    np.testing.assert_allclose(mean, rmean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, rvar, rtol=1e-4)
    np.testing.assert_allclose(y, ry, rtol=1e-4, atol=1e-4)


def test_batch_norm_train_is_float32_accurate_at_training_batch_size():
    """A ResNet-32 stage-1 activation at batch 128 (131,072 rows per channel), channels
    offset from zero: output and gradients within float32 accuracy of the float64 formulas,
    as ``nnx.BatchNorm`` is (about 1e-5 here). Adding all rows in one running float32
    sum (one long matrix product) was 60-110 times less accurate."""
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(128, 32, 32, 16)) * 0.5 + 5.0).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, 16).astype(np.float32)
    bias = rng.normal(size=16).astype(np.float32)

    def f(x, scale, bias):
        return kernels.batch_norm_train(x, scale, bias, 1e-5)[0]

    y, vjp = jax.vjp(jax.jit(f), x, scale, bias)
    dx, d_scale, d_bias = vjp(g)

    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    n = x64.size // 16
    rstd = 1.0 / np.sqrt(x64.var((0, 1, 2)) + 1e-5)
    x_hat = (x64 - x64.mean((0, 1, 2))) * rstd
    ref_scale, ref_bias = (g64 * x_hat).sum((0, 1, 2)), g64.sum((0, 1, 2))
    ref_dx = (scale * rstd / n) * (n * g64 - ref_bias - x_hat * ref_scale)
    for got, ref in [(y, x_hat * scale + bias), (dx, ref_dx), (d_scale, ref_scale)]:
        error = np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref))
        assert error < 4e-5, error
    np.testing.assert_allclose(d_bias, ref_bias, rtol=1e-5, atol=1e-6 * np.abs(ref_bias).max())


def test_batch_norm_train_gradient_matches_finite_differences():
    """Hand-written backward pass against float64 central differences of the NumPy
    formula, for a loss that uses the output and both batch statistics."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 3, 4)).astype(np.float32) + 1.0
    scale = rng.uniform(0.5, 2, 4).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    w_y = rng.normal(size=x.shape)
    w_m, w_v = rng.normal(size=4), rng.normal(size=4)

    def np_loss(x, scale, bias):
        y, m, v = _numpy_batch_norm(x, scale, bias, 1e-3)
        return np.sum(y * w_y) + np.sum(m * w_m) + np.sum(v * w_v)

    def jax_loss(x, scale, bias):
        y, m, v = kernels.batch_norm_train(x, scale, bias, 1e-3)
        return jnp.sum(y * w_y) + jnp.sum(m * w_m) + jnp.sum(v * w_v)

    grads = jax.grad(jax_loss, argnums=(0, 1, 2))(x, scale, bias)
    args = [np.asarray(a, np.float64) for a in (x, scale, bias)]
    for i, g in enumerate(grads):
        fd = np.zeros_like(args[i])
        for idx in np.ndindex(*args[i].shape):
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[i][idx] += 1e-6
            minus[i][idx] -= 1e-6
            fd[idx] = (np_loss(*plus) - np_loss(*minus)) / 2e-6
        np.testing.assert_allclose(g, fd, rtol=2e-3, atol=2e-3)


def test_batch_norm_module_matches_flax_batch_norm():
    """Same outputs and running averages as nnx.BatchNorm in training; evaluation and
    non-float32 inputs go straight to nnx.BatchNorm."""
    x = jnp.asarray(np.random.default_rng(3).normal(size=(8, 4, 4, 6)).astype(np.float32) + 2)
    ours = kernels.BatchNorm(6, momentum=0.9, epsilon=1e-5, impl="cpu", rngs=nnx.Rngs(0))
    ref = nnx.BatchNorm(6, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    for _ in range(2):
        np.testing.assert_allclose(ours(x, False), ref(x, False), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.mean[...], ref.mean[...], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.var[...], ref.var[...], rtol=1e-4)
    np.testing.assert_allclose(ours(x, True), ref(x, True), rtol=1e-5, atol=1e-6)
    graphdef, variables = nnx.split(ours)

    def program(use_running_average, v):
        call = lambda st, v: nnx.merge(graphdef, st, copy=True)(v, use_running_average)  # noqa: E731
        return str(jax.make_jaxpr(call)(variables, v))

    assert "dot_general" in program(False, x)
    assert "dot_general" not in program(True, x)
    assert "dot_general" not in program(False, x.astype(jnp.bfloat16))


def test_config_kernels_switch(tmp_path):
    """config.kernels picks the model's kernels; an unknown name fails before training."""
    from lt_jax import steps, sweep, train

    config = sweep.load_config("configs/default.py", "epochs=1,runlocal")
    assert steps.kernels(config) == "cpu"  # auto, on this CPU backend
    config.kernels = "xla"
    assert steps.kernels(config) == "xla"
    config.kernels = "fastest"
    with pytest.raises(ValueError, match="unknown config.kernels 'fastest'; valid: auto, xla, cpu"):
        train.train_and_evaluate(config, str(tmp_path))
