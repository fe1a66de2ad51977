"""lt_jax.sweep runs a methods x seeds grid; lt_jax.report summarises it."""

import json
import os

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from lt_jax import report
from tests import run_sweep


@pytest.mark.xdist_group("sweep_root")  # one worker builds the shared fixture
def test_sweep_layout_and_skip(sweep_root):
    assert sorted(os.listdir(sweep_root)) == ["ce_s0", "ce_s1", "gcl_s1"]
    before = os.path.getmtime(sweep_root / "ce_s0" / "results.json")
    run_sweep(sweep_root, "ce", "0")
    assert os.path.getmtime(sweep_root / "ce_s0" / "results.json") == before


@pytest.mark.xdist_group("sweep_root")  # one worker builds the shared fixture
def test_report_table_and_figures(sweep_root, tmp_path):
    path = report.write_report([str(sweep_root / "*")], str(tmp_path / "out"))
    text = open(path).read()
    finals = [
        json.load(open(sweep_root / f"ce_s{s}" / "results.json"))["final"]["top1"] for s in (0, 1)
    ]
    mean, std = 100 * np.mean(finals), 100 * np.std(finals, ddof=1)
    row = next(line for line in text.splitlines() if line.startswith("| ce |"))
    assert f"{mean:.2f} ± {std:.2f}" in row and "| 2 |" in row
    assert any(line.startswith("| gcl + gcl retrain |") for line in text.splitlines())
    for png in ("per_class_accuracy.png", "feature_norms.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    assert len(list((tmp_path / "out").glob("embedding_*.png"))) == 2
    assert len(list((tmp_path / "out").glob("confusion_*.png"))) == 2


def test_report_on_unfinished_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished lt_jax run"):
        report.write_report([str(tmp_path)], str(tmp_path / "out"))


def test_published_number_beside_the_papers_schedule_only():
    def run(epochs, top1):
        cfg = {"method": "fbl", "dataset": {"name": "cifar10_lt", "imb_factor": 100.0}}
        res = {"final": dict(top1=top1, many=0.8, medium=0.7, few=None)}
        res["best_epoch"] = res["final"]
        res["devices"] = "1 x gpu"
        return {"config": {**cfg, "epochs": epochs}, "results": res, "workdir": "w"}

    table = report.markdown_table(report.group_runs([run(200, 0.8), run(200, 0.82), run(40, 0.7)]))
    rows = {line.split(" | ")[3]: line for line in table.splitlines()[2:]}
    assert "| 81.00 ± 1.41 | 82.46 |" in rows["200"]  # final-epoch mean ± std, then published
    assert "| 70.00 | - |" in rows["40"]


# --- figures, on synthetic workdirs (no training) ------------------------------------------

MNIST_COUNTS = [400, 239, 143, 86, 51, 30, 18, 11, 6, 4]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FIFTEEN = [
    "balanced_softmax", "cb_focal", "ce", "ce+lws", "ce+retrain", "ce+tau_norm", "fbl", "focal",
    "gcl+retrain", "kps", "kps_ga", "kps_ga_optax", "ldam_drw", "logit_adjust_posthoc",
    "logit_adjusted",
]  # fmt: skip


def fake_final(rng, counts, quality=0.0):
    """A final evaluation whose confusion matrix (100 test images a class), per-class
    accuracy and shot-group accuracies agree."""
    n = len(counts)
    rank = np.argsort(np.argsort(-np.asarray(counts)))
    acc = np.clip(0.97 - 0.06 * rank + quality + rng.normal(0, 0.04, n), 0.02, 1.0)
    cm = np.zeros((n, n), int)
    for c in range(n):
        cm[c, c] = round(100 * acc[c])
        wrong = rng.choice([k for k in range(n) if k != c], 100 - cm[c, c])
        np.add.at(cm[c], wrong, 1)
    per_class = cm.diagonal() / 100
    groups = report.longtail.shot_groups(counts)
    shots = {
        g: float(per_class[groups == g].mean()) if (groups == g).any() else None
        for g in ("many", "medium", "few")
    }
    return dict(
        top1=float(per_class.mean()),
        **shots,
        shot_convention="paper",
        per_class_accuracy=per_class.tolist(),
        confusion_matrix=cm.tolist(),
        feature_norm_per_class=(8 - 0.4 * rank + rng.normal(0, 0.2, n)).tolist(),
        epoch=2,
    )


def fake_run(
    root,
    name,
    method,
    seeds=(0,),
    *,
    dataset="mnist_lt",
    counts=MNIST_COUNTS,
    embedding=True,
    variance=True,
):
    """A finished workdir ``root/name``: ``method`` may be ``"m+mode"`` (a stage 2), several
    ``seeds`` are one ``num_seeds`` workdir (``per_seed``)."""
    rng = np.random.default_rng([len(name), *name.encode()])
    method, _, mode = method.partition("+")
    quality = 0.1 * rng.random()
    finals = [fake_final(rng, counts, quality) for _ in seeds]
    stage = {"final": finals[0], "best_epoch": finals[0]}
    if len(seeds) > 1:
        stage["per_seed"] = [
            {"seed": s, "final": f, "best_epoch": f, "diverged": False}
            for s, f in zip(seeds, finals, strict=True)
        ]
    results = {
        **stage,
        "stage1": stage,
        "train_class_counts": list(counts),
        "method": method,
        "dataset": dataset,
        "devices": "1 x cpu",
        "wall_time_s": 10.0,
    }
    config = {
        "method": method,
        "seed": seeds[0],
        "num_seeds": len(seeds),
        "epochs": 2,
        "shot_convention": "paper",
        "dataset": {"name": dataset, "imb_factor": 100.0},
        "stage2": {"mode": mode or "none", "method": method},
    }
    workdir = root / name
    workdir.mkdir(parents=True)
    for key, value in (("config", config), ("results", results)):
        (workdir / f"{key}.json").write_text(json.dumps(value))
    if embedding:
        n, labels = len(counts), np.repeat(np.arange(len(counts)), 40)
        centres = 5 * np.stack([np.cos(np.arange(n)), np.sin(np.arange(n))], 1)
        coords = centres[labels] + rng.normal(0, 1, (len(labels), 2))
        extra = {"explained_variance_ratio": np.array([0.31, 0.12])} if variance else {}
        np.savez(workdir / "embedding_stage1.npz", coords=coords, labels=labels, **extra)
    return str(workdir)


def _groups(dirs):
    runs = [r for d in dirs for r in report.seed_runs(report.load_run(d))]
    return {k: sorted(v, key=report._seed_of) for k, v in report.group_runs(runs).items()}


def _method_lines(ax):
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def _texts(labels):
    return [t.get_text() for t in labels]


def test_fifteen_methods_have_distinct_styles_and_the_legend_is_outside(tmp_path):
    dirs = [fake_run(tmp_path, m, m, embedding=False) for m in FIFTEEN]
    fig = report.plot_per_class_accuracy(_groups(dirs), str(tmp_path / "acc.png"))
    ax = fig.axes[0]
    lines = _method_lines(ax)
    assert len(lines) == 15
    assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == 15
    legend = ax.get_legend()
    assert _texts(legend.get_texts()) == [line.get_label() for line in lines]
    renderer = FigureCanvasAgg(fig).get_renderer()  # the saved figure's layout
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    assert (tmp_path / "acc.png").stat().st_size > 10_000


def test_per_class_axis_is_head_to_tail_with_counts_and_shot_groups(tmp_path):
    counts = [50, 83, 139, 232, 387, 645, 1077, 1796, 2997, 5000]  # class 9 (truck) is the head
    d = fake_run(tmp_path, "ce", "ce", dataset="cifar10_lt", counts=counts, embedding=False)
    fig = report.plot_per_class_accuracy(_groups([d]), str(tmp_path / "acc.png"))
    ax = fig.axes[0]
    assert _texts(ax.get_xticklabels()) == CIFAR10[::-1]
    (top,) = ax.child_axes  # the training-count axis
    assert _texts(top.get_xticklabels()) == [str(c) for c in counts[::-1]]
    assert ax.get_xlabel() and ax.get_ylabel() and top.get_xlabel()
    # paper convention: 8 classes > 100 images (many), 2 of 20..100 (medium), none few
    boundaries = [line.get_xdata()[0] for line in ax.get_lines() if line not in _method_lines(ax)]
    assert boundaries == [7.5]
    assert {"many (>100)", "medium (20-100)"} <= set(_texts(ax.texts))


def test_per_class_accuracy_shows_mean_and_min_max_over_seeds(tmp_path):
    dirs = [
        fake_run(tmp_path, "ce_k3", "ce", seeds=(0, 1, 2), embedding=False),  # num_seeds 3
        fake_run(tmp_path, "fbl_s0", "fbl", seeds=(0,), embedding=False),  # two workdirs
        fake_run(tmp_path, "fbl_s1", "fbl", seeds=(1,), embedding=False),
        fake_run(tmp_path, "kps_s0", "kps", embedding=False),  # one seed: no band
    ]
    groups = _groups(dirs)
    fig = report.plot_per_class_accuracy(groups, str(tmp_path / "acc.png"))
    ax = fig.axes[0]
    bands = [c for c in ax.collections if len(c.get_paths())]
    assert len(bands) == 2
    for (label, *_), runs in groups.items():
        acc = 100 * np.array([r["results"]["final"]["per_class_accuracy"] for r in runs])
        line = next(line for line in _method_lines(ax) if line.get_label() == label)
        np.testing.assert_allclose(line.get_ydata(), acc.mean(0))  # counts already sorted
        if len(runs) > 1:
            band = bands[["ce", "fbl"].index(label)].get_paths()[0].vertices[:, 1]
            assert band.min() == pytest.approx(acc.min()) and band.max() == pytest.approx(acc.max())
    assert "min-max over seeds" in _texts(ax.get_legend().get_texts())


def test_embedding_colours_every_class_and_names_seed_and_components(tmp_path):
    d = fake_run(
        tmp_path,
        "ce_s3",
        "ce",
        seeds=(3,),
        dataset="cifar10_lt",
        counts=[5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50],
    )
    info = report.plot_embedding(report.load_run(d), str(tmp_path / "emb.png"))
    ax = info["figure"].axes[0]
    assert info["seed"] == 3 and "seed 3" in ax.get_title()
    assert ax.get_xlabel() == "PC 1 (31.0% of variance)"
    assert ax.get_ylabel() == "PC 2 (12.0% of variance)"
    colours = {tuple(c) for c in ax.collections[0].get_facecolors()}
    assert len(colours) == 10
    legend = _texts(ax.get_legend().get_texts())
    assert legend == [f"{name} ({n})" for name, n in zip(CIFAR10, info_counts(d), strict=True)]
    d2 = fake_run(tmp_path, "ce_nv", "ce", variance=False)
    ax2 = report.plot_embedding(report.load_run(d2), str(tmp_path / "e2.png"))["figure"].axes[0]
    assert (ax2.get_xlabel(), ax2.get_ylabel()) == ("PC 1", "PC 2")


def info_counts(workdir):
    return json.load(open(os.path.join(workdir, "results.json")))["train_class_counts"]


def test_confusion_is_row_normalised_with_class_names(tmp_path):
    d = fake_run(tmp_path, "ce", "ce", seeds=(0, 1), dataset="cifar10_lt", embedding=False)
    runs = report.seed_runs(report.load_run(d))
    fig = report.plot_confusion(runs, str(tmp_path / "cm.png"))
    ax, cbar = fig.axes
    assert _texts(ax.get_xticklabels()) == CIFAR10 and _texts(ax.get_yticklabels()) == CIFAR10
    assert cbar.get_ylabel() == "fraction of true class"
    assert "row-normalised" in ax.get_title() and "mean of 2 seeds (0, 1)" in ax.get_title()
    image = ax.get_images()[0].get_array()
    cms = [np.array(r["results"]["final"]["confusion_matrix"]) for r in runs]
    np.testing.assert_allclose(image, np.mean([m / m.sum(1, keepdims=True) for m in cms], 0))
    np.testing.assert_allclose(image.sum(1), 1.0)
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    mnist = report.plot_confusion(
        report.load_run(fake_run(tmp_path, "m", "ce", embedding=False)) | {"seed": 0},
        str(tmp_path / "m.png"),
    )
    assert _texts(mnist.axes[0].get_xticklabels()) == [str(d) for d in range(10)]
    counts = list(range(200, 170, -1))  # 30 classes of an unknown dataset: sparse numbers
    wide = fake_run(tmp_path, "w", "ce", dataset="folder", counts=counts, embedding=False)
    ticks = _texts(
        report.plot_confusion(report.load_run(wide), str(tmp_path / "w.png"))
        .axes[0]
        .get_xticklabels()
    )
    assert 2 < len(ticks) < 15 and all(t.isdigit() for t in ticks)


def test_report_md_has_the_command_and_a_caption_under_every_figure(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "ce_k2", "ce", seeds=(0, 1))
    fake_run(root, "gcl_s0", "gcl+retrain", embedding=False)
    out = tmp_path / "out"
    report.main([str(root / "*"), "--out", str(out)])
    lines = (out / "report.md").read_text().splitlines()
    command = f"python -m lt_jax.report '{root}/*' --out {out}"
    assert command in lines[:8]
    figures = [i for i, line in enumerate(lines) if line.startswith("![")]
    names = sorted(p.name for p in out.glob("*.png"))
    assert sorted(lines[i].split("(")[1].rstrip(")") for i in figures) == names
    assert len(names) == 5  # accuracy, norms, ce: embedding + confusion, gcl: confusion
    for n, i in enumerate(figures, 1):
        assert lines[i + 1] == "" and lines[i + 2].startswith(f"*Figure {n}. ")
    caption = {lines[i][2:].split("]")[0]: lines[i + 2] for i in figures}
    assert "min-max" in caption["per_class_accuracy.png"]
    assert "seed 0 only" in caption["embedding_00_ce.png"]
    assert "row-normalised" in caption["confusion_00_ce.png"]
    assert "seeds (0, 1)" in caption["confusion_00_ce.png"]
    assert "seed 0" in caption["confusion_01_gcl_plus_gcl_retrain.png"]
    # Again into the same folder with GCL alone, now the first method: the figures of the
    # first report that this one does not write are removed, other files are left alone.
    (out / "notes.png").write_bytes(b"mine")
    report.main([str(root / "gcl_s0"), "--out", str(out)])
    assert sorted(p.name for p in out.glob("*.png")) == [
        "confusion_00_gcl_plus_gcl_retrain.png",
        "feature_norms.png",
        "notes.png",
        "per_class_accuracy.png",
    ]


def test_groups_of_one_method_that_differ_in_epochs_get_their_own_name_and_style(tmp_path):
    a = fake_run(tmp_path, "a", "ce", embedding=False)
    b = fake_run(tmp_path, "b", "ce", embedding=False)
    config = json.load(open(os.path.join(b, "config.json")))
    json.dump({**config, "epochs": 30}, open(os.path.join(b, "config.json"), "w"))
    fig = report.plot_per_class_accuracy(_groups([a, b]), str(tmp_path / "acc.png"))
    lines = _method_lines(fig.axes[0])
    assert [line.get_label() for line in lines] == ["ce (2 epochs)", "ce (30 epochs)"]
    assert lines[0].get_color() != lines[1].get_color()
