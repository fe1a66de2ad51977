"""The trainer: end to end on the default config, multi-device equality, resume, bad input."""

import glob
import importlib.util
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lt_jax import checkpoint, evaluation, methods, metrics, optim, stage2, steps, train
from lt_jax.data import datasets, pipeline, samplers
from lt_jax.workdir import check_config, record_config
from tests import copy_run, xla_flags

ROOT = os.path.join(os.path.dirname(__file__), "..")


def load_config(path, arg=None):
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny(method="gcl", **overrides):
    config = load_config("configs/default.py", f"method={method},runlocal")
    config.unlock()
    for k, v in overrides.items():
        config[k] = v
    return config


@pytest.mark.xdist_group("sweep_root")  # one worker builds the shared fixture
def test_default_config_end_to_end(sweep_root):
    """The default GCL config at runlocal size (seed 1: conftest.py's shared sweep run)."""
    workdir = sweep_root / "gcl_s1"
    check_config(str(workdir), tiny(seed=1))
    results = json.load(open(workdir / "results.json"))
    assert results["method"] == "gcl" and results["stage1"]["final"]["epoch"] == 2
    final = results["final"]  # GCL's stage 2 (1 epoch in runlocal) gives the headline
    assert final == results["stage2"]["final"] and final["epoch"] == 1
    assert 0.1 < final["top1"] <= 1
    assert set(["many", "medium", "few", "ece", "per_class_accuracy"]) <= set(final)
    split = json.load(open(workdir / "split.json"))
    assert split["class_counts"] == [400, 239, 143, 86, 51, 30, 18, 11, 6, 4]
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert any("stage1/test/top1" in line for line in lines)
    assert any("stage2/test/top1" in line for line in lines)
    # TensorBoard: one run per stage, steps never going back, test metrics and lr there.
    for stage in ("stage1", "stage2"):
        (events,) = glob.glob(str(workdir / "tensorboard" / stage / "events.out.tfevents.*"))
        scalars = _tensorboard_scalars(events)
        steps = [step for step, _, _ in scalars]
        assert steps == sorted(steps) and steps, stage
        tags = {tag for _, tag, _ in scalars}
        assert {f"{stage}/test/top1", f"{stage}/train/lr", f"{stage}/train/loss"} <= tags
        top1 = [v for _, tag, v in scalars if tag == f"{stage}/test/top1"]
        assert top1[-1] == pytest.approx(results[stage]["final"]["top1"], abs=1e-6)


def _tensorboard_scalars(path):
    """(step, tag, value) of an event file, read with tensorboardX's Event protobuf and
    the TFRecord framing checked as in test_events.py, independently of the writer."""
    from tensorboardX.proto import event_pb2

    from tests.test_events import _records

    events = [event_pb2.Event.FromString(payload) for payload in _records(path)]
    return [(e.step, v.tag, v.simple_value) for e in events for v in e.summary.value]


@pytest.mark.parametrize("method", ["kps_ga_optax", "fbl", "ldam_drw"])
def test_methods_train_one_epoch(tmp_path, method):
    results = train.train_and_evaluate(tiny(method, epochs=1), str(tmp_path))
    assert np.isfinite(results["final"]["top1"])


def test_cb_focal_starts_the_head_bias_at_the_prior_and_never_decays_it(tmp_path, monkeypatch):
    """Cui et al.'s release, through a real run: the head bias starts at -log(C - 1) =
    -log 9, and weight decay skips it (zero gradients: the bias gets no update, every other
    parameter shrinks by the same lr * wd)."""
    seen, real = {}, steps.init_seeds

    def spy(*args, **kw):
        init = real(*args, **kw)
        # Copies: the run donates the state to its first step.
        seen.update(tx=init.tx, state=jax.tree.map(np.array, init.state))
        return init

    monkeypatch.setattr(steps, "init_seeds", spy)
    results = train.train_and_evaluate(tiny("cb_focal", epochs=1), str(tmp_path))
    assert np.isfinite(results["final"]["top1"])
    params = seen["state"]["params"]
    np.testing.assert_allclose(params["head"]["bias"][...], np.full(10, -np.log(9.0)), rtol=1e-6)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = seen["tx"].update(zeros, seen["state"]["opt_state"], params)
    assert np.all(np.asarray(updates["head"]["bias"][...]) == 0)
    ratios = {
        name: np.asarray(updates[name]["kernel"][...]) / params[name]["kernel"][...]
        for name in ("head", "conv1", "dense")
    }
    lr_wd = ratios["head"].flat[0]
    assert lr_wd < 0
    for r in ratios.values():
        np.testing.assert_allclose(r, lr_wd, rtol=1e-5)


