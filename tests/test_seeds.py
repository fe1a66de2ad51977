"""Several seeds in one program (``config.num_seeds``): seed k of a K-seed run is the separate
run with seed k; per-seed results, their mean and sample std; resume; divergence per seed."""

import json
import os

import jax
import numpy as np
import pytest

from lt_jax import (
    checkpoint,
    config_lib,
    loop,
    methods,
    optim,
    report,
    steps,
    sweep,
    train,
)
from lt_jax.data import datasets, pipeline, samplers
from lt_jax.workdir import check_config
from tests.test_train import sigterm_at_step, tiny


def _params(workdir, stage="stage1"):
    """The last checkpoint's parameters as a flat {path: array} (no template needed)."""
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", stage))
    restored = ckpt._manager.restore(ckpt.latest_step())
    ckpt.close()
    key = "params" if stage == "stage1" else "trainable"
    flat = jax.tree_util.tree_flatten_with_path(restored[key])[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


# Session scope, and its users share conftest.py's sweep_root fixture and its xdist_group, so
# one worker builds both once.
@pytest.fixture(scope="session")
def two_seeds(tmp_path_factory, sweep_root):
    """GCL (stage 1 + the CBEN stage 2) with seeds 0 and 1 in one run (``k2``), and seed 1
    alone (``s1``: the sweep's run of the same config with seed 1). Seed 1 is the second
    slice of the stacked state: a run that trained seed 0 twice, or mixed up the seeds'
    draws, fails; seed 0 is the first slice, checked by the three-step test."""
    k2 = tmp_path_factory.mktemp("seeds") / "k2"
    together = train.train_and_evaluate(tiny("gcl", num_seeds=2), str(k2))
    s1 = sweep_root / "gcl_s1"
    with open(s1 / "results.json") as f:
        alone = json.load(f)
    check_config(str(s1), tiny("gcl", seed=1))  # the run tiny("gcl", seed=1) would train
    return k2, s1, together, alone


@pytest.mark.parametrize("sequential", [False, True], ids=["vmapped", "unrolled"])
def test_a_few_seeded_steps_equal_each_seed_alone(sequential):
    """Three steps of GA + mixup (every part of the step) for seeds 0 and 1 in one program
    (vmapped, as on accelerators, and unrolled, as on CPU), against each seed's own program:
    equal within float32 rounding."""
    config = tiny("kps_ga_optax", num_seeds=2, mixup_alpha=1.0)
    config.loss.ga_epoch = 0
    config = config_lib.resolve(config)
    data, _ = datasets.load_dataset(config.dataset)
    method = methods.get_method(config.method, config.loss, data.class_counts, 15)
    tx, lr = optim.create_optimizer(config, 15, ga_start_step=0, num_classes=10)
    prep = steps.preprocess(config, config.dataset.augment, (0.13,), (0.31,))
    shape = data.train_images.shape[1:]
    init = steps.init_seeds(config, 10, method.head, tx, input_shape=shape)
    step_k = jax.jit(steps.over_seeds(
        steps.make_train_step(init.graphdef, init.head_graphdef, method, init.tx, lr, prep),
        (0, "batch", 0),
        sequential=sequential,
    ))  # fmt: skip
    alone = [steps.init_state(config, 10, method.head, tx, input_shape=shape, seed=s)
             for s in (0, 1)]  # fmt: skip
    step_1 = jax.jit(steps.make_train_step(
        alone[0].graphdef, alone[0].head_graphdef, method, alone[0].tx, lr, prep
    ))  # fmt: skip
    images, labels = jax.numpy.asarray(data.train_images), jax.numpy.asarray(data.train_labels)
    orders = [samplers.epoch_indices("instance", data.train_labels, seed=s, epoch=0)
              for s in (0, 1)]  # fmt: skip
    keys = [loop.stage_key(s, "stage1") for s in (0, 1)]
    state_k, states = init.state, [a.state for a in alone]
    for b in range(3):
        idx = np.stack([o[64 * b : 64 * (b + 1)] for o in orders])
        batch = pipeline.GatherBatch(images, labels, jax.numpy.asarray(idx))
        state_k, _ = step_k(state_k, batch, jax.numpy.stack(keys))
        for k in (0, 1):
            batch = pipeline.GatherBatch(images, labels, jax.numpy.asarray(idx[k]))
            states[k], _ = step_1(states[k], batch, keys[k])
    for k in (0, 1):
        for part in ("params", "batch_stats"):
            jax.tree.map(
                lambda a, b, k=k: np.testing.assert_allclose(a[k], b, rtol=1e-5, atol=1e-6),
                state_k[part],
                states[k][part],
            )
    assert not np.allclose(state_k["params"]["head"]["kernel"][...][0],
                           state_k["params"]["head"]["kernel"][...][1])  # fmt: skip


@pytest.mark.xdist_group("sweep_root")  # one worker builds the shared fixtures
def test_seed_k_of_a_k_seed_run_is_the_run_with_seed_k(two_seeds):
    """Whole runs (2 + 1 epochs, 45 steps, 8 devices): the float32 rounding of the K-seed
    program grows to at most 1e-2 in a parameter (measured 2.4e-3, a BatchNorm scale, over
    the 48 steps of runlocal with its partial batches); the predictions stay the same up to
    one test image."""
    k2, s1, together, alone = two_seeds
    for stage in ("stage1", "stage2"):
        stacked = _params(str(k2), stage)
        single = _params(str(s1), stage)
        assert stacked.keys() == single.keys()
        for name, value in single.items():
            np.testing.assert_allclose(stacked[name][1], value, atol=1e-2)
        got, want = together[stage]["per_seed"][1], alone[stage]
        assert got["seed"] == 1
        # The same predictions up to float32 rounding of a vmapped program: at most one
        # of the 1,000 test images may change its predicted class.
        for part in ("final", "best_epoch"):
            assert abs(got[part]["top1"] - want[part]["top1"]) <= 0.001, (stage, part)


@pytest.mark.xdist_group("sweep_root")  # one worker builds the shared fixtures
def test_results_hold_per_seed_entries_and_their_mean_and_sample_std(two_seeds):
    k2, s1, together, _ = two_seeds
    saved = json.load(open(k2 / "results.json"))
    assert [r["seed"] for r in saved["per_seed"]] == [0, 1]
    assert saved["per_seed"] == saved["stage2"]["per_seed"]  # stage 2 is the headline
    for part in ("final", "best_epoch"):
        for key in ("top1", "many", "medium", "few"):
            values = [r[part][key] for r in saved["per_seed"]]
            agg = saved["aggregate"][part][key]
            assert agg["mean"] == pytest.approx(sum(values) / 2)
            assert agg["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    single = json.load(open(s1 / "results.json"))
    assert len(single["per_seed"]) == 1 and single["per_seed"][0]["seed"] == 1
    assert single["aggregate"]["final"]["top1"] == {"mean": single["final"]["top1"], "std": None}


@pytest.mark.xdist_group("sweep_root")  # one worker builds the shared fixtures
def test_report_averages_the_seeds_of_one_workdir(two_seeds, tmp_path):
    k2, _, together, _ = two_seeds
    runs = report.seed_runs(report.load_run(str(k2)))
    assert [r["results"]["final"]["top1"] for r in runs] == [
        r["final"]["top1"] for r in together["per_seed"]
    ]
    text = open(report.write_report([str(k2)], str(tmp_path))).read()
    values = [100 * r["final"]["top1"] for r in together["per_seed"]]
    assert f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}" in text


@pytest.mark.xdist_group("sweep_root")  # one worker builds the shared fixtures
def test_a_killed_k_seed_run_resumes_bit_identically(two_seeds, tmp_path, monkeypatch):
    """The fixture's 2-seed GCL run, stopped by SIGTERM mid-stage 1 and resumed: both
    stages' parameters end bit-identical to the uninterrupted run's."""
    k2, _, together, _ = two_seeds
    config = tiny("gcl", num_seeds=2)
    monkeypatch.setattr(train, "install_sigterm", sigterm_at_step(20))
    with pytest.raises(train.TrainingError, match="SIGTERM: saved stage1 step 20"):
        train.train_and_evaluate(config, str(tmp_path))
    monkeypatch.undo()
    resumed = train.train_and_evaluate(config, str(tmp_path))
    for stage in ("stage1", "stage2"):
        a, b = _params(str(k2), stage), _params(str(tmp_path), stage)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{stage} {name}")
    assert resumed["per_seed"] == together["per_seed"]


class _Ckpt:
    directory = "/nowhere"

    def __init__(self):
        self.saved = []

    def save(self, step, state):
        self.saved.append(step)


def _stage(seeds):
    return loop.Stage("stage1", None, None, "instance", 1, 1, None, 1.0, seeds)


def test_a_diverged_seed_is_marked_and_the_others_go_on(caplog):
    health = loop.Health(_stage((0, 1, 2)), _Ckpt())
    assert health.loss({"loss": np.array([1.0, 2.0, 3.0])}, 1, 0) == 2.0
    with caplog.at_level("WARNING"):
        assert health.loss({"loss": np.array([1.0, np.nan, 3.0])}, 2, 0) == 2.0
    assert health.diverged == {1} and "seed 1 diverged (loss is nan at step 2" in caplog.text
    state = {"w": jax.numpy.array([[1.0], [np.nan], [2.0]])}
    health.save(2, state)  # the NaN seed is the marked one: saved
    assert health.ckpt.saved == [2]
    with pytest.raises(train.TrainingError, match="every seed diverged"):
        health.loss({"loss": np.array([np.inf, np.nan, np.nan])}, 3, 0)
    one = loop.Health(_stage((0,)), _Ckpt())
    with pytest.raises(train.TrainingError, match="loss is nan at step 5"):
        one.loss({"loss": np.array(np.nan)}, 5, 0)


def test_a_seed_diverging_in_a_real_run_is_marked_and_the_other_finishes(tmp_path, monkeypatch):
    """End to end: seed 1 starts from NaN parameters (as a blown-up run would hold); the
    run does not stop, seed 0 trains to the end, results.json marks seed 1 and leaves it
    out of the aggregate."""
    real = steps.init_state

    def poisoned(config, *args, seed=None, **kwargs):
        init = real(config, *args, seed=seed, **kwargs)
        if seed == 1:
            init.state["params"] = jax.tree.map(lambda x: x * np.nan, init.state["params"])
        return init

    monkeypatch.setattr(steps, "init_state", poisoned)
    results = train.train_and_evaluate(tiny("ce", num_seeds=2), str(tmp_path))
    saved = json.load(open(tmp_path / "results.json"))
    for r in (results, saved):
        assert [s["diverged"] for s in r["per_seed"]] == [False, True]
        assert r["aggregate"]["seeds"] == [0] and r["aggregate"]["diverged"] == [1]
        assert r["per_seed"][0]["final"]["top1"] > 0.3  # seed 0 trained (10 classes)
        assert r["aggregate"]["final"]["top1"]["mean"] == r["per_seed"][0]["final"]["top1"]
    for value in _params(tmp_path).values():  # the checkpoint holds both, seed 0's intact
        assert np.isfinite(value[0]).all() and np.isnan(value[1]).all()


def test_aggregate_leaves_out_diverged_seeds():
    from lt_jax import evaluation

    final = [{"top1": v, "many": v, "medium": v, "few": None, "ece": 0.1} for v in (0.5, 0.9, 0.7)]
    out = evaluation.seed_results((0, 1, 2), final, final, diverged={1})
    assert out["aggregate"]["seeds"] == [0, 2] and out["aggregate"]["diverged"] == [1]
    assert out["aggregate"]["final"]["top1"]["mean"] == pytest.approx(0.6)
    assert out["aggregate"]["final"]["top1"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert out["aggregate"]["final"]["few"] == {"mean": None, "std": None}
    assert out["per_seed"][1]["diverged"] is True


# cRT re-trains the classifier as GCL's CBEN stage does (the two_seeds fixture); LWS trains
# scales only, tau-norm trains nothing (one seed of cRT and LWS: test_train.py).
@pytest.mark.parametrize("preset", ["lws", "tau_norm"])
def test_second_stage_modes_train_every_seed(tmp_path, preset):
    from tests.test_train import load_config

    config = load_config("configs/default.py", f"method=ce,stage2={preset},runlocal")
    config.unlock()
    config.num_seeds, config.epochs = 2, 1
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["stage2"]["mode"] == preset
    assert results["final"] is results["stage2"]["final"]  # stage 2 gives the headline
    assert [r["seed"] for r in results["stage2"]["per_seed"]] == [0, 1]
    tops = [r["final"]["top1"] for r in results["stage2"]["per_seed"]]
    assert all(0 < t <= 1 for t in tops)
    if preset == "tau_norm":
        assert len(results["stage2"]["per_tau"]) == 21  # the tau grid 0, 0.1, ..., 2


def test_sweep_applies_config_overrides_to_every_run(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(train, "train_and_evaluate", lambda c, w: seen.append((c, w)) or {
        "final": {"top1": 0.5}})  # fmt: skip
    root = os.path.dirname(os.path.dirname(__file__))
    sweep.main(["--config", os.path.join(root, "configs", "default.py"), "--root", str(tmp_path),
                "--methods", "ce,gcl", "--args", "runlocal", "--config.num_seeds=3",
                "--config.dataset.imb_factor=10"])  # fmt: skip
    assert [(c.num_seeds, c.dataset.imb_factor, c.method) for c, _ in seen] == [
        (3, 10.0, "ce"),
        (3, 10.0, "gcl"),
    ]
    for bad, message in (("--config.num_seeds=two", "not a int"), ("--config.nope=1", "no key")):
        with pytest.raises(SystemExit) as e:
            sweep.main(["--config", os.path.join(root, "configs", "default.py"),
                        "--root", str(tmp_path), "--methods", "ce", bad])  # fmt: skip
        assert e.value.code == 2
        assert message in capsys.readouterr().err
