"""Lockstep parity, small: lt_jax's train step against the releases' recipe in PyTorch
(benchmarks/lockstep.py), on a synthetic CIFAR-10 in the python-pickle layout.

Each method starts at a phase of its 200-epoch recipe where the release switches something
(the DRW weights and the lr decay at epoch 160, GA at 120, the FBL curriculum, GCL's noise and
mixup; CB focal's sigmoid focal loss from its warm-up) and must match the float32 release
within float32 rounding: the same learning rate, loss and logits, parameters and BatchNorm
statistics within ten times the float32 release's own distance from the float64 release. A
wrong schedule boundary, reduction, margin or running-variance rule makes it fail (the test
below also shows one).

The same file checks the PyTorch reference trainer of benchmarks/torch_reference.py (the
releases' recipes run whole, beside lt_jax's runs): its release settings against lt_jax's
configs, its vectorised crops against a per-image loop, its compressed schedule.
"""

import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import lockstep, torch_reference  # noqa: E402

PER_CLASS = 100  # the release split keeps [100, 59, 35, 21, 12, 7, 4, 2, 1, 1]: 242 images


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), PER_CLASS))
    # Smooth class-dependent images (not noise), so the features and gradients are realistic.
    base = rng.integers(0, 256, (10, 4, 4, 3))
    imgs = np.repeat(np.repeat(base[labels], 8, axis=1), 8, axis=2)
    imgs = np.clip(imgs + rng.normal(0, 20, imgs.shape), 0, 255).astype(np.uint8)
    rows = imgs.transpose(0, 3, 1, 2).reshape(len(labels), -1)
    for k in range(5):
        part = slice(k * 200, (k + 1) * 200)
        batch = {b"data": rows[part], b"labels": labels[part].tolist()}
        with open(root / f"data_batch_{k + 1}", "wb") as f:
            pickle.dump(batch, f)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": rows[:100], b"labels": labels[:100].tolist()}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return str(root)


def _run(cifar_dir, method, phase, steps, modes, batch):
    return lockstep.main(
        [
            *("--methods", method, "--phases", str(phase), "--steps", str(steps)),
            *("--modes", modes, "--batch-size", str(batch), "--data-dir", cifar_dir),
            *("--threads", "1", "--free-methods", ""),
            # The plain XLA program: the tests force the native CPU kernels on (to check them
            # on every machine), which are slow where there is no AVX-512.
            *("--kernels", "xla"),
        ]
    )


def test_ce_keeps_the_partial_batch_and_matches_free_running(cifar_dir):
    """Warm-up: a whole epoch, 3 x 64 images and the partial batch (50, rounded down to the
    8 test devices: 48); free-running, lt_jax stays within float32 rounding of the release."""
    (r,) = _run(cifar_dir, "ce", 0, 4, "free", 64)
    assert [row["batch"] for row in r["rows"]] == [64, 64, 64, 48]
    assert r["parted"] is None, r["parted"]
    assert all(row["lr_lt_jax"] == pytest.approx(0.02, rel=1e-6) for row in r["rows"])


@pytest.mark.parametrize(
    "method,phase",
    [("cb_focal", 0), ("ldam_drw", 160), ("kps_ga", 120), ("fbl", 150), ("gcl", 0)],
)
def test_method_phase_matches_the_release(cifar_dir, method, phase):
    (r,) = _run(cifar_dir, method, phase, 2, "synced", 32)
    assert r["parted"] is None, r["parted"]
    for row in r["rows"]:
        assert row["loss_err_lt_jax"] < 1e-5 and row["logits_err_lt_jax"] < 1e-4, row


def test_a_schedule_one_epoch_late_is_caught(cifar_dir, monkeypatch, tmp_path):
    """The lr decay one epoch late (lt_jax before this check existed) parts at once; the
    report files name it."""
    from lt_jax import config_lib

    late = dict(config_lib.CIFAR_RECIPES["baseline"], lr_boundaries=(161, 181))
    monkeypatch.setitem(config_lib.CIFAR_RECIPES, "baseline", late)
    (r,) = lockstep.main(
        [
            *("--methods", "ldam_drw", "--phases", "160", "--steps", "1", "--modes", "synced"),
            *("--batch-size", "32", "--data-dir", cifar_dir, "--out", str(tmp_path)),
            *("--kernels", "xla"),
        ]
    )
    assert r["parted"] is not None and r["parted"][1] == "learning rate"
    assert os.path.exists(tmp_path / "lockstep.json")
    md = (tmp_path / "lockstep.md").read_text()
    assert md.startswith("| method |") and "| ldam_drw | 160 (DRW" in md
    assert "| step 1280: learning rate |" in md  # epoch 160 x 8 steps of 32