def _one_step(config, devices, state0, graphdef, head_graphdef, method, tx, lr_fn, data):
    mesh = pipeline.create_mesh(devices)
    rep = NamedSharding(mesh, P())
    step = jax.jit(
        steps.make_train_step(
            graphdef,
            head_graphdef,
            method,
            tx,
            lr_fn,
            steps.preprocess(config, config.dataset.augment, (0.13,), (0.31,)),
        )
    )
    state = jax.device_put(state0, rep)
    images, labels = jax.device_put(data.train_images, rep), jax.device_put(data.train_labels, rep)
    idx = pipeline.shard_batch(mesh, np.arange(config.batch_size, dtype=np.int32) * 7)
    for _ in range(2):
        state, _ = step(state, pipeline.GatherBatch(images, labels, idx), jax.random.key(0))
    return jax.device_get(state)


def test_eight_devices_equal_one_device():
    assert jax.device_count() == 8, "conftest should provide 8 virtual CPU devices"
    config = tiny("kps_ga_optax", mixup_alpha=1.0)
    config.loss.ga_epoch = 0
    data, _ = datasets.load_dataset(config.dataset)
    method = methods.get_method(config.method, config.loss, data.class_counts, 15)
    tx, lr_fn = optim.create_optimizer(
        config, 15, ga_start_step=method.ga_start_step, num_classes=10
    )
    state0, graphdef, head_graphdef = steps.init_state(
        config, 10, method.head, tx, input_shape=(28, 28, 1)
    )[:3]
    args = (state0, graphdef, head_graphdef, method, tx, lr_fn, data)
    one = _one_step(config, jax.devices()[:1], *args)
    eight = _one_step(config, jax.devices(), *args)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
        one["params"],
        eight["params"],
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
        one["batch_stats"],
        eight["batch_stats"],
    )
    assert not np.allclose(
        state0["params"]["head"]["kernel"][...], one["params"]["head"]["kernel"][...]
    )


def _final_params(workdir, config):
    data, _ = datasets.load_dataset(config.dataset)
    method = methods.get_method(config.method, config.loss, data.class_counts, 15)
    tx, _ = optim.create_optimizer(config, 15, ga_start_step=method.ga_start_step, num_classes=10)
    state = steps.init_state(config, 10, method.head, tx, input_shape=(28, 28, 1))[0]
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", "stage1"))
    restored = ckpt.restore(state)
    ckpt.close()
    return restored


def sigterm_at_step(n):
    """A stand-in for ``install_sigterm`` whose flag rises after the ``n``-th step."""
    calls = {"n": 0}

    def install():
        def preempted():
            calls["n"] += 1
            return calls["n"] == n

        return preempted

    return install


