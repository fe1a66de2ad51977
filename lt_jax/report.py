"""Compares finished runs: ``python -m lt_jax.report RUN_DIR [RUN_DIR ...] --out DIR``.

Reads each workdir's ``config.json`` and ``results.json``, groups runs that differ
only in the seed, and writes ``DIR/report.md`` (method, dataset, IF, overall /
many / medium / few for the final epoch (the headline) and the best epoch,
mean +- std over seeds, wall time, hardware, command) and PNG figures:
per-class accuracy against training count, per-class mean feature norm, a 2-D
PCA embedding of test features (head vs tail), and confusion matrices.
Run directories may be globs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from collections import defaultdict

import numpy as np

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
    workdir's other records; its wall time is the workdir's divided by K."""
    per_seed = run["results"].get("per_seed", [])
    if len(per_seed) <= 1:
        return [run]
    wall = run["results"].get("wall_time_s", np.nan) / len(per_seed)
    return [
        {**run, "results": {**run["results"], "final": r["final"],
                            "best_epoch": r["best_epoch"], "wall_time_s": wall}}
        for r in per_seed
        if not r.get("diverged")
    ]  # fmt: skip


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


def _save(fig, ax, path, legend=True) -> None:
    if legend:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)


def plot_per_class_accuracy(groups: dict, path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (label, *_), runs in groups.items():
        counts = np.asarray(runs[0]["results"]["train_class_counts"])
        acc = np.nanmean(
            [
                [np.nan if a is None else a for a in r["results"]["final"]["per_class_accuracy"]]
                for r in runs
            ],
            axis=0,
        )
        order = np.argsort(-counts)
        ax.plot(counts[order], 100 * acc[order], marker="o", ms=3, label=label)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set(
        xlabel="training images of the class (log)",
        ylabel="test accuracy (%)",
        title="Per-class accuracy, final epoch, mean over seeds",
    )
    _save(fig, ax, path)


def plot_feature_norms(groups: dict, path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (label, *_), runs in groups.items():
        norms = [r["results"]["stage1"]["final"].get("feature_norm_per_class") for r in runs]
        norms = [n for n in norms if n]
        if not norms:
            continue
        counts = np.asarray(runs[0]["results"]["train_class_counts"])
        order = np.argsort(-counts)
        mean = np.nanmean(np.asarray(norms, np.float64), axis=0)
        ax.plot(np.arange(len(order)), mean[order], marker="o", ms=3, label=label)
    ax.set(
        xlabel="class, most to least frequent",
        ylabel="mean feature norm |f| (test)",
        title="Per-class feature norm of the stage-1 backbone",
    )
    _save(fig, ax, path)


def plot_embedding(run: dict, path: str) -> bool:
    files = sorted(glob.glob(os.path.join(run["workdir"], "embedding_stage*.npz")))
    if not files:
        return False
    data = np.load(files[-1])
    counts = np.asarray(run["results"]["train_class_counts"])
    rank = np.argsort(np.argsort(-counts))  # 0 = head
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    sc = ax.scatter(*data["coords"].T, c=rank[data["labels"]], cmap="coolwarm", s=4)
    fig.colorbar(sc, ax=ax, label="class frequency rank (0 = head)")
    ax.set(title=f"PCA of test features: {run_label(run['config'])}", xticks=[], yticks=[])
    _save(fig, ax, path, legend=False)
    return True


def plot_confusion(run: dict, path: str) -> None:
    m = np.asarray(run["results"]["final"]["confusion_matrix"], np.float64)
    m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion: {run_label(run['config'])}")
    _save(fig, ax, path, legend=False)


def write_report(run_dirs: list[str], out: str) -> str:
    dirs = sorted({d for pattern in run_dirs for d in (glob.glob(pattern) or [pattern])})
    runs = [r for d in dirs for r in seed_runs(load_run(d))]
    if not runs:
        raise ValueError("no run directories given")
    groups = group_runs(runs)
    os.makedirs(out, exist_ok=True)
    plot_per_class_accuracy(groups, os.path.join(out, "per_class_accuracy.png"))
    plot_feature_norms(groups, os.path.join(out, "feature_norms.png"))
    figures = ["per_class_accuracy.png", "feature_norms.png"]
    for i, ((label, *_), group) in enumerate(groups.items()):
        slug = f"{i:02d}_{label.replace(' ', '_').replace('+', 'plus')}"
        if plot_embedding(group[0], os.path.join(out, f"embedding_{slug}.png")):
            figures.append(f"embedding_{slug}.png")
        plot_confusion(group[0], os.path.join(out, f"confusion_{slug}.png"))
        figures.append(f"confusion_{slug}.png")
    text = [
        "# lt_jax results",
        "",
        "Final-epoch accuracy is the headline; the best test epoch is shown for comparison with",
        "papers that report it (the published column is their best epoch). Mean ± sample",
        "std over seeds, in %.",
        "",
        markdown_table(groups),
        "",
        "Runs: " + ", ".join(r["workdir"] for r in runs),
        "",
    ]
    text += [f"![{f}]({f})" for f in figures]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(text) + "\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished workdirs (globs allowed)")
    parser.add_argument("--out", default="report", help="output folder")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.runs, args.out)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"lt_jax.report: error: {e}") from None
    print(open(path).read())


if __name__ == "__main__":
    main()