def _row(step, loss_lt_jax, loss_release32):
    row = dict(step=step, batch=128, lr_lt_jax=0.1, lr_release=0.1)
    for q in lockstep.QUANTITIES:
        row[f"{q}_err_lt_jax"] = row[f"{q}_err_release32"] = 1e-7
    row["loss_err_lt_jax"], row["loss_err_release32"] = loss_lt_jax, loss_release32
    return row


def test_parting_is_judged_against_the_largest_rounding_so_far(tmp_path, monkeypatch):
    """Free-running, the float32 release's loss error can cancel to almost nothing at one
    step (1.8e-5 between 4.3e-4 and 1.2e-3, seen on CE): that step is no part; ten times the
    largest so far is. --rejudge recomputes stored rows with this criterion (over the file
    when no --out is given)."""
    import json

    chance = [_row(0, 1e-7, 1e-7), _row(1, 8e-4, 4e-4), _row(2, 2e-3, 2e-5)]
    assert lockstep.parted(chance) is None
    assert lockstep.parted([*chance, _row(3, 5e-3, 1e-3)]) is None
    assert lockstep.parted([*chance, _row(3, 5e-2, 1e-3)]) == (3, "loss")
    assert lockstep.parted([_row(0, 2e-6, 1e-7)]) == (0, "loss")  # over the floor at once
    phase = dict(method="ce", start_epoch=0, phase="p", mode="free", rows=chance)
    stored = dict(command="x", results=[dict(phase, parted=(2, "loss"), seconds=1.0)])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "lockstep.json").write_text(json.dumps(stored))
    lockstep.main(["--rejudge", str(tmp_path / "in" / "lockstep.json"), "--out", str(tmp_path)])
    assert json.loads((tmp_path / "lockstep.json").read_text())["results"][0]["parted"] is None
    monkeypatch.chdir(tmp_path / "in")  # a bare file name: its own folder, the file rewritten
    lockstep.main(["--rejudge", "lockstep.json"])
    assert json.loads((tmp_path / "in" / "lockstep.json").read_text())["rejudged"].endswith(
        "--rejudge lockstep.json"
    )
    # Labelled with today's phases.
    assert "| ce | 0 (warm-up (lr 0.02)) | free | 3 | " in (tmp_path / "lockstep.md").read_text()


# --- the PyTorch reference trainer ---------------------------------------------------------------