def test_kill_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    config = tiny("gcl", mixup_alpha=1.0, drop_last=False)  # runlocal drops it
    # Stage 1 only: a stage 2 after a resumed stage 1 is test_seeds.py's (both stages).
    config.stage2.mode = "none"
    full = train.train_and_evaluate(config, str(tmp_path / "a"))

    # Each epoch keeps its last partial batch: 15 batches of 64 and one of the rest.
    data, _ = datasets.load_dataset(config.dataset)
    sizes = samplers.epoch_batches(len(data.train_labels), 64, multiple=jax.device_count())
    assert len(sizes) == 16 and sizes[:15] == [64] * 15 and 0 < sizes[-1] < 64
    # Preempt mid-epoch 1 (step 20 of 32): the SIGTERM path saves and stops; the resumed
    # run goes through epoch 1's partial batch.
    monkeypatch.setattr(train, "install_sigterm", sigterm_at_step(20))
    with pytest.raises(train.TrainingError, match="SIGTERM: saved stage1 step 20"):
        train.train_and_evaluate(config, str(tmp_path / "b"))
    monkeypatch.undo()
    resumed = train.train_and_evaluate(config, str(tmp_path / "b"))

    a, b = _final_params(str(tmp_path / "a"), config), _final_params(str(tmp_path / "b"), config)
    assert int(a["step"]) == int(b["step"]) == 32
    jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
    jax.tree.map(np.testing.assert_array_equal, a["batch_stats"], b["batch_stats"])
    assert full["final"]["per_class_accuracy"] == resumed["final"]["per_class_accuracy"]


# --- metrics against NumPy on known predictions ------------------------------------------------


def test_group_accuracy_and_ece_hand_computed():
    # 4 classes: counts -> groups many, medium, few, few (paper convention).
    counts = [500, 50, 10, 5]
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    preds = np.array([0, 0, 1, 0, 2, 2, 0, 0])
    scores = np.eye(4)[preds] * 2.0
    out = metrics.summarize(scores, labels, counts)
    assert out["top1"] == pytest.approx(5 / 8)
    assert out["many"] == 1.0 and out["medium"] == 0.5 and out["few"] == pytest.approx(0.5)
    # softmax([2,0,0,0]) max prob = e^2 / (e^2 + 3): one bin, accuracy 5/8.
    conf = np.exp(2) / (np.exp(2) + 3)
    assert out["ece"] == pytest.approx(abs(5 / 8 - conf))
    assert np.array(out["confusion_matrix"])[3, 0] == 2
    # An empty group is absent, not 0.
    assert metrics.summarize(scores, labels, [500, 500, 500, 500])["few"] is None


def test_ece_two_bins():
    conf = np.array([0.95, 0.95, 0.25, 0.25])
    correct = np.array([1, 0, 0, 0])
    # bins: {0.95}: acc .5 conf .95 -> .45 * .5; {0.25}: acc 0 conf .25 -> .25 * .5
    assert metrics.expected_calibration_error(conf, correct) == pytest.approx(0.35)


# --- configs and bad input ---------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_loads_and_builds(path):
    config = load_config(os.path.relpath(path, ROOT), "runlocal")
    assert isinstance(config, ml_collections.ConfigDict)
    from flax import nnx

    from lt_jax import models

    method = methods.get_method(config.method, config.loss, np.array([50, 10, 2]), 10)
    # Abstractly (shapes only): the constructors run, no weights drawn (ResNet-152's 58 M).
    model = nnx.eval_shape(
        lambda: models.create_model(config.model, num_classes=3, head=method.head, rngs=nnx.Rngs(0))
    )
    assert isinstance(model, nnx.Module)


def test_config_errors():
    with pytest.raises(
        ValueError, match=r"unknown config argument 'methd' \(did you mean 'method'\?\); valid: "
    ):
        load_config("configs/default.py", "methd=ce")
    with pytest.raises(
        ValueError, match=r"unknown method 'kpss' \(did you mean 'kps'.*\?\); valid: .*kps_ga_optax"
    ):
        load_config("configs/default.py", "method=kpss")
    with pytest.raises(ValueError, match="epochs='ten' is not a int"):
        load_config("configs/default.py", "epochs=ten")


def test_bad_run_settings(tmp_path):
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        train.train_and_evaluate(tiny(batch_size=60), str(tmp_path / "a"))
    bad = tiny()
    bad.dataset.name = "svhn_lt"
    with pytest.raises(ValueError, match="unknown dataset 'svhn_lt'.*; valid: .*imagenet_lt"):
        train.train_and_evaluate(bad, str(tmp_path / "b"))
    with pytest.raises(ValueError, match="unknown model 'resnet99'"):
        train.train_and_evaluate(tiny(model="resnet99"), str(tmp_path / "c"))


