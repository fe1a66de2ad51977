"""lt_jax.losses against independent NumPy references, spec reference values and limits."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lt_jax import losses
from tests import numpy_reference as ref

CIFAR10_IF100 = np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])


def random_problem(num_classes, batch=16, seed=0, cosine=False):
    rng = np.random.default_rng(seed + num_classes)
    counts = np.sort(rng.integers(1, 5000, size=num_classes))[::-1].copy()
    counts[0], counts[-1] = 5000, 1  # ensure the full imbalance range
    if cosine:
        z = rng.uniform(-1, 1, size=(batch, num_classes))
    else:
        z = rng.normal(size=(batch, num_classes)) * 3
    y = rng.integers(0, num_classes, size=batch)
    # Always include head and tail labels.
    y[0], y[1] = 0, num_classes - 1
    return counts, z.astype(np.float32), y.astype(np.int32)


def assert_directional_grad(jax_fn, np_fn, x, seed=0, rtol=2e-3, atol=2e-4):
    """Directional derivative of the JAX loss sum vs a float64 central difference of NumPy."""
    direction = np.random.default_rng(seed).normal(size=x.shape)
    direction /= np.linalg.norm(direction)
    g = jax.grad(lambda v: jnp.sum(jax_fn(v)))(jnp.asarray(x))
    analytic = float(np.sum(np.asarray(g, np.float64) * direction))
    eps = 1e-5
    x64 = x.astype(np.float64)
    numeric = (np.sum(np_fn(x64 + eps * direction)) - np.sum(np_fn(x64 - eps * direction))) / (
        2 * eps
    )
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


# The cases each loss is checked on: (lt_jax call, NumPy reference, cosine inputs?).
def _cases(counts, y, key):
    w = ref.cb_weights(counts, 0.9999)
    return {
        "ce": (lambda z: losses.softmax_cross_entropy(z, y), lambda z: ref.ce(z, y), False),
        "ce_weighted": (
            lambda z: losses.softmax_cross_entropy(z, y, class_weights=w),
            lambda z: ref.ce(z, y, w),
            False,
        ),
        "focal": (
            lambda z: losses.focal_loss(z, y, gamma=2.0),
            lambda z: ref.focal(z, y, 2.0),
            False,
        ),
        "cb_focal_softmax": (
            lambda z: losses.focal_loss(z, y, gamma=1.0, class_weights=w),
            lambda z: ref.focal(z, y, 1.0, w),
            False,
        ),
        "sigmoid_focal": (
            lambda z: losses.sigmoid_focal_loss(z, y, gamma=2.0),
            lambda z: ref.sigmoid_focal(z, y, 2.0),
            False,
        ),
        "cb_focal": (
            lambda z: losses.sigmoid_focal_loss(z, y, gamma=1.0, class_weights=w),
            lambda z: ref.sigmoid_focal(z, y, 1.0, w),
            False,
        ),
        "ldam": (
            lambda z: losses.ldam_loss(z, y, class_counts=counts),
            lambda z: ref.ldam(z, y, counts),
            True,
        ),
        "ldam_drw": (
            lambda z: losses.ldam_loss(z, y, class_counts=counts, class_weights=w),
            lambda z: ref.ldam(z, y, counts, w=w),
            True,
        ),
        "balanced_softmax": (
            lambda z: losses.balanced_softmax_loss(z, y, class_counts=counts),
            lambda z: ref.balanced_softmax(z, y, counts),
            False,
        ),
        "logit_adjusted": (
            lambda z: losses.logit_adjusted_loss(z, y, class_counts=counts, tau=1.5),
            lambda z: ref.logit_adjusted(z, y, counts, 1.5),
            False,
        ),
        "kps": (
            lambda z: losses.kps_loss(z, y, class_counts=counts),
            lambda z: ref.kps(z, y, counts),
            True,
        ),
        "kps_ga": (
            lambda z: losses.kps_loss(z, y, class_counts=counts, ga=True),
            lambda z: ref.kps(z, y, counts, ga=True),
            True,
        ),
        "gcl_no_noise": (
            lambda z: losses.gcl_loss(z, y, class_counts=counts, key=key, noise_mul=0.0, m=0.1),
            lambda z: ref.gcl_given_noise(z, y, counts, 0.0, 30.0, 0.1, 0.0, 0.0),
            True,
        ),
    }


CASE_NAMES = list(_cases(np.array([2, 1]), np.array([0]), jax.random.key(0)))


@pytest.mark.parametrize("num_classes", [2, 10, 100, 1000])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_loss_matches_numpy(name, num_classes):
    counts, z, y = random_problem(num_classes, cosine=True)
    jax_fn, np_fn, _ = _cases(counts, y, jax.random.key(1))[name]
    out = jax_fn(jnp.asarray(z))
    chex.assert_shape(out, (len(y),))
    np.testing.assert_allclose(np.asarray(out), np_fn(z.astype(np.float64)), rtol=2e-5, atol=2e-5)
    assert_directional_grad(jax_fn, np_fn, z, seed=num_classes)


@pytest.mark.parametrize("num_classes", [2, 10, 100, 1000])
def test_fbl_matches_numpy(num_classes):
    counts, z, y = random_problem(num_classes)
    f = np.random.default_rng(3).normal(size=(len(y), 32)).astype(np.float32)
    t = losses.fbl_curriculum(150, 200)

    out = losses.fbl_loss(z, f, y, class_counts=counts, lam=60.0, t=t)
    np.testing.assert_allclose(out, ref.fbl(z, f, y, counts, 60.0, t), rtol=2e-5, atol=2e-5)
    # Gradients w.r.t. both the logits and the (not detached) features.
    assert_directional_grad(
        lambda v: losses.fbl_loss(v, f, y, class_counts=counts, t=t),
        lambda v: ref.fbl(v, f, y, counts, 60.0, t),
        z,
    )
    assert_directional_grad(
        lambda v: losses.fbl_loss(z, v, y, class_counts=counts, t=t),
        lambda v: ref.fbl(z, v, y, counts, 60.0, t),
        f,
    )


@pytest.mark.parametrize("num_classes", [2, 10, 100, 1000])
@pytest.mark.parametrize("focal_gamma", [0.0, 1.0])
def test_gcl_matches_numpy_with_documented_noise(num_classes, focal_gamma):
    counts, cos, y = random_problem(num_classes, cosine=True)
    key = jax.random.key(7)
    # The documented noise: example i uses split(key, B)[i], N(0, sigma^2) clipped, abs.
    keys = jax.random.split(key, len(y))
    noise = np.stack([np.asarray(jax.random.normal(k, (num_classes,))) for k in keys])
    abs_noise = np.abs(np.clip(noise / 3.0, -1, 1))
    kw = dict(s=20.0, m=0.1, noise_mul=0.5, focal_gamma=focal_gamma)
    out = losses.gcl_loss(cos, y, class_counts=counts, key=key, **kw)
    expect = ref.gcl_given_noise(cos, y, counts, abs_noise, 20.0, 0.1, 0.5, focal_gamma)
    np.testing.assert_allclose(out, expect, rtol=5e-5, atol=5e-5)
    if focal_gamma == 0.0:
        assert_directional_grad(
            lambda v: losses.gcl_loss(v, y, class_counts=counts, key=key, **kw),
            lambda v: ref.gcl_given_noise(v, y, counts, abs_noise, 20.0, 0.1, 0.5, 0.0),
            cos,
        )
    else:  # p = exp(-CE) is under stop-gradient: d loss = (1 - p)^gamma d CE.
        grad = jax.grad(
            lambda v: jnp.sum(losses.gcl_loss(v, y, class_counts=counts, key=key, **kw))
        )(cos)
        ce_only = dict(kw, focal_gamma=0.0)
        ce_loss = ref.gcl_given_noise(cos, y, counts, abs_noise, 20.0, 0.1, 0.5, 0.0)
        per_example = jax.grad(
            lambda v: jnp.sum(
                losses.gcl_loss(v, y, class_counts=counts, key=key, **ce_only)
                * (1 - np.exp(-ce_loss)) ** focal_gamma
            )
        )(cos)
        np.testing.assert_allclose(grad, per_example, rtol=1e-4, atol=1e-6)


# --- spec section 6: reference vectors ---------------------------------------------------------


def test_kps_reference_vectors():
    np.testing.assert_allclose(
        losses.kps_class_scale(CIFAR10_IF100),
        [2.1772, 2.0463, 1.9155, 1.7847, 1.6537, 1.5231, 1.3923, 1.2614, 1.1296, 1.0],
        atol=6e-5,
    )
    mirror = [0.0919, 0.1038, 0.1159, 0.1279, 0.1399, 0.1519, 0.1639, 0.1760, 0.1880, 0.2000]
    np.testing.assert_allclose(
        losses.kps_margins(CIFAR10_IF100, margin="mirror"), mirror, atol=6e-5
    )
    np.testing.assert_allclose(losses.kps_margins(CIFAR10_IF100), mirror, atol=1.2e-4 + 6e-5)
    np.testing.assert_allclose(
        losses.kps_ga_scale(CIFAR10_IF100, margin="mirror"),
        [15.0, 16.943, 18.920, 20.885, 22.847, 24.805, 26.771, 28.732, 30.695, 32.658],
        atol=6e-4,
    )
    # The closed forms agree with the NumPy formulas for any class order.
    perm = np.random.default_rng(0).permutation(10)
    np.testing.assert_allclose(
        losses.kps_margins(CIFAR10_IF100[perm]),
        ref.kps_margins_closed(CIFAR10_IF100[perm], 0.2),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        losses.kps_ga_scale(CIFAR10_IF100[perm]),
        ref.kps_ga_scale_closed(CIFAR10_IF100[perm], 15.0, 50.0),
        rtol=1e-6,
    )


def test_cloud_sizes_and_fbl_weights_reference():
    expect = [0, 0.1111, 0.2223, 0.3334, 0.4447, 0.5556, 0.6667, 0.7780, 0.8899, 1]
    np.testing.assert_allclose(losses.gcl_cloud_sizes(CIFAR10_IF100), expect, atol=6e-5)
    np.testing.assert_allclose(losses.fbl_stimulus_weights(CIFAR10_IF100), expect, atol=6e-5)


def test_fbl_curriculum_reference():
    for epoch, value in [(0, 0.0), (100, 0.2770), (190, 1.0), (199, 1.0970)]:
        assert losses.fbl_curriculum(epoch, 200) == pytest.approx(value, abs=6e-5)
    assert losses.fbl_curriculum(199, 200, clamp=True) == 1.0
    traced = jax.jit(lambda e: losses.fbl_curriculum(e, 200, clamp=True))(jnp.float32(199))
    assert float(traced) == 1.0
    with pytest.raises(ValueError, match="total_epochs > offset"):
        losses.fbl_curriculum(0, 10)


def test_class_balanced_weights():
    w = losses.class_balanced_weights(CIFAR10_IF100)
    np.testing.assert_allclose(w, ref.cb_weights(CIFAR10_IF100, 0.9999), rtol=1e-6)
    assert w.sum() == pytest.approx(10, rel=1e-6)
    np.testing.assert_allclose(losses.class_balanced_weights([5, 1, 7], beta=0.0), [1, 1, 1])
    with pytest.raises(ValueError, match="beta"):
        losses.class_balanced_weights([5, 1], beta=1.0)


def test_ldam_margins_hand_computed():
    np.testing.assert_allclose(losses.ldam_margins([16, 1], max_m=0.5), [0.25, 0.5])


# --- GCL noise ----------------------------------------------------------------------------------


def _recover_abs_noise(key, batch):
    # Two classes: head (a=0) and tail (a=1); s=1, kappa=1, cosines 0, label = head.
    # loss = log(1 + exp(-|e_tail|))  =>  |e_tail| = -log(exp(loss) - 1).
    loss = losses.gcl_loss(
        jnp.zeros((batch, 2)),
        jnp.zeros((batch,), jnp.int32),
        class_counts=[100, 1],
        key=key,
        s=1.0,
        noise_mul=1.0,
    )
    return -np.log(np.expm1(np.asarray(loss, np.float64)))


def test_gcl_noise_statistics():
    abs_e = _recover_abs_noise(jax.random.key(0), 400_000)
    assert abs_e.min() >= -1e-4 and abs_e.max() <= 1 + 1e-3
    assert abs_e.mean() == pytest.approx(0.2655, rel=0.01)
    clip_fraction = np.mean(abs_e > 0.999)
    assert 0.0020 < clip_fraction < 0.0035  # spec: 0.27%


def test_gcl_noise_keyed():
    cos = np.random.default_rng(0).uniform(-1, 1, size=(8, 10)).astype(np.float32)
    y = np.arange(8, dtype=np.int32)
    call = functools.partial(losses.gcl_loss, cos, y, class_counts=CIFAR10_IF100)
    np.testing.assert_array_equal(call(key=jax.random.key(1)), call(key=jax.random.key(1)))
    assert not np.allclose(call(key=jax.random.key(1)), call(key=jax.random.key(2)))
    # Raw uint32 keys work too.
    assert call(key=jax.random.PRNGKey(3)).shape == (8,)


def test_gcl_head_class_untouched_by_noise():
    # Classes 0 and 1 are both head (a = 0); the tail logit is far below, so only
    # noise on a head class could move the loss away from log 2.
    cos = jnp.tile(jnp.array([[0.0, 0.0, -1.0]]), (64, 1))
    y = jnp.zeros((64,), jnp.int32)
    for seed in range(3):
        loss = losses.gcl_loss(cos, y, class_counts=[100, 100, 1], key=jax.random.key(seed))
        np.testing.assert_allclose(loss, np.log(2 + np.exp(-30.0 * 1.0)), rtol=1e-5)


# --- limits ---------------------------------------------------------------------------------------

BALANCED = np.full(10, 500)


def test_balanced_limits():
    _, cos, y = random_problem(10, cosine=True)
    margin_ce = lambda s, m: ref.ce(s * (cos - m * ref.onehot(y, 10)), y)  # noqa: E731
    np.testing.assert_allclose(losses.kps_loss(cos, y, class_counts=BALANCED), margin_ce(15, 0.2))
    np.testing.assert_allclose(
        losses.kps_loss(cos, y, class_counts=BALANCED, ga=True), margin_ce(15, 0.2), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.ldam_loss(cos, y, class_counts=BALANCED), margin_ce(30, 0.5), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.gcl_loss(cos, y, class_counts=BALANCED, key=jax.random.key(0)),
        margin_ce(30, 0.0),
        rtol=1e-6,
    )
    f = np.ones((len(y), 4), np.float32)
    np.testing.assert_allclose(
        losses.fbl_loss(cos, f, y, class_counts=BALANCED), ref.ce(cos, y), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.balanced_softmax_loss(cos, y, class_counts=BALANCED), ref.ce(cos, y), rtol=1e-6
    )
    for vector in (losses.gcl_cloud_sizes, losses.fbl_stimulus_weights):
        np.testing.assert_array_equal(vector(BALANCED), np.zeros(10))
    np.testing.assert_array_equal(losses.kps_class_scale(BALANCED), np.ones(10))
    np.testing.assert_allclose(losses.class_balanced_weights(BALANCED), np.ones(10), rtol=1e-6)


def _target_grad(loss_fn, cos, y):
    g = jax.grad(lambda v: jnp.sum(loss_fn(v)))(cos)
    return np.abs(np.asarray(g)[np.arange(len(y)), y])


def test_tail_examples_get_larger_gradients():
    # Identical cosines for a head-class and a tail-class example.
    counts = CIFAR10_IF100
    cos = jnp.full((2, 10), 0.1)
    y = jnp.array([0, 9])
    for fn in (
        lambda v: losses.ldam_loss(v, y, class_counts=counts),
        lambda v: losses.kps_loss(v, y, class_counts=counts, ga=True),
        lambda v: losses.balanced_softmax_loss(v, y, class_counts=counts),
        lambda v: losses.logit_adjusted_loss(v, y, class_counts=counts),
    ):
        head, tail = _target_grad(fn, cos, y)
        assert tail > head
    # FBL: gradient descent grows the feature norm of the tail example (its loss falls as
    # |f| grows) and not of the head example (whose competitors' logits rise with |f|).
    feats = jnp.ones((2, 4))
    g = jax.grad(lambda f: jnp.sum(losses.fbl_loss(cos, f, y, class_counts=counts)))(feats)
    norm_grad = np.asarray(jnp.sum(g * feats, axis=1))  # d loss / d scale of |f|
    assert norm_grad[1] < 0 < norm_grad[0]


# --- jit, retracing, dtypes -----------------------------------------------------------------------


def _all_losses(counts, key):
    return {
        "ce": lambda z, f, y: losses.softmax_cross_entropy(z, y),
        "focal": lambda z, f, y: losses.focal_loss(z, y),
        "ldam": lambda z, f, y: losses.ldam_loss(z, y, class_counts=counts),
        "bs": lambda z, f, y: losses.balanced_softmax_loss(z, y, class_counts=counts),
        "la": lambda z, f, y: losses.logit_adjusted_loss(z, y, class_counts=counts),
        "kps": lambda z, f, y: losses.kps_loss(z, y, class_counts=counts, ga=True),
        "fbl": lambda z, f, y: losses.fbl_loss(z, f, y, class_counts=counts),
        "gcl": lambda z, f, y: losses.gcl_loss(z, y, class_counts=counts, key=key, focal_gamma=1.0),
    }


@pytest.mark.parametrize("name", list(_all_losses(CIFAR10_IF100, None)))
def test_jit_equals_eager_and_no_retrace(name):
    key = jax.random.key(0)
    fn = _all_losses(CIFAR10_IF100, key)[name]
    counted = chex.assert_max_traces(fn, n=1)
    jitted = jax.jit(counted)
    for seed in range(3):
        _, z, y = random_problem(10, seed=seed, cosine=True)
        f = np.random.default_rng(seed).normal(size=(len(y), 8)).astype(np.float32)
        np.testing.assert_allclose(jitted(z, f, y), fn(z, f, y), rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("name", list(_all_losses(CIFAR10_IF100, None)))
def test_bf16_inputs_give_finite_losses(name):
    fn = _all_losses(CIFAR10_IF100, jax.random.key(0))[name]
    _, z, y = random_problem(10, cosine=True)
    f = jnp.ones((len(y), 8), jnp.bfloat16)
    out = jax.jit(fn)(jnp.asarray(z, jnp.bfloat16) * 20, f, y)
    chex.assert_tree_all_finite(out)
    chex.assert_shape(out, (len(y),))


def test_ga_flag_can_be_traced():
    _, cos, y = random_problem(10, cosine=True)
    step = jax.jit(lambda c, on: losses.kps_loss(c, y, class_counts=CIFAR10_IF100, ga=on))
    np.testing.assert_allclose(step(cos, True), ref.kps(cos, y, CIFAR10_IF100, ga=True), rtol=1e-5)
    np.testing.assert_allclose(step(cos, False), ref.kps(cos, y, CIFAR10_IF100), rtol=1e-5)


def test_saturated_focal_and_zero_features_are_finite():
    z = jnp.array([[100.0, -100.0]])
    y = jnp.array([0])
    g = jax.grad(lambda v: jnp.sum(losses.focal_loss(v, y, gamma=0.5)))(z)
    chex.assert_tree_all_finite(g)
    g = jax.grad(lambda f: jnp.sum(losses.fbl_loss(jnp.zeros((1, 2)), f, y, class_counts=[10, 1])))(
        jnp.zeros((1, 3))
    )
    chex.assert_tree_all_finite(g)


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "counts, match",
    [
        ([10, 0, 5], "class 1 has zero training examples"),
        ([10, -2], r"class_counts\[1\] = -2 is negative"),
        ([10, 2.5], r"class_counts\[1\] = 2.5 is not an integer"),
        ([10, np.nan], r"class_counts\[1\]"),
        ([[1, 2]], "1-D"),
        ([], "non-empty"),
    ],
)
def test_bad_class_counts(counts, match):
    for helper in (
        losses.kps_class_scale,
        losses.kps_margins,
        losses.kps_ga_scale,
        losses.ldam_margins,
        losses.gcl_cloud_sizes,
        losses.fbl_stimulus_weights,
        losses.class_balanced_weights,
    ):
        with pytest.raises(ValueError, match=match):
            helper(counts)


def test_zero_count_raises_from_loss():
    with pytest.raises(ValueError, match="class 2 has zero"):
        losses.gcl_loss(
            jnp.zeros((1, 3)), jnp.array([0]), class_counts=[5, 1, 0], key=jax.random.key(0)
        )


def test_bad_shapes_and_labels():
    z = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="3 columns"):
        losses.ldam_loss(z, jnp.zeros(4, jnp.int32), class_counts=[5, 1])
    with pytest.raises(ValueError, match="labels must have shape"):
        losses.softmax_cross_entropy(z, jnp.zeros((4, 3), jnp.int32))
    with pytest.raises(ValueError, match="outside the class range"):
        losses.kps_loss(z, jnp.array([0, 1, 3, 0]), class_counts=[5, 2, 1])
    with pytest.raises(ValueError, match="outside the class range"):
        losses.softmax_cross_entropy(z, jnp.array([0, -1, 0, 0]))
    with pytest.raises(ValueError, match="integers"):
        losses.softmax_cross_entropy(z, jnp.zeros(4))
    with pytest.raises(ValueError, match="logits must be"):
        losses.focal_loss(jnp.zeros(3), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="features must be"):
        losses.fbl_loss(z, jnp.zeros((3, 8)), jnp.zeros(4, jnp.int32), class_counts=[5, 2, 1])
    with pytest.raises(ValueError, match="class_weights"):
        losses.softmax_cross_entropy(z, jnp.zeros(4, jnp.int32), class_weights=jnp.ones(2))
    with pytest.raises(ValueError, match="sorted head first"):
        losses.kps_margins([1, 5, 2], margin="mirror")
    with pytest.raises(ValueError, match="valid: closed_form, mirror"):
        losses.kps_margins([5, 1], margin="reverse")


def test_get_loss():
    assert losses.get_loss("fbl") is losses.fbl_loss
    with pytest.raises(ValueError, match="valid names: .*balanced_softmax.*gcl.*kps"):
        losses.get_loss("kpss")


def test_ldam_drw_batch_loss_is_pytorchs_weighted_mean():
    """In the DRW phase the batch loss is sum(w_y l) / sum(w_y), as the release's
    F.cross_entropy(s * z, y, weight=w) reduces; before it, the plain mean."""
    from lt_jax import methods

    counts = CIFAR10_IF100
    cfg = type("Cfg", (), dict(max_m=0.5, s=30.0, beta=0.9999, drw_epoch=2))
    method = methods.get_method("ldam_drw", cfg, counts, steps_per_epoch=10)
    rng = np.random.default_rng(3)
    cos = rng.uniform(-1, 1, (32, 10)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int32)
    w = ref.cb_weights(counts, 0.9999)
    unweighted = ref.ldam(cos, y, counts)  # [B] per-example, float64
    for step, want in [
        (19, unweighted.mean()),  # epoch 1: before DRW
        (20, np.sum(w[y] * unweighted) / np.sum(w[y])),  # epoch 2: DRW on
    ]:
        got = method.reduce(method.loss(cos, None, y, None, step), y, step)
        np.testing.assert_allclose(float(got), want, rtol=2e-5)
    # The weighted mean is not the plain mean of the weighted losses (the old reduction).
    assert abs(np.sum(w[y] * unweighted) / np.sum(w[y]) - np.mean(w[y] * unweighted)) > 0.1


def test_sigmoid_focal_hand_computed_and_against_torch():
    """Two hand-computed values, then torchvision's formula written in PyTorch
    (BCE-with-logits times (1 - p_t)^gamma, summed over classes) on random logits."""
    # z = 0, 2 classes, gamma 1: each class 0.5 * log 2; class weight 3 scales both.
    got = losses.sigmoid_focal_loss(
        jnp.zeros((1, 2)), jnp.array([1]), class_weights=np.array([1.0, 3.0])
    )
    np.testing.assert_allclose(np.asarray(got), [3 * np.log(2)], rtol=1e-6)
    # z = (2, -1), label 0, gamma 2: sigma(-2)^2 log(1 + e^-2) + sigma(-1)^2 log(1 + e^-1).
    s = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    want = s(-2) ** 2 * np.log1p(np.exp(-2)) + s(-1) ** 2 * np.log1p(np.exp(-1))
    got = losses.sigmoid_focal_loss(jnp.array([[2.0, -1.0]]), jnp.array([0]), gamma=2.0)
    np.testing.assert_allclose(np.asarray(got), [want], rtol=1e-6)
    torch = pytest.importorskip("torch")
    counts, z, y = random_problem(10)
    w = ref.cb_weights(counts, 0.9999)
    zt = torch.from_numpy(z.astype(np.float64))
    t = torch.nn.functional.one_hot(torch.from_numpy(y.astype(np.int64)), 10).double()
    p = torch.sigmoid(zt)
    p_t = p * t + (1 - p) * (1 - t)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(zt, t, reduction="none")
    want = ((1 - p_t) ** 1.0 * bce).sum(1).numpy() * w[y]
    got = losses.sigmoid_focal_loss(z, y, gamma=1.0, class_weights=w)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)


def test_sigmoid_focal_is_finite_at_saturated_logits():
    z = jnp.array([[80.0, -80.0, 0.0], [-80.0, 80.0, 30.0]])
    y = jnp.array([1, 1])
    for gamma in (0.0, 0.5, 2.0):
        fn = lambda v, g=gamma: jnp.sum(losses.sigmoid_focal_loss(v, y, gamma=g))  # noqa: E731
        assert np.isfinite(float(fn(z))) and np.all(np.isfinite(np.asarray(jax.grad(fn)(z))))


def test_weighted_mean_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    z = rng.normal(size=(16, 10)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    w = ref.cb_weights(CIFAR10_IF100, 0.9999).astype(np.float32)
    want = torch.nn.functional.cross_entropy(
        torch.from_numpy(z), torch.from_numpy(y), weight=torch.from_numpy(w)
    )
    per_example = losses.softmax_cross_entropy(z, y, class_weights=w)
    np.testing.assert_allclose(float(losses.weighted_mean(per_example, y, w)), want.item(), 1e-5)
