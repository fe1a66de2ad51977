"""Split lists and the streamed (Grain) input path, on tiny fixtures the tests create."""

import os
import time

import numpy as np
import pytest
from PIL import Image

from lt_jax import train
from lt_jax.data import splits, streaming
from tests.test_train import load_config

TINY = splits.ListSpec("Tiny", {"train": "t_train.txt", "test": "t_test.txt"}, 3, 12, 6, 2, "test")


def make_fixture(root, counts=(6, 4, 2), test_per_class=2):
    rng = np.random.default_rng(0)
    lines = {"train": [], "test": []}
    for split, per_class in (("train", counts), ("test", [test_per_class] * len(counts))):
        for c, n in enumerate(per_class):
            os.makedirs(root / split / f"c{c}", exist_ok=True)
            for k in range(n):
                rel = f"{split}/c{c}/{k}.jpg"
                size = (40 + 4 * k, 36)  # different sizes and aspect ratios
                Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(
                    root / rel
                )
                lines[split].append(f"{rel} {c}")
    lists = root / "lists"
    os.makedirs(lists, exist_ok=True)
    (lists / "t_train.txt").write_text("\n".join(lines["train"]) + "\n")
    (lists / "t_test.txt").write_text("\n".join(lines["test"]) + "\n")
    return lists


@pytest.fixture
def tiny_lists(monkeypatch, tmp_path):
    monkeypatch.setitem(splits.SPLIT_LISTS, "imagenet_lt", TINY)
    return make_fixture(tmp_path)


def test_split_list_local_and_statistics(tiny_lists):
    paths, labels = splits.split_list("imagenet_lt", "train", lists_dir=str(tiny_lists))
    assert len(paths) == 12 and np.bincount(labels).tolist() == [6, 4, 2]
    (tiny_lists / "t_train.txt").write_text("train/c0/0.jpg 0\n")
    with pytest.raises(ValueError, match=r"not the standard imagenet_lt training list"):
        splits.split_list("imagenet_lt", "train", lists_dir=str(tiny_lists))


def test_split_list_parse_errors(tmp_path):
    (tmp_path / "a.txt").write_text("x/1.jpg 0\nx/2.jpg 7\n")
    with pytest.raises(ValueError, match=r"a.txt:2: label 7 is outside the class range \[0, 3\)"):
        splits.parse_split_list(str(tmp_path / "a.txt"), 3)
    (tmp_path / "b.txt").write_text("x/1.jpg\n")
    with pytest.raises(ValueError, match=r"b.txt:1: expected 'relative/path label'"):
        splits.parse_split_list(str(tmp_path / "b.txt"), 3)


