"""lt_jax.sweep runs a methods x seeds grid; lt_jax.report summarises it."""

import json
import os

import numpy as np
import pytest

from lt_jax import report, sweep

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _sweep(root, methods, seeds):
    sweep.main(
        [
            "--config",
            os.path.join(ROOT, "configs", "default.py"),
            "--root",
            str(root),
            "--methods",
            methods,
            "--seeds",
            seeds,
            "--args",
            "runlocal",
        ]
    )


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    _sweep(root, "ce", "0,1")
    _sweep(root, "gcl", "0")
    return root


def test_sweep_layout_and_skip(sweep_root):
    assert sorted(os.listdir(sweep_root)) == ["ce_s0", "ce_s1", "gcl_s0"]
    before = os.path.getmtime(sweep_root / "ce_s0" / "results.json")
    _sweep(sweep_root, "ce", "0")
    assert os.path.getmtime(sweep_root / "ce_s0" / "results.json") == before


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