def test_each_release_side_normalises_the_crops_at_its_own_precision():
    """The float64 reference computes ``(x / 255 - mean) / std`` in float64 (not from the
    float32 release's input, whose rounding it would then share)."""
    from lt_jax.data import augment

    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4), np.uint8))
    m = np.asarray(augment.CIFAR_MEAN, np.float64)[:, None, None]
    s = np.asarray(augment.CIFAR_STD, np.float64)[:, None, None]
    exact = (crops.numpy().astype(np.float64) / 255.0 - m) / s
    x64 = lockstep._torch_normalize(crops, torch.float64)
    x32 = lockstep._torch_normalize(crops, torch.float32)
    assert x64.dtype == torch.float64 and x32.dtype == torch.float32
    np.testing.assert_allclose(x64.numpy(), exact, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(x32.numpy(), exact, rtol=1e-6, atol=1e-6)
    assert np.abs(x32.numpy() - exact).max() > 1e-9  # float32 rounding, absent from x64


def test_reference_crops_and_flips_each_image_at_its_own_draws():
    """The vectorised crop + flip against a per-image loop written here: zero padding of 4,
    the window at (row, column) offset, mirrored columns where flipped."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    offsets, flip = rng.integers(0, 9, (6, 2)), np.array([1, 0, 1, 0, 0, 1], bool)
    got = torch_reference.crop_flip(
        torch.from_numpy(x), torch.from_numpy(offsets), torch.from_numpy(flip)
    ).numpy()
    padded = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)))
    for k, ((a, b), f) in enumerate(zip(offsets, flip, strict=True)):
        want = padded[k, :, a : a + 32, b : b + 32]
        np.testing.assert_array_equal(got[k], want[:, :, ::-1] if f else want)


@pytest.mark.parametrize("method", sorted(torch_reference.RELEASE))
def test_reference_release_settings_are_lt_jax_configs(method):
    """The settings the PyTorch reference trains with, written from the releases' scripts,
    are the ones configs/cifar_lt.py gives lt_jax (a run of each is the same recipe)."""
    from lt_jax import methods, sweep

    config = sweep.load_config(
        os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "cifar_lt.py"),
        f"method={method},stage2=none",
    )
    r = torch_reference.RELEASE[method]
    assert config.batch_size == r["batch"]
    assert (config.lr, config.warmup_epochs, tuple(config.lr_boundaries)) == (0.1, 5, (160, 180))
    assert tuple(config.lr_factors) == r["factors"]
    assert config.wd == torch_reference.RELEASE_WD and config.mixup_alpha == r["mixup"]
    counts = np.array([100, 59, 35, 21, 12, 7, 4, 2, 1, 1])
    m = methods.get_method(method, config.loss, counts, 4)
    assert m.head == r["head"]
    prior = r.get("prior", False)  # the head bias from -log(C - 1), undecayed
    assert (m.head_bias_init, m.head_bias_decay) == ((-np.log(9), False) if prior else (None, True))


@pytest.mark.parametrize("method", ["ldam_drw", "gcl"])
def test_reference_trainer_compresses_the_recipe_and_evaluates(cifar_dir, method):
    """Five epochs: epoch e runs the release's epoch 40 e, so the lr is 0.02 (warm-up), 0.1,
    0.1, 0.1, then the release's epoch-160 decay (LDAM-DRW x0.01, GCL x0.1), hand-computed;
    the test set is evaluated after epochs 2, 4 and the last. GCL runs mixup and its noise."""
    from lt_jax import sweep
    from lt_jax.data import datasets

    config = sweep.load_config(
        os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "cifar_lt.py"),
        f"method={method},data_dir={cifar_dir}",
    )
    data, _ = datasets.load_dataset(config.dataset)
    lines = []
    torch.set_num_threads(1)
    r = torch_reference.train_release(method, data, epochs=5, eval_every=2, log=lines.append)
    lrs = [float(line.split(" lr ")[1].split()[0]) for line in lines]
    assert lrs == [0.02, 0.1, 0.1, 0.1, 0.001 if method == "ldam_drw" else 0.01], lines
    assert [e for e, _ in r["evaluations"]] == [2, 4, 5] and r["final"]["epoch"] == 5
    assert r["best_epoch"]["top1"] == max(t for _, t in r["evaluations"])
    assert r["train_class_counts"] == [100, 59, 35, 21, 12, 7, 4, 2, 1, 1]
    assert len(r["final"]["per_class_accuracy"]) == 10 and 0 <= r["final"]["top1"] <= 1


def test_reference_trainer_resumes_from_its_checkpoint_as_if_never_stopped(cifar_dir, tmp_path):
    """GCL (mixup's NumPy draws, the noise and crops from the torch generator), 3 epochs: a
    run killed in its second epoch and started again from its checkpoint ends with the
    uninterrupted run's parameters and evaluations, bit for bit; a checkpoint of another
    seed is refused with one line."""
    from lt_jax import sweep
    from lt_jax.data import datasets

    config = sweep.load_config(
        os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "cifar_lt.py"),
        f"method=gcl,data_dir={cifar_dir}",
    )
    data, _ = datasets.load_dataset(config.dataset)
    torch.set_num_threads(1)
    whole, stopped = str(tmp_path / "whole.pt"), str(tmp_path / "stopped.pt")
    train = dict(epochs=3, eval_every=1, log=lambda line: None)
    expected = torch_reference.train_release("gcl", data, checkpoint=whole, **train)

    def killed_in_epoch_2(line):  # before epoch 2's checkpoint is written
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        torch_reference.train_release(
            "gcl", data, checkpoint=stopped, **train | dict(log=killed_in_epoch_2)
        )
    assert torch.load(stopped, weights_only=False)["epoch"] == 1
    lines = []
    resumed = torch_reference.train_release(
        "gcl", data, checkpoint=stopped, **train | dict(log=lines.append)
    )
    assert lines[0].startswith(f"resumed from {stopped} after epoch 1") and len(lines) == 3
    assert resumed["evaluations"] == expected["evaluations"]
    assert resumed["final"] == expected["final"]
    a, b = (torch.load(p, weights_only=False) for p in (whole, stopped))
    assert a["epoch"] == b["epoch"] == 3
    for name, value in a["net"].items():
        assert torch.equal(value, b["net"][name]), name
    with pytest.raises(SystemExit, match="not of .*'seed': 1"):
        torch_reference.train_release("gcl", data, seed=1, checkpoint=stopped, **train)


def test_reference_cb_focal_criterion_is_the_sigmoid_focal_of_the_spec():
    """The PyTorch reference's CB focal (Cui et al.'s log-space form) against the NumPy
    probability-space sigmoid focal loss of tests/numpy_reference.py, class-balanced
    weights, divided by the batch size."""
    from tests import numpy_reference as ref

    counts = np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
    rng = np.random.default_rng(4)
    z, y = rng.normal(0, 3, (16, 10)), rng.integers(0, 10, 16)
    criterion = torch_reference.release_loss("cb_focal", counts, epoch=0)
    got = criterion(torch.from_numpy(z), None, torch.from_numpy(y), None).item()
    want = ref.sigmoid_focal(z, y, 1.0, ref.cb_weights(counts, 0.9999)).mean()
    assert got == pytest.approx(want, rel=1e-6)