def test_nan_loss_stops_with_step(tmp_path):
    with pytest.raises(train.TrainingError, match="loss is nan at step 2 "):
        train.train_and_evaluate(tiny("ce", lr=float("nan"), log_every_steps=1), str(tmp_path))


def test_workdir_with_other_config_is_refused(tmp_path):
    record_config(str(tmp_path), tiny("ce"))
    with pytest.raises(train.TrainingError, match="different config .*method"):
        check_config(str(tmp_path), tiny("gcl"))


def test_a_cb_focal_workdir_from_before_the_sigmoid_form_is_refused(tmp_path):
    """A cb_focal run started when cb_focal was the softmax form (its config has no
    loss.form) is not resumed with the sigmoid loss."""
    old = tiny("cb_focal")
    old.unlock()
    del old.loss["form"]
    record_config(str(tmp_path), old)
    with pytest.raises(train.TrainingError, match="different config .*loss"):
        check_config(str(tmp_path), tiny("cb_focal"))
    check_config(str(tmp_path), old)  # the same config still resumes


def test_sigmoid_calibration_and_the_stage2_head_bias_mask():
    """ECE of a sigmoid-per-class model is measured on sigmoid(scores) (hand-computed: the
    predicted classes' sigmoids 0.8808 (right) and 0.7311 (wrong) fall in different
    bins); the stage-2 optimizer (the head is the whole tree) leaves its bias undecayed."""
    from types import SimpleNamespace

    from lt_jax import evaluation, optim

    data = SimpleNamespace(test_labels=np.array([0, 0]), class_counts=np.array([500, 5]))
    scores = np.array([[2.0, -1.0], [0.0, 1.0]])
    s = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    want = 0.5 * (1 - s(2.0)) + 0.5 * s(1.0)
    got = evaluation.summarize(scores, data, shot_convention="paper", sigmoid=True)
    assert got["ece"] == pytest.approx(want, rel=1e-9)
    softmax = evaluation.summarize(scores, data, shot_convention="paper")
    assert softmax["ece"] == pytest.approx(0.5 * (1 - s(3.0)) + 0.5 * s(1.0), rel=1e-9)
    s2 = tiny("cb_focal").stage2
    tx, _ = optim.create_optimizer(s2, 10, head_bias_decay=False, head_path=())
    head = {"kernel": jnp.ones((4, 2)), "bias": jnp.ones((2,))}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, head), tx.init(head), head)
    assert np.all(np.asarray(updates["bias"]) == 0) and np.all(np.asarray(updates["kernel"]) < 0)


@pytest.mark.xdist_group("sweep_root")  # one worker builds the shared fixture
def test_corrupt_checkpoint_is_a_clear_error(sweep_root, tmp_path):
    run = copy_run(sweep_root, "ce_s0", tmp_path / "run")  # tiny("ce") trained
    shutil.rmtree(run / "checkpoints" / "stage1" / "15")  # no intact one to fall back to
    for f in glob.glob(str(run / "checkpoints" / "stage1" / "*" / "**" / "*"), recursive=True):
        if os.path.isfile(f) and "metadata" not in os.path.basename(f):
            with open(f, "wb") as fh:
                fh.write(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or was written by a different"):
        train.train_and_evaluate(tiny("ce"), str(run))


def test_missing_cifar_data_is_fast_clear_error(tmp_path):
    config = load_config("configs/default.py", "runlocal")
    config.dataset.name = "cifar10_lt"
    config.dataset.data_dir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="data_dir '.*nowhere' does not exist; set it to"):
        datasets.load_dataset(config.dataset)
    os.makedirs(tmp_path / "empty")
    config.dataset.data_dir = str(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="exists but is not the CIFAR python archive"):
        datasets.load_dataset(config.dataset)


# --- stage 2 ------------------------------------------------------------------------------------