def test_offline_download_fails_fast_and_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("LT_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(splits, "_BASE", "http://127.0.0.1:9/")  # nothing listens there
    start = time.time()
    with pytest.raises(
        FileNotFoundError, match="could not download .*ImageNet_LT_train.txt.*lists_dir"
    ):
        splits.split_list("imagenet_lt", "train")
    assert time.time() - start < 5


def test_cached_list_is_checked_against_its_digest(monkeypatch, tmp_path, tiny_lists):
    monkeypatch.setenv("LT_JAX_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "splits" / "imagenet_lt" / "t_train.txt"
    os.makedirs(cached.parent)
    cached.write_text((tiny_lists / "t_train.txt").read_text())
    (tmp_path / "cache" / "splits" / "imagenet_lt" / "t_train.txt.sha256").write_text(
        splits._sha256(str(cached))
    )
    assert len(splits.split_list("imagenet_lt", "train")[0]) == 12
    cached.write_text("train/c0/0.jpg 0\n")
    with pytest.raises(ValueError, match="does not match its recorded SHA-256"):
        splits.split_list("imagenet_lt", "train")


def test_sort_classes_by_frequency():
    mapping = splits.sort_classes_by_frequency(np.array([2, 2, 2, 0, 1, 1]), 3)
    assert mapping.tolist() == [2, 1, 0]


def test_random_resized_crop_box_is_valid():
    rng = np.random.default_rng(0)
    for h, w in [(100, 60), (30, 400), (224, 224)]:
        for _ in range(50):
            top, left, ch, cw = streaming.random_resized_crop_params(rng, h, w)
            assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 < cw


def test_streamed_batches_deterministic_and_complete(tmp_path):
    make_fixture(tmp_path)
    files, labels, _ = streaming.folder_file_lists(str(tmp_path), "train")
    order = np.arange(len(files))[::-1]
    kw = dict(batch_size=4, epoch=3, seed=1, size=16, num_threads=2)
    a = list(streaming.train_batches(files, labels, order, **kw))
    b = list(streaming.train_batches(files, labels, order, **kw))
    assert len(a) == 3 and a[0][0].shape == (4, 16, 16, 3) and a[0][0].dtype == np.uint8
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # Starting mid-epoch yields the same later batches (resume).
    c = list(streaming.train_batches(files, labels, order, start_batch=1, **kw))
    np.testing.assert_array_equal(c[0][0], a[1][0])
    ev = list(
        streaming.eval_batches(files, labels, batch_size=5, size=16, resize=20, num_threads=2)
    )
    masks = np.concatenate([m for _, _, m in ev])
    assert len(ev) == 3 and masks.sum() == 12 and ev[-1][0].shape == (5, 16, 16, 3)


def test_several_seeds_stream_each_seeds_own_batches(tmp_path):
    """Two seeds with two orders in one pipeline: batch [2, rows, ...] whose slice k is
    exactly the batch a run with seed k alone reads (same images, same crops and flips)."""
    make_fixture(tmp_path)
    files, labels, _ = streaming.folder_file_lists(str(tmp_path), "train")
    orders = np.stack([np.arange(len(files))[::-1], np.random.default_rng(0).permutation(12)])
    kw = dict(batch_size=4, epoch=2, size=16, num_threads=2, start_batch=1)
    both = list(streaming.train_batches(files, labels, orders, seed=[3, 8], **kw))
    alone = [list(streaming.train_batches(files, labels, o, seed=s, **kw)) for o, s in
             zip(orders, (3, 8), strict=True)]  # fmt: skip
    assert len(both) == 2 and both[0][0].shape == (2, 4, 16, 16, 3) and both[0][1].shape == (2, 4)
    for b, (x, y) in enumerate(both):
        for k in range(2):
            np.testing.assert_array_equal(x[k], alone[k][b][0])
            np.testing.assert_array_equal(y[k], alone[k][b][1])
    np.testing.assert_array_equal(both[0][1][1], labels[orders[1][4:8]])
    assert not np.array_equal(both[0][0][0], both[0][0][1])
    with pytest.raises(ValueError, match="2 index orders but 1 seeds"):
        next(streaming.train_batches(files, labels, orders, seed=3, **kw))


def test_corrupt_streamed_image_names_the_file(tmp_path):
    make_fixture(tmp_path)
    bad = tmp_path / "train" / "c0" / "0.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot decode image file .*c0/0.jpg"):
        streaming.eval_transform(str(bad), 16, 20)


def _streamed_config(tiny_lists):
    config = load_config("configs/default.py", "method=ldam_drw,runlocal")
    config.unlock()
    config.dataset.name = "imagenet_lt"
    config.dataset.data_dir = str(tiny_lists.parent)
    config.dataset.lists_dir = str(tiny_lists)
    config.dataset.image_size = 32
    config.model = "small_cnn"  # the streamed path is under test, not the model
    config.batch_size = 8
    config.epochs = 1
    config.eval_batch_size = 8
    return config


def test_train_end_to_end_on_streamed_split_lists(tiny_lists, tmp_path):
    config = _streamed_config(tiny_lists)
    results = train.train_and_evaluate(config, str(tmp_path / "work"))
    assert results["train_class_counts"] == [6, 4, 2]
    assert len(results["final"]["per_class_accuracy"]) == 3
    assert sum(np.array(results["final"]["confusion_matrix"]).ravel()) == 6  # every test image once


def test_two_seeds_on_a_streamed_dataset_train_as_the_runs_with_each_seed(tiny_lists, tmp_path):
    """num_seeds=2 on the streamed path: seed 1 of the pair ends with the parameters of the
    run with seed 1 alone (float32 rounding of the vmapped program), per-seed results."""
    from tests.test_seeds import _params

    config = _streamed_config(tiny_lists)
    config.num_seeds = 2
    together = train.train_and_evaluate(config, str(tmp_path / "k2"))
    config.num_seeds, config.seed = 1, 1
    train.train_and_evaluate(config, str(tmp_path / "s1"))
    assert [r["seed"] for r in together["per_seed"]] == [0, 1]
    stacked, single = _params(str(tmp_path / "k2")), _params(str(tmp_path / "s1"))
    assert stacked.keys() == single.keys()
    for name, value in single.items():
        np.testing.assert_allclose(stacked[name][1], value, atol=1e-4, err_msg=name)
