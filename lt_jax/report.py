"""Compares finished runs: ``python -m lt_jax.report RUN_DIR [RUN_DIR ...] --out DIR``.

Reads each workdir's ``config.json`` and ``results.json``, groups runs that differ
only in the seed, and writes ``DIR/report.md`` (the command that made it; method, dataset,
IF, overall / many / medium / few for the final epoch (the headline) and the best epoch,
mean +- std over seeds, wall time, hardware; a caption under every figure) and PNG
figures: per-class accuracy and per-class mean feature norm with classes ordered head to
tail (mean over seeds, min-max band, shot-group boundaries), a 2-D PCA embedding of test
features (one colour per class) and row-normalised confusion matrices (class names where
the dataset's are known). Every method keeps one colour / line style / marker in all
figures. Run directories may be globs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import sys
import warnings
from collections import defaultdict

import numpy as np

from lt_jax.data import longtail

GROUP_KEYS = ("top1", "many", "medium", "few")

# Published top-1 (%) to put beside a result: (method label, dataset, IF) -> (value, source).
# The papers report their best test epoch. Spec section 7, and the LDAM-DRW paper's ERM row
# (Cao et al. 2019, Table 2: 29.64 / 61.68 top-1 error) for plain cross-entropy.
PUBLISHED = {
    ("fbl", "cifar10_lt", 100.0): (82.46, "FBL"),
    ("fbl", "cifar100_lt", 100.0): (45.22, "FBL"),
    ("ldam_drw", "cifar10_lt", 100.0): (77.03, "LDAM-DRW"),
    ("ldam_drw", "cifar100_lt", 100.0): (42.04, "LDAM-DRW"),
    ("cb_focal", "cifar10_lt", 100.0): (74.57, "CB focal"),
    ("cb_focal", "cifar100_lt", 100.0): (39.60, "CB focal"),
    ("ce", "cifar10_lt", 100.0): (70.36, "LDAM-DRW paper, ERM"),
    ("ce", "cifar100_lt", 100.0): (38.32, "LDAM-DRW paper, ERM"),
}


# Class names in label order, for the datasets whose order lt_jax fixes (the source's own
# label order; MNIST-LT and CIFAR-LT are never re-indexed). Others are shown as numbers.
CLASS_NAMES = {
    "mnist_lt": tuple(str(d) for d in range(10)),
    "cifar10_lt": ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"),
}  # fmt: skip
DATASET_TITLES = {
    "mnist_lt": "MNIST-LT",
    "cifar10_lt": "CIFAR-10-LT",
    "cifar100_lt": "CIFAR-100-LT",
    "imagenet_lt": "ImageNet-LT",
    "places_lt": "Places-LT",
    "inat2018": "iNaturalist 2018",
}
MAX_LABELLED_CLASSES = 20  # above this, sparse numeric class ticks
# Method styles: colour i % 10 (matplotlib's tab10), line style i // 10, marker i % 7, so
# 40 methods get distinct (colour, line style) pairs and two of one colour differ in both.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
SHOT_LABELS = {
    "paper": {"many": "many (>100)", "medium": "medium (20-100)", "few": "few (<20)"},
    "oltr": {"many": "many (≥100)", "medium": "medium (21-99)", "few": "few (≤20)"},
}
DPI = 150


def load_run(workdir: str) -> dict:
    paths = {n: os.path.join(workdir, f"{n}.json") for n in ("config", "results")}
    for path in paths.values():
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: {workdir} is not a finished lt_jax run")
    with open(paths["config"]) as f:
        config = json.load(f)
    with open(paths["results"]) as f:
        results = json.load(f)
    return {"workdir": workdir, "config": config, "results": results}


def seed_runs(run: dict) -> list[dict]:
    """A workdir trained with ``num_seeds`` K > 1 as K runs (one per seed that did not
    diverge), so that groups average over seeds wherever they came from. Each keeps the
    workdir's other records (its ``stage1`` the seed's own final evaluation where recorded)
    and its ``seed``; its wall time is the workdir's divided by K."""
    per_seed = run["results"].get("per_seed", [])
    if len(per_seed) <= 1:
        seed = per_seed[0]["seed"] if per_seed else run["config"].get("seed", 0)
        return [{**run, "seed": seed}]
    wall = run["results"].get("wall_time_s", np.nan) / len(per_seed)
    stage1 = run["results"].get("stage1", {})
    stage1_finals = {r["seed"]: r["final"] for r in stage1.get("per_seed", [])}
    out = []
    for r in per_seed:
        if r.get("diverged"):
            continue
        results = {
            **run["results"],
            "final": r["final"],
            "best_epoch": r["best_epoch"],
            "wall_time_s": wall,
        }
        if r["seed"] in stage1_finals:
            results["stage1"] = {**stage1, "final": stage1_finals[r["seed"]]}
        out.append({**run, "seed": r["seed"], "results": results})
    return out