def test_stage2_freezes_backbone_and_uses_inference_batchnorm():
    config = tiny("gcl", mixup_alpha=0.0)
    config.dataset.augment = "none"
    s2 = config.stage2
    data, _ = datasets.load_dataset(config.dataset)
    m1 = methods.get_method(config.method, config.loss, data.class_counts, 15)
    tx1, _ = optim.create_optimizer(config, 15, num_classes=10)
    stage1, graphdef, head_graphdef, _ = steps.init_state(
        config, 10, m1.head, tx1, input_shape=(28, 28, 1)
    )
    # Give the BatchNorm statistics non-trivial values, so inference vs batch mode differs.
    stats = jax.tree.map(lambda v: v + 0.3, stage1["batch_stats"])
    frozen = {"params": stage1["params"], "batch_stats": stats}
    before = jax.device_get(frozen)

    m2 = methods.get_method(s2.method, s2.loss, data.class_counts, 15)
    tx2, lr2 = optim.create_optimizer(s2, 15)
    head = jax.tree.map(jnp.copy, frozen["params"]["head"])
    state = {"trainable": head, "opt_state": tx2.init(head), "step": jnp.zeros((), jnp.int32)}
    step = jax.jit(
        steps.make_stage2_step(
            graphdef,
            stage2.MODES["retrain"].head_logits(head_graphdef),
            m2,
            tx2,
            lr2,
            steps.preprocess(s2, "none", (0.1307,), (0.3081,)),
        )
    )
    idx = jnp.arange(64, dtype=jnp.int32) * 11
    images, labels = jnp.asarray(data.train_images), jnp.asarray(data.train_labels)
    key = jax.random.key(0)
    batch = pipeline.GatherBatch(images, labels, idx)
    new_state, m = step(state, frozen, batch, key)
    new_state, _ = step(new_state, frozen, batch, key)

    # The frozen backbone and BatchNorm statistics are bit-identical; the head moved.
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(frozen), before)
    assert not np.allclose(new_state["trainable"]["kernel"][...], head["kernel"][...])
    # The stage-2 loss is the loss on inference-mode (running-average BN) features.
    eval_step = jax.jit(steps.make_eval_step(graphdef, (0.1307,), (0.3081,)))
    logits, feats = eval_step(frozen["params"], stats, pipeline.GatherBatch(images, None, idx))
    k_loss = jax.random.split(jax.random.fold_in(key, 0), 4)[2]
    expect = jnp.mean(m2.loss(logits, feats, labels[idx], k_loss, 0))
    np.testing.assert_allclose(float(m["loss"]), float(expect), rtol=1e-5)


@pytest.mark.parametrize("preset", ["crt", "lws"])
def test_stage2_presets_run_one_seed(tmp_path, preset):
    """The single-seed shapes of the trained presets (LWS's scales are [C], not [K, C]);
    tau-norm treats one seed as K = 1 of the 2-seed run in test_seeds.py."""
    config = load_config("configs/default.py", f"method=ce,stage2={preset},runlocal")
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["stage2"]["mode"] == ("retrain" if preset == "crt" else preset)
    assert results["final"] is results["stage2"]["final"]


def test_stage2_head_mismatch_is_an_error(tmp_path):
    config = load_config("configs/default.py", "method=gcl,stage2=crt,runlocal")
    with pytest.raises(ValueError, match="trains a linear head but stage 1 .* cosine head"):
        train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.xdist_group("sweep_root")  # one worker builds the shared fixture
