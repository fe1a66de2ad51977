"""The command line a new user meets: --help, --print_config, close matches, data_dir errors."""

import json
import os
import subprocess
import sys

import jax
import pytest

from lt_jax import catalog, cli, config_lib, methods, stage2
from lt_jax.data import datasets
from tests import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, XLA_FLAGS=xla_flags(1))


def _run(module, *args):
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=ENV,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_catalog_lists_exactly_the_registered_names():
    assert set(catalog.METHODS) == set(methods.METHODS)
    assert set(catalog.STAGE2_PRESETS) == {"auto", *config_lib.STAGE2_PRESETS}
    assert set(catalog.STAGE2_MODES) == set(stage2.MODES)
    assert set(catalog.DATASETS) == set(datasets.DATASETS)


def test_help_exits_0_and_lists_methods_modes_datasets_and_config_files():
    out = _run("lt_jax.main", "--help")
    assert out.returncode == 0, out.stderr
    for name in (*methods.METHODS, *config_lib.STAGE2_PRESETS, *datasets.DATASETS):
        assert f"\n  {name} " in out.stdout, name
    for f in ("configs/default.py", "configs/cifar_lt.py", "configs/imagenet_lt.py"):
        assert f in out.stdout
    assert "--print_config" in out.stdout and "--workdir" in out.stdout


def test_help_with_a_config_lists_its_arguments_and_defaults():
    out = _run("lt_jax.main", "--config", "configs/cifar_lt.py:method=fbl", "-h")
    assert out.returncode == 0, out.stderr
    # The defaults written in configs/cifar_lt.py's parse_arg call.
    for text in ("dataset='cifar10'", "imb=100.0", "method='gcl'", "epochs=200", "split_seed=-1"):
        assert text in out.stdout, text
    assert "split_protocol (release|per_class)" in out.stdout  # the docstring's explanation


def test_config_arguments_reads_parse_arg_defaults_without_building_the_config():
    def get_config(arg=None):
        a = config_lib.parse_arg(arg, alpha=1.5, name="x", flag=False)
        raise AssertionError(f"went on past parse_arg with {a}")

    assert config_lib.config_arguments(get_config) == {"alpha": 1.5, "name": "x", "flag": False}
    assert config_lib.config_arguments(lambda arg=None: None) == {}
    # Capturing is switched off again afterwards.
    assert config_lib.parse_arg("alpha=2", alpha=1.5).alpha == 2.0


def test_print_config_prints_the_resolved_config_without_a_workdir(tmp_path):
    out = _run(
        "lt_jax.main", "--config", "configs/cifar_lt.py:method=fbl,epochs=20", "--print_config"
    )
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)
    # The 200-epoch recipe stretched to 20 by hand: decays at 160/180 -> 16/18, warm-up 5 ->
    # 0.5, which rounds to 0 but a switch never moves onto epoch 0 -> 1; FBL's curriculum
    # t = (e / (200 - 10))^2 -> total 20, offset 1.
    assert config["epochs"] == 20 and config["method"] == "fbl"
    assert list(config["lr_boundaries"]) == [16, 18] and config["warmup_epochs"] == 1
    assert config["loss"]["total_epochs"] == 20 and config["loss"]["offset"] == 1
    assert "recipe_epochs" not in config  # helper keys are gone, as in config.json
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("--config.learning_rate=0.1", "did you mean --config.lr"),
        ("--config.stage2.epoch=3", "did you mean --config.stage2.epochs"),
        ("--config.weight_decay=0.1", "did you mean --config.wd"),
    ],
)
def test_misspelt_override_is_one_line_with_the_closest_keys(tmp_path, override, suggestion):
    out = _run(
        "lt_jax.main", "--config", "configs/default.py", override, "--workdir", str(tmp_path)
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and suggestion in out.stderr, out.stderr


def test_unknown_names_suggest_close_matches():
    with pytest.raises(ValueError, match=r"unknown method 'gcll' \(did you mean 'gcl'\?\)"):
        config_lib.loss_config("gcll", 200)
    err = config_lib.unknown("stage2 preset", "tau-norm", config_lib.STAGE2_PRESETS)
    assert "did you mean 'tau_norm'?" in str(err)
    assert "did you mean" not in str(config_lib.unknown("method", "zzzz", methods.METHODS))


def test_missing_workdir_is_a_usage_error():
    out = _run("lt_jax.main", "--config", "configs/default.py")
    assert out.returncode == 2 and "--workdir is missing" in out.stderr, out.stderr


def test_config_spec_parsing():
    assert cli.config_spec(["x", "--config", "c/a.py:m=1,e=2"]) == ("c/a.py", "m=1,e=2")
    assert cli.config_spec(["x", "--config=c/a.py"]) == ("c/a.py", "")
    assert cli.config_spec(["x", "--workdir", "w"]) is None


def test_compilation_cache_is_keyed_by_cpu_and_can_be_turned_off(tmp_path, monkeypatch):
    script = (
        "import jax, jax.numpy as jnp\n"
        "from lt_jax import cli\n"
        "print(cli.enable_compilation_cache())\n"
        "jax.jit(lambda x: jnp.sin(x) * 3)(jnp.ones(7)).block_until_ready()\n"
    )
    env = dict(ENV, LT_JAX_CACHE=str(tmp_path))

    def run(**extra):
        out = subprocess.run([sys.executable, "-c", script], env={**env, **extra},
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    folder = run()
    assert folder.startswith(str(tmp_path / "xla")) and os.listdir(folder)  # programs written
    assert run() == folder  # the same host: the same folder
    assert run(LT_JAX_COMPILATION_CACHE="0") == "None"
    # Another CPU (or jax version) gets another folder.
    from lt_jax.models import native

    original = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setattr(native, "_cpu_identity", lambda: "x86_64 flags: sse2")
        monkeypatch.setenv("LT_JAX_CACHE", str(tmp_path))
        other = cli.enable_compilation_cache()
    finally:
        jax.config.update("jax_compilation_cache_dir", original)
    assert other != folder and os.path.dirname(other) == os.path.dirname(folder)