def run_label(config: dict) -> str:
    stage2 = config.get("stage2", {}).get("mode", "none")
    label = config["method"]
    if stage2 != "none":
        label += f" + {config['stage2'].get('method', '')} {stage2}".rstrip()
    return label


def group_runs(runs: list[dict]) -> dict[tuple, list[dict]]:
    """Runs with the same method, stage 2, dataset, IF and epochs; seeds vary."""
    groups = defaultdict(list)
    for run in runs:
        c = run["config"]
        key = (run_label(c), c["dataset"]["name"], c["dataset"]["imb_factor"], c["epochs"])
        groups[key].append(run)
    return dict(sorted(groups.items(), key=lambda kv: kv[0]))


def _mean_std(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    v = 100 * np.asarray(values, np.float64)
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def markdown_table(groups: dict) -> str:
    head = (
        "| method | dataset | IF | epochs | seeds | top-1 (final) | many | medium | few "
        "| top-1 (best epoch) | published | wall time / run | hardware |"
    )
    lines = [head, "|" + "---|" * 13]
    for (label, dataset, imb, epochs), runs in groups.items():
        finals = [r["results"]["final"] for r in runs]
        bests = [r["results"]["best_epoch"] for r in runs]
        wall = np.mean([r["results"].get("wall_time_s", np.nan) for r in runs])
        cells = [label, dataset, f"{imb:g}", str(epochs), str(len(runs))]
        cells += [_mean_std([f[k] for f in finals]) for k in GROUP_KEYS]
        # Beside the papers' own schedule only (the CIFAR recipes are 200 epochs).
        published = PUBLISHED.get((label, dataset, float(imb))) if epochs == 200 else None
        cells += [
            _mean_std([b["top1"] for b in bests]),
            f"{published[0]:.2f}" if published else "-",
            f"{wall:.0f} s",
            runs[0]["results"]["devices"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    """Writes ``fig`` (legends outside the axes included) and closes it; the returned
    figure object stays inspectable."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _plt().close(fig)


def method_styles(labels) -> dict[str, dict]:
    """Colour, line style and marker of every method label, in the given order: distinct
    (colour, line style) pairs for up to 40 methods."""
    return {
        label: {
            "color": COLORS[i % len(COLORS)],
            "linestyle": LINESTYLES[(i // len(COLORS)) % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)],
        }
        for i, label in enumerate(dict.fromkeys(labels))
    }


def group_names(groups: dict) -> dict[tuple, str]:
    """Each group's name in the figures: its method label, plus the IF / epochs where
    groups of one label differ in them (datasets get their own panels)."""
    keys_of = defaultdict(list)
    for key in groups:
        keys_of[key[0]].append(key)
    names = {}
    for label, keys in keys_of.items():
        for key in keys:
            extra = [f"IF {key[2]:g}"] if len({k[2] for k in keys}) > 1 else []
            extra += [f"{key[3]} epochs"] if len({k[3] for k in keys}) > 1 else []
            names[key] = f"{label} ({', '.join(extra)})" if extra else label
    return names


def class_names(dataset: str, num_classes: int) -> list[str] | None:
    """The class names of ``dataset`` in label order, or None where unknown."""
    names = CLASS_NAMES.get(dataset)
    return list(names) if names is not None and len(names) == num_classes else None


def dataset_title(dataset: str) -> str:
    return DATASET_TITLES.get(dataset, dataset)


def _seeds_text(runs: list[dict]) -> str:
    seeds = sorted({r.get("seed", r["config"].get("seed", 0)) for r in runs})
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"mean of {len(seeds)} seeds ({', '.join(str(s) for s in seeds)})"


def _shot_convention(run: dict) -> str:
    conv = run["results"]["final"].get("shot_convention") or run["config"].get("shot_convention")
    return conv if conv in SHOT_LABELS else "paper"


def _per_class_values(runs: list[dict], get) -> np.ndarray | None:
    """(seeds, classes) float array of ``get(results)`` (None -> NaN) over the runs that
    recorded it, or None if none did."""
    rows = [get(r["results"]) for r in runs]
    rows = [[np.nan if v is None else v for v in row] for row in rows if row]
    return np.asarray(rows, np.float64) if rows else None


def _class_ticks(num_classes: int) -> np.ndarray:
    if num_classes <= MAX_LABELLED_CLASSES:
        return np.arange(num_classes)
    from matplotlib.ticker import MaxNLocator

    ticks = MaxNLocator(nbins=10, integer=True).tick_values(0, num_classes - 1)
    return np.unique(np.clip(ticks, 0, num_classes - 1).astype(int))


def _class_axis(ax, dataset: str, counts, convention: str, headroom: float) -> None:
    """Classes ranked by training images (head left) on the x axis: their names (or ids),
    the training count on a top axis, and the shot-group boundaries with group labels in a
    strip above ``headroom`` (data y)."""
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    n = len(counts)
    ticks = _class_ticks(n)
    if n <= MAX_LABELLED_CLASSES:
        names = class_names(dataset, n) or [str(c) for c in range(n)]
        labels = [names[c] for c in order]
        rotate = max(len(s) for s in labels) > 2
        ax.set_xticks(
            ticks, labels, rotation=45 if rotate else 0, ha="right" if rotate else "center"
        )
        ax.set_xlabel("class (most to fewest training images)")
    else:
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("class rank by training images (0 = most)")
    ax.set_xlim(-0.5, n - 0.5)
    top = ax.secondary_xaxis("top")
    top.set_xticks(ticks, [str(counts[order][t]) for t in ticks], fontsize=7)
    top.set_xlabel("training images of the class", fontsize=8)
    groups = longtail.shot_groups(counts[order], convention=convention)
    starts = [0] + [i for i in range(1, n) if groups[i] != groups[i - 1]] + [n]
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        if a > 0:
            ax.axvline(a - 0.5, color="0.35", linestyle=(0, (4, 3)), linewidth=0.9, zorder=1)
        ax.text(
            (a + b - 1) / 2,
            headroom,
            SHOT_LABELS[convention][groups[a]],
            ha="center",
            va="bottom",
            fontsize=7.5,
            color="0.25",
        )


def _outside_legend(ax, handles, title=None, fontsize=7.5) -> None:
    ncol = 1 if len(handles) <= 22 else 2
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize=fontsize,
        title=title,
        title_fontsize=fontsize,
        ncol=ncol,
        frameon=False,
        handlelength=3.0,
    )


def _plot_per_class(
    groups: dict, path: str, get, *, ylabel: str, title: str, scale: float, ylim=None
):
    """One panel per (dataset, class counts): every method's per-class mean over seeds
    (line) and min-max (band), classes head to tail. Returns the figure, or None if no
    group recorded ``get``."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = group_names(groups)
    panels = defaultdict(list)
    for key, runs in groups.items():
        values = _per_class_values(runs, get)
        if values is not None:
            counts = tuple(runs[0]["results"]["train_class_counts"])
            panels[(key[1], counts)].append((names[key], runs, scale * values))
    if not panels:
        return None
    styles = method_styles(names.values())
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 4.6 * len(panels)), squeeze=False)
    banded = False
    for ax, ((dataset, counts), entries) in zip(axes[:, 0], panels.items(), strict=True):
        order = np.argsort(-np.asarray(counts), kind="stable")
        x = np.arange(len(counts))
        every = max(1, len(counts) // 20)
        lo_all, hi_all = [], []
        for label, _, values in entries:
            v = values[:, order]
            with warnings.catch_warnings():  # a class no seed has a value for stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, lo, hi = np.nanmean(v, 0), np.nanmin(v, 0), np.nanmax(v, 0)
            style = styles[label]
            ax.plot(x, mean, lw=1.4, ms=4, markevery=every, label=label, zorder=3, **style)
            if len(v) > 1:
                ax.fill_between(x, lo, hi, color=style["color"], alpha=0.13, lw=0, zorder=2)
                banded = True
            lo_all.append(np.nanmin(lo))
            hi_all.append(np.nanmax(hi))
        if ylim is None:
            bottom, top = np.nanmin(lo_all), np.nanmax(hi_all)
            pad = 0.05 * (top - bottom or 1.0)
            bottom, top = bottom - pad, top + pad
        else:
            bottom, top = ylim
        strip = top + 0.1 * (top - bottom)
        ax.set_ylim(bottom, top + 0.16 * (top - bottom))
        ax.set_yticks([t for t in ax.get_yticks() if bottom <= t <= top])
        ax.grid(axis="y", color="0.9", linewidth=0.7, zorder=0)
        conv = _shot_convention(entries[0][1][0])
        _class_axis(ax, dataset, counts, conv, strip)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n{dataset_title(dataset)}", fontsize=10)
    handles = [
        Line2D([], [], lw=1.4, ms=4, label=label, **style)
        for label, style in styles.items()
        if any(label == e[0] for entries in panels.values() for e in entries)
    ]
    if banded:
        handles.append(Patch(color="0.5", alpha=0.3, lw=0, label="min-max over seeds"))
    _outside_legend(axes[0, 0], handles, title="method")
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_per_class_accuracy(groups: dict, path: str):
    return _plot_per_class(
        groups,
        path,
        lambda res: res["final"].get("per_class_accuracy"),
        ylabel="test accuracy of the class (%)",
        title="Per-class test accuracy, final epoch (mean over seeds)",
        scale=100.0,
        ylim=(-3.0, 103.0),
    )


def plot_feature_norms(groups: dict, path: str):
    return _plot_per_class(
        groups,
        path,
        lambda res: res.get("stage1", {}).get("final", {}).get("feature_norm_per_class"),
        ylabel="mean feature norm ‖f‖ of test images",
        title="Per-class feature norm of the stage-1 backbone, final epoch (mean over seeds)",
        scale=1.0,
    )


def _class_palette(num_classes: int):
    """One colour per frequency rank (0 = head)."""
    plt = _plt()
    if num_classes <= 10:
        return [plt.get_cmap("tab10")(r) for r in range(num_classes)]
    if num_classes <= 20:
        return [plt.get_cmap("tab20")(r) for r in range(num_classes)]
    return [plt.get_cmap("viridis")(r / (num_classes - 1)) for r in range(num_classes)]


def plot_embedding(run: dict, path: str, name: str | None = None) -> dict | None:
    """The PCA of the last stage's test features that the run saved (its first seed):
    every class its own colour. Returns what the caption needs, or None if not saved."""
    files = sorted(glob.glob(os.path.join(run["workdir"], "embedding_stage*.npz")))
    if not files:
        return None
    from matplotlib.lines import Line2D

    data = np.load(files[-1])
    stage = re.sub(r"stage(\d+)", r"stage \1", os.path.basename(files[-1])[10:-4])
    coords, labels = np.asarray(data["coords"]), np.asarray(data["labels"])
    ratio = data["explained_variance_ratio"] if "explained_variance_ratio" in data else None
    counts = np.asarray(run["results"]["train_class_counts"])
    n = len(counts)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty(n, int)
    rank[order] = np.arange(n)
    palette = _class_palette(n)
    dataset = run["config"]["dataset"]["name"]
    names = class_names(dataset, n) or [str(c) for c in range(n)]
    seed = run["config"].get("seed", 0)  # the workdir's first seed (lt_jax.loop)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 5.2))
    shuffle = np.random.default_rng(0).permutation(len(labels))  # no class drawn on top
    colors = np.asarray([palette[rank[c]] for c in labels[shuffle]])
    ax.scatter(*coords[shuffle].T, c=colors, s=6, alpha=0.75, linewidths=0)
    ax.set_aspect("equal", adjustable="datalim")
    for i, axis in enumerate("xy"):
        text = f"PC {i + 1}" + (
            f" ({100 * ratio[i]:.1f}% of variance)" if ratio is not None else ""
        )
        getattr(ax, f"set_{axis}label")(text)
    ax.set_title(
        f"PCA of test features: {name or run_label(run['config'])}\n"
        f"{dataset_title(dataset)}, {stage} model, final epoch, seed {seed}",
        fontsize=10,
    )
    if n <= MAX_LABELLED_CLASSES:
        handles = [
            Line2D(
                [], [], ls="", marker="o", ms=5, color=palette[r], label=f"{names[c]} ({counts[c]})"
            )
            for r, c in enumerate(order)
        ]
        _outside_legend(ax, handles, title="class (training images)")
    else:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        sm = ScalarMappable(Normalize(0, n - 1), plt.get_cmap("viridis"))
        fig.colorbar(sm, ax=ax, label="class rank by training images (0 = most)")
    fig.tight_layout()
    _save(fig, path)
    return {
        "stage": stage,
        "seed": seed,
        "points": len(labels),
        "variance": ratio is not None,
        "figure": fig,
    }


def plot_confusion(runs: list[dict] | dict, path: str, name: str | None = None):
    """The final-epoch confusion matrix, row-normalised (each row: the fraction of the true
    class's test images given each prediction), averaged over the runs' seeds."""
    runs = [runs] if isinstance(runs, dict) else runs
    mats = []
    for r in runs:
        m = np.asarray(r["results"]["final"]["confusion_matrix"], np.float64)
        mats.append(m / np.maximum(m.sum(axis=1, keepdims=True), 1))
    m = np.mean(mats, axis=0)
    n = len(m)
    dataset = runs[0]["config"]["dataset"]["name"]
    names = class_names(dataset, n)
    plt = _plt()
    side = 4.6 if n <= 10 else 6.5
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = _class_ticks(n)
    labels = [names[t] if names else str(t) for t in ticks]
    rotate = max(len(s) for s in labels) > 2
    ax.set_xticks(ticks, labels, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(ticks, labels)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                if m[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        color="white" if m[i, j] > 0.55 else "0.15",
                    )
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(
        f"Confusion matrix (row-normalised): {name or run_label(runs[0]['config'])}\n"
        f"{dataset_title(dataset)}, final epoch, {_seeds_text(runs)}",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)
    return fig


def _remove_stale_figures(out: str, written: set[str]) -> None:
    """Removes the per-method figures (``embedding_NN_*.png``, ``confusion_NN_*.png``) of an
    earlier report in ``out`` that this one did not write: with other runs, or the same runs
    in another order, their numbers would name other methods, and report.md no longer shows
    them."""
    for path in glob.glob(os.path.join(out, "*.png")):
        name = os.path.basename(path)
        if re.fullmatch(r"(embedding|confusion)_\d\d_.+\.png", name) and name not in written:
            os.remove(path)


def _slug(i: int, label: str) -> str:
    return f"{i:02d}_{label.replace(' ', '_').replace('+', 'plus')}"


def _seed_of(run: dict) -> int:
    return run.get("seed", run["config"].get("seed", 0))


def write_report(run_dirs: list[str], out: str, command: str | None = None) -> str:
    """Writes ``out/report.md`` and its figures; ``command`` (default: the equivalent
    ``python -m lt_jax.report`` line) heads the report."""
    dirs = sorted({d for pattern in run_dirs for d in (glob.glob(pattern) or [pattern])})
    runs = [r for d in dirs for r in seed_runs(load_run(d))]
    if not runs:
        raise ValueError("no run directories given")
    groups = {k: sorted(v, key=_seed_of) for k, v in group_runs(runs).items()}
    if command is None:
        command = shlex.join(["python", "-m", "lt_jax.report", *run_dirs, "--out", out])
    os.makedirs(out, exist_ok=True)
    conventions = sorted({_shot_convention(r) for r in runs})
    shots = "; ".join(
        ", ".join(SHOT_LABELS[c].values()) + f" training images ({c} convention)"
        for c in conventions
    )
    multi = any(len(g) > 1 for g in groups.values())
    spread = (
        "Lines are the mean over each method's seeds, the shaded band their min-max "
        "(seeds per method: table)."
        if multi
        else "One seed per method (no spread shown)."
    )
    order = "Classes are ordered from most to fewest training images (counts on the top axis)"
    figures = []  # (file, caption)
    plot_per_class_accuracy(groups, os.path.join(out, "per_class_accuracy.png"))
    figures.append(
        (
            "per_class_accuracy.png",
            f"Test accuracy of every class at the final epoch, one line per method. {order}; "
            f"dashed verticals separate the shot groups: {shots}. {spread}",
        )
    )
    if plot_feature_norms(groups, os.path.join(out, "feature_norms.png")) is not None:
        figures.append(
            (
                "feature_norms.png",
                "Mean L2 norm of the stage-1 backbone features of each class's test images at "
                f"the final epoch. {order}, shot groups as in the accuracy figure. {spread}",
            )
        )
    names = group_names(groups)
    for i, (key, group) in enumerate(groups.items()):
        label, slug = names[key], _slug(i, key[0])
        emb = None
        for run in group:  # the lowest seed whose workdir saved an embedding
            emb = plot_embedding(run, os.path.join(out, f"embedding_{slug}.png"), label)
            if emb is not None:
                break
        if emb is not None:
            variance = (
                "axes give each component's share of the feature variance"
                if emb["variance"]
                else "the run did not record the components' share of the variance"
            )
            figures.append(
                (
                    f"embedding_{slug}.png",
                    f"2-D PCA projection of {emb['points']} test-image features of {label}: "
                    f"{emb['stage']} model, final epoch, seed {emb['seed']} only. One colour per "
                    f"class (legend: class and its training images); {variance}.",
                )
            )
        plot_confusion(group, os.path.join(out, f"confusion_{slug}.png"), label)
        figures.append(
            (
                f"confusion_{slug}.png",
                f"Confusion matrix of {label} on the test set at the final epoch, row-normalised: "
                "each row gives the fraction of that true class's test images predicted as each "
                f"class (the diagonal is per-class accuracy); {_seeds_text(group)}.",
            )
        )
    _remove_stale_figures(out, {name for name, _ in figures})
    text = [
        "# lt_jax results",
        "",
        "Produced by:",
        "",
        "```bash",
        command,
        "```",
        "",
        "Final-epoch accuracy is the headline; the best test epoch is shown for comparison with",
        "papers that report it (the published column is their best epoch). Mean ± sample",
        "std over seeds, in %.",
        "",
        markdown_table(groups),
        "",
        "Runs: " + ", ".join(dict.fromkeys(r["workdir"] for r in runs)),
        "",
    ]
    for n, (f, caption) in enumerate(figures, 1):
        text += [f"![{f}]({f})", "", f"*Figure {n}. {caption}*", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(text).rstrip("\n") + "\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished workdirs (globs allowed)")
    parser.add_argument("--out", default="report", help="output folder")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "lt_jax.report", *argv])
    try:
        path = write_report(args.runs, args.out, command=command)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"lt_jax.report: error: {e}") from None
    print(open(path).read())


if __name__ == "__main__":
    main()