def test_evaluate_entry_point_and_cross_process_determinism(sweep_root, tmp_path):
    """``lt_jax.main`` in a fresh process (another hash seed, nothing else run before it)
    trains what the shared sweep run of the same config trained inside a test process: the
    same predictions on every test image. Both use conftest.py's XLA_FLAGS (8 devices, LLVM
    level 0): what a process's history or hash seed could change is checked, not another
    compiler setting. Then ``lt_jax.evaluate`` prints its top-1."""
    import subprocess
    import sys

    hashseed = "2" if os.environ.get("PYTHONHASHSEED") != "2" else "3"
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    workdir = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "lt_jax.main", "--workdir", workdir]
    cmd += ["--config", "configs/default.py:method=gcl,runlocal,seed=1"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "stage2 final" in out.stdout and "many" in out.stdout
    fresh = json.load(open(os.path.join(workdir, "results.json")))
    shared = json.load(open(sweep_root / "gcl_s1" / "results.json"))
    for stage in ("stage1", "stage2"):
        want = shared[stage]["final"]["per_class_accuracy"]
        assert fresh[stage]["final"]["per_class_accuracy"] == want, stage
    evaluate = [sys.executable, "-m", "lt_jax.evaluate", "--workdir", workdir]
    out = subprocess.run(evaluate, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{100 * fresh['final']['top1']:6.2f}" in out.stdout


def test_use_all_cpu_cores_picks_a_divisor():
    import subprocess
    import sys

    code = (
        "import os; from lt_jax import cli; n = cli.use_all_cpu_cores([64, 48, 500]);"
        "import jax; print(n, jax.device_count(),"
        " 'terminate_timeout_seconds=600' in os.environ['XLA_FLAGS'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for cores, expect in (("6", "4 4 True"), ("1", "1 1 True"), ("3", "2 2 True")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=dict(env, LT_JAX_CPU_DEVICES=cores),
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.split() == expect.split(), (cores, out.stdout, out.stderr[-500:])
    # A user-provided device count wins.
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=dict(env, XLA_FLAGS=xla_flags(5)),
    )
    assert out.stdout.split() == ["None", "5", "False"]


def test_cutmix_training_and_mixing_choice(tmp_path):
    results = train.train_and_evaluate(tiny("ce", epochs=1, cutmix_alpha=1.0), str(tmp_path))
    assert np.isfinite(results["final"]["top1"])
    with pytest.raises(ValueError, match="mixup_alpha or cutmix_alpha, not both"):
        steps.mixing(tiny("ce", mixup_alpha=1.0, cutmix_alpha=1.0))


def test_bad_stage2_settings_fail_before_stage1_trains(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "run_stage", lambda *a, **k: calls.append(a))
    config = load_config("configs/default.py", "method=ce,stage2=crt,runlocal")
    config.unlock()
    config.stage2.mode = "retrian"
    with pytest.raises(ValueError, match="unknown stage2.mode 'retrian'"):
        train.train_and_evaluate(config, str(tmp_path / "a"))
    config = load_config("configs/default.py", "method=gcl,stage2=crt,runlocal")
    with pytest.raises(ValueError, match="trains a linear head but stage 1"):
        train.train_and_evaluate(config, str(tmp_path / "b"))
    assert calls == []


def test_workdir_from_before_config_kernels_resumes(tmp_path):
    """A run written before config.kernels existed ran the default kernels: it resumes with
    kernels=auto and is refused with any other choice."""
    config = tiny("ce")
    record_config(str(tmp_path), config)
    path = tmp_path / "config.json"
    old = json.loads(path.read_text())
    del old["kernels"]
    path.write_text(json.dumps(old))
    check_config(str(tmp_path), config)
    config.kernels = "xla"
    with pytest.raises(train.TrainingError, match=r"differs in: kernels\)"):
        check_config(str(tmp_path), config)


def test_evaluate_keeps_order_and_drops_padding():
    """Batch i is dispatched before batch i-1 is fetched; results still come back in order,
    padding rows removed."""
    calls = []

    def eval_step(params, batch_stats, batch):
        idx = batch.idx
        calls.append(int(idx[0]))
        return jnp.asarray(idx, jnp.float32)[:, None] * 2, jnp.asarray(idx)[:, None]

    batches = [
        (pipeline.GatherBatch(None, None, np.array([0, 1, 2])), np.array([True, True, True])),
        (pipeline.GatherBatch(None, None, np.array([3, 4, 0])), np.array([True, True, False])),
    ]
    logits, feats = evaluation.evaluate(eval_step, None, None, iter(batches))
    assert calls == [0, 3]
    np.testing.assert_array_equal(logits[:, 0], [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(feats[:, 0], [0, 1, 2, 3, 4])


def _synthetic_cifar100(root, per_class_train=20, per_class_test=5):
    """A small cifar-100-python folder in the standard layout (train / test / meta pickles,
    fine labels interleaved as in the official order)."""
    import pickle

    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = rng.permutation(np.repeat(np.arange(100), per_class))
        data = rng.integers(0, 256, (len(labels), 3072)).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels.tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i:02d}".encode() for i in range(100)]}, f)
    return folder


def test_cifar100_lt_runs_end_to_end_on_the_standard_folder(tmp_path):
    """CIFAR-100-LT through configs/cifar_lt.py: the release split of the folder's labels,
    its class counts in split.json, a short CE run with results."""
    folder = _synthetic_cifar100(tmp_path)
    config = load_config(
        "configs/cifar_lt.py", f"dataset=cifar100,imb=10,method=ce,data_dir={folder},runlocal"
    )
    config.unlock()
    config.batch_size = 64
    config.epochs = 1
    config.model = "small_cnn"  # the CIFAR-100 data path is under test, not ResNet-32's compile
    data, kept = datasets.load_dataset(config.dataset)
    # The release's counts for 20 per class, IF 10: int(20 * 0.1 ** (c / 99)).
    want = [int(20 * 0.1 ** (c / 99.0)) for c in range(100)]
    assert data.class_counts.tolist() == want and want[0] == 20 and want[-1] == 2
    assert config.dataset.split_protocol == "release" and config.dataset.split_seed == 0
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["final"]["epoch"] == 1 and len(results["final"]["per_class_accuracy"]) == 100
    split = json.load(open(tmp_path / "run" / "split.json"))
    assert split["split_protocol"] == "release" and split["class_counts"] == want
    assert split["indices"] == kept.tolist()


def test_workdir_from_before_drop_last_and_split_protocol_resumes(tmp_path):
    """Runs written before drop_last / dataset.split_protocol existed dropped the partial batch
    and split per class: they resume under exactly those settings, nothing else."""
    config = tiny("ce")
    config.drop_last = True
    record_config(str(tmp_path), config)
    path = tmp_path / "config.json"
    old = json.loads(path.read_text())
    del old["drop_last"], old["dataset"]["split_protocol"], old["dataset"]["allow_constant_images"]
    path.write_text(json.dumps(old))
    check_config(str(tmp_path), config)
    config.drop_last = False
    with pytest.raises(train.TrainingError, match=r"differs in: drop_last\)"):
        check_config(str(tmp_path), config)
    config.drop_last, config.dataset.split_protocol = True, "release"
    with pytest.raises(train.TrainingError, match=r"differs in: dataset\)"):
        check_config(str(tmp_path), config)


def test_progress_rate_is_over_the_recent_lines_not_since_the_start(monkeypatch):
    """Images/s over the last ``window`` progress lines: a long pause (a stopped process, the
    first compile) leaves the figure after ``window`` lines. 64 images a step."""
    from lt_jax import loop

    clock = [1000.0]
    monkeypatch.setattr(loop.time, "time", lambda: clock[0])
    stage = loop.Stage("stage1", None, None, "instance", 1, 1, None, 1.0, (0,))
    progress = loop._Progress(stage, None, None, 0, 1000, 64, window=2)
    rates = []
    for step, seconds in ((100, 50.0), (200, 3600.0), (300, 50.0), (400, 50.0), (500, 50.0)):
        clock[0] += seconds
        rates.append(progress.rate(step))
    assert rates == pytest.approx(
        [
            100 * 64 / 50,  # since the start
            200 * 64 / 3650,  # the pause in the window
            200 * 64 / 3650,  # lines 1-3: still in it
            200 * 64 / 100,  # lines 2-4: gone
            200 * 64 / 100,
        ]
    )
