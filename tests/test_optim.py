"""Gradient adjustment (GA) as an optax transform, the head-gradient split, and schedules."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lt_jax import losses, optim

NUM_CLASSES, DIM = 4, 6


def make_problem(labels, seed=0, zero_logits=False):
    rng = np.random.default_rng(seed)
    params = {
        "backbone": {"w": jnp.asarray(rng.normal(size=(3, DIM)), jnp.float32)},
        "head": {
            "kernel": jnp.asarray(
                np.zeros((DIM, NUM_CLASSES))
                if zero_logits
                else rng.normal(size=(DIM, NUM_CLASSES)),
                jnp.float32,
            ),
            "bias": jnp.zeros((NUM_CLASSES,), jnp.float32),
        },
    }
    x = jnp.asarray(rng.normal(size=(len(labels), 3)), jnp.float32)
    return params, x, jnp.asarray(labels, jnp.int32)


def head_apply(head, feats):
    return feats @ head["kernel"] + head["bias"]


def loss_fn(params, x, y):
    feats = jnp.tanh(x @ params["backbone"]["w"])
    return jnp.mean(losses.softmax_cross_entropy(head_apply(params["head"], feats), y))


def grads_and_parts(params, x, y):
    """Plain gradient plus the GA parts, computed the way a train step does it."""
    grads = jax.grad(loss_fn)(params, x, y)
    feats = jnp.tanh(x @ params["backbone"]["w"])
    logits, head_vjp = jax.vjp(lambda h: head_apply(h, feats), params["head"])
    dlogits = jax.grad(lambda z: jnp.mean(losses.softmax_cross_entropy(z, y)))(logits)
    return grads, optim.split_head_gradient(dlogits, y, head_vjp)


def test_parts_sum_to_plain_gradient():
    params, x, y = make_problem([0, 0, 0, 1, 2, 3, 3, 1])
    grads, parts = grads_and_parts(params, x, y)
    total = jax.tree.map(jnp.add, parts.ga_stimulus, parts.ga_inhibit)
    chex.assert_trees_all_close(total, grads["head"], rtol=1e-5, atol=1e-7)
    # The stimulus of class j only comes from examples labelled j (bias = sum of p - 1 < 0).
    assert (np.asarray(parts.ga_stimulus["bias"]) <= 0).all()
    assert (np.asarray(parts.ga_inhibit["bias"]) >= 0).all()
    chex.assert_shape([parts.ga_stimulus_mag, parts.ga_inhibit_mag], (NUM_CLASSES,))


def test_state_shapes_and_chain_passes_extra_args():
    params, x, y = make_problem([0, 0, 0, 0, 0, 1, 2, 3])
    tx = optax.chain(optim.gradient_adjustment(NUM_CLASSES), optax.sgd(0.5, momentum=0.9))
    state = tx.init(params)
    ga_state = state[0]
    assert isinstance(ga_state, optim.GradientAdjustmentState)
    chex.assert_shape(ga_state.count, ())
    chex.assert_shape([ga_state.stimulus_mag, ga_state.inhibit_mag], (NUM_CLASSES,))
    grads, parts = grads_and_parts(params, x, y)
    updates, state = jax.jit(tx.update)(grads, state, params, **parts._asdict())
    # Everything but the head is exactly the plain SGD update.
    chex.assert_trees_all_close(
        updates["backbone"], jax.tree.map(lambda g: -0.5 * g, grads["backbone"])
    )
    assert int(state[0].count) == 1
    chex.assert_trees_all_close(state[0].stimulus_mag, parts.ga_stimulus_mag)


def test_identity_when_balanced():
    # Balanced batch and uniform predictions: P_j = N_j exactly, so r_j = 1.
    params, x, y = make_problem([0, 1, 2, 3] * 4, zero_logits=True)
    grads, parts = grads_and_parts(params, x, y)
    tx = optim.gradient_adjustment(NUM_CLASSES, r_min=0.0)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params, **parts._asdict())
    chex.assert_trees_all_close(updates, grads, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        optim.inhibit_ratio(state, alpha=1.0, r_min=0.0), np.ones(NUM_CLASSES), rtol=1e-6
    )


def test_shrinks_inhibit_of_tail_classes_only():
    labels = [0] * 10 + [1] * 4 + [2] * 2 + [3]
    params, x, y = make_problem(labels, zero_logits=True)
    grads, parts = grads_and_parts(params, x, y)
    alpha, r_min = 0.5, 0.05
    tx = optim.gradient_adjustment(NUM_CLASSES, alpha=alpha, r_min=r_min)
    updates, _ = tx.update(grads, tx.init(params), params, **parts._asdict())

    # NumPy reference: zero logits => p = 1/C; P_j = n_j (1 - 1/C), N_j = (B - n_j) / C.
    n = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    big_b, c = len(labels), NUM_CLASSES
    r = np.clip(((n * (1 - 1 / c) / big_b) / ((big_b - n) / c / big_b)) ** alpha, r_min, 1)
    assert r[0] == 1.0 and (r[1:] < 1).all()
    for leaf in ("kernel", "bias"):
        expect = np.asarray(parts.ga_stimulus[leaf]) + r * np.asarray(parts.ga_inhibit[leaf])
        np.testing.assert_allclose(updates["head"][leaf], expect, rtol=1e-5, atol=1e-7)
    # Head column untouched, tail columns changed.
    np.testing.assert_allclose(
        updates["head"]["kernel"][:, 0], grads["head"]["kernel"][:, 0], rtol=1e-5, atol=1e-8
    )
    assert not np.allclose(updates["head"]["kernel"][:, 3], grads["head"]["kernel"][:, 3])
    chex.assert_trees_all_close(updates["backbone"], grads["backbone"])


def test_start_step_and_accumulation():
    params, x, y = make_problem([0] * 6 + [3])
    grads, parts = grads_and_parts(params, x, y)
    tx = optim.gradient_adjustment(NUM_CLASSES, start_step=2)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step in range(3):
        updates, state = update(grads, state, params, **parts._asdict())
        changed = not np.allclose(updates["head"]["kernel"], grads["head"]["kernel"])
        assert changed == (step >= 2), step
    np.testing.assert_allclose(state.inhibit_mag, 3 * np.asarray(parts.ga_inhibit_mag), rtol=1e-6)


def test_bad_configuration():
    params, x, y = make_problem([0, 1])
    grads, parts = grads_and_parts(params, x, y)
    tx = optim.gradient_adjustment(NUM_CLASSES, head_path=("classifier",))
    with pytest.raises(ValueError, match="no parameter under head_path"):
        tx.update(grads, tx.init(params), params, **parts._asdict())
    tx = optim.gradient_adjustment(NUM_CLASSES + 1)
    with pytest.raises(ValueError, match="class axis"):
        tx.update(grads, tx.init(params), params, **parts._asdict())
    with pytest.raises(ValueError, match="r_min"):
        optim.gradient_adjustment(NUM_CLASSES, r_min=2.0)


# --- schedules ------------------------------------------------------------------------------------


def test_warmup_step_decay_matches_recipe():
    spe = 7
    lr = jax.jit(optim.warmup_step_decay(0.1, steps_per_epoch=spe))
    expect = {
        0: 0.02,
        1: 0.04,
        4: 0.1,
        5: 0.1,
        159: 0.1,
        160: 0.01,
        179: 0.01,
        180: 0.001,
        199: 0.001,
    }
    for epoch, value in expect.items():
        for step in (epoch * spe, epoch * spe + spe - 1):
            assert float(lr(step)) == pytest.approx(value, rel=1e-6), (epoch, step)
    fbl = optim.warmup_step_decay(0.1, steps_per_epoch=1, factors=(0.01, 0.0001))
    assert float(fbl(170)) == pytest.approx(0.001) and float(fbl(185)) == pytest.approx(1e-5)


def test_cosine_and_switches():
    lr = optim.warmup_cosine(0.002, steps_per_epoch=10, total_epochs=30)
    for step in (0, 37, 150, 299):
        expect = 0.001 * (1 + np.cos(np.pi * step / 300))
        assert float(lr(step)) == pytest.approx(expect, rel=1e-5, abs=1e-9)
    warm = optim.warmup_cosine(1.0, steps_per_epoch=10, total_epochs=10, warmup_epochs=1)
    assert float(warm(5)) == pytest.approx(0.5)
    on = jax.jit(optim.epoch_switch(160, steps_per_epoch=3))
    assert not bool(on(479)) and bool(on(480))
    assert optim.start_step(120, steps_per_epoch=3) == 360
    w = jax.jit(optim.drw_weights([100, 10, 1], start_epoch=2, steps_per_epoch=5))
    np.testing.assert_allclose(w(9), np.ones(3))
    np.testing.assert_allclose(w(10), losses.class_balanced_weights([100, 10, 1]), rtol=1e-6)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        optim.epoch_switch(1, steps_per_epoch=0)


def test_state_buffers_are_distinct_so_the_state_can_be_donated():
    state = optim.gradient_adjustment(NUM_CLASSES).init(None)
    pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(state)]
    assert len(set(pointers)) == len(pointers)
