"""examples/ runs as documented."""

import importlib.util
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "examples", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ga_example_trains_and_ga_is_the_identity_before_its_start(capsys):
    ga = _example("ga_optax")
    # GA never starts: the transform must pass every update through unchanged, so both
    # runs (same initialisation, same batches) end with the same predictions.
    off = ga.main(["--steps", "40", "--ga-start", "1000000"])
    np.testing.assert_array_equal(off["SGD"], off["SGD + GA"])
    on = ga.main(["--steps", "40", "--ga-start", "0"])
    for acc in on.values():
        assert acc.shape == (10,) and 0.3 < acc.mean() <= 1.0  # it trains (10 classes: 0.1 chance)
    out = capsys.readouterr().out
    assert "GA inhibit ratio r_j per class" in out and "MNIST-LT training counts" in out
