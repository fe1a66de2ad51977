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


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_accelerators_get_the_plain_xla_program(backend):
    """What a GPU/TPU run traces: plain convolutions and jax.nn.relu, no CPU workaround."""
    for model, shape in [
        (
            ResNetCifar(
                num_classes=3, depth=8, impl=kernels.implementation(backend), rngs=nnx.Rngs(0)
            ),
            (2, 8, 8, 3),
        ),
        (
            resnet50(num_classes=3, impl=kernels.implementation(backend), rngs=nnx.Rngs(0)),
            (1, 32, 32, 3),
        ),
    ]:
        prims = _primitives(_train_grad_jaxpr(model, shape))
        assert "conv_general_dilated" in prims
        assert "reduce_max" not in prims  # the CPU ReLU's marker
    assert kernels.compiler_options(backend) is None


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


def test_cpu_train_gradients_equal_the_plain_xla_programs():
    """ResNet with the CPU kernels, compiled with the CPU options, against the plain XLA
    program (jax.nn.relu, jaxlib's default compiler options): same loss and gradients
    within float32 tolerance, BatchNorm statistics included."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 16, 16, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 5, 8))

    def run(impl, options):
        model = ResNetCifar(num_classes=5, depth=14, impl=impl, rngs=nnx.Rngs(3))
        graphdef, params, rest = nnx.split(model, nnx.Param, nnx.BatchStat)

        def loss(params, rest):
            m = nnx.merge(graphdef, params, rest, copy=True)
            logits, _ = m(x, train=True)
            lse = jax.nn.logsumexp(logits, axis=-1)
            ce = jnp.mean(lse - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])
            return ce, nnx.state(m, nnx.BatchStat)

        fn = jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=options)
        (value, stats), grads = fn(params, rest)
        return value, stats, grads

    v_xla, s_xla, g_xla = run("xla", None)
    v_cpu, s_cpu, g_cpu = run("cpu", kernels.compiler_options("cpu"))
    np.testing.assert_allclose(v_cpu, v_xla, rtol=1e-5)
    flat_x, flat_c = jax.tree.leaves(g_xla), jax.tree.leaves(g_cpu)
    assert len(flat_x) == len(flat_c) > 20
    for a, b in zip(flat_x, flat_c, strict=True):
        scale = float(np.max(np.abs(a))) + 1e-12
        np.testing.assert_allclose(np.asarray(b) / scale, np.asarray(a) / scale, atol=1e-4)
    for a, b in zip(jax.tree.leaves(s_xla), jax.tree.leaves(s_cpu), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert any(float(np.max(np.abs(g))) > 0 for g in flat_x)
