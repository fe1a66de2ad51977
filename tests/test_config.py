"""Config files and ``config_lib.resolve``: one run per setting, whatever its spelling.

``configs/x.py:epochs=N`` and ``--config.epochs=N`` (set after ``get_config``) must give
the same resolved config; the expected numbers below are written by hand from the
recipes (they are what the configs gave before epoch numbers were resolved at run time).
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from lt_jax import config_lib

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = ("cifar_lt", "default", "imagenet_lt", "places_lt")


@functools.cache
def _module(name):
    spec = importlib.util.spec_from_file_location(
        f"lt_jax_test_config_{name}", os.path.join(ROOT, "configs", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(name, arg=None):
    return _module(name).get_config(arg)


def resolved(name, arg=None):
    return config_lib.resolve(get_config(name, arg))


def with_epochs_flag(config, epochs):
    """What ``--config.epochs=N`` does: set after get_config, on the locked config."""
    config.lock()
    config.epochs = epochs
    return config


# --- both spellings, one run --------------------------------------------------------------


@pytest.mark.parametrize(
    "name,epochs",
    [
        *[("cifar_lt", n) for n in (200, 40, 7)],
        *[("default", n) for n in (30, 10, 3)],
        *[("imagenet_lt", n) for n in (200, 90, 1)],
        *[("places_lt", n) for n in (30, 10, 1)],
    ],
)
@pytest.mark.parametrize("method", ["ce", "ldam_drw", "kps_ga", "fbl", "gcl"])
def test_epochs_argument_and_flag_give_one_run(name, method, epochs):
    by_argument = resolved(name, f"method={method},epochs={epochs}")
    by_flag = config_lib.resolve(with_epochs_flag(get_config(name, f"method={method}"), epochs))
    assert by_argument == by_flag
    assert by_argument.epochs == epochs


def test_stage2_preset_follows_the_flag_too():
    by_argument = resolved("default", "method=ce,stage2=crt,epochs=10")
    by_flag = config_lib.resolve(
        with_epochs_flag(get_config("default", "method=ce,stage2=crt"), 10)
    )
    assert by_argument == by_flag
    assert by_argument.stage2.mode == "retrain" and by_argument.stage2.epochs == 2


# --- hand-written resolved values ---------------------------------------------------------


def _schedule(c):
    return dict(
        epochs=c.epochs,
        warmup_epochs=c.warmup_epochs,
        lr_boundaries=tuple(c.lr_boundaries),
        eval_every_epochs=c.eval_every_epochs,
        checkpoint_every_epochs=c.checkpoint_every_epochs,
        stage2_epochs=c.stage2.epochs,
    )


def test_cifar_fbl_at_the_recipe_length():
    c = resolved("cifar_lt", "method=fbl")
    assert _schedule(c) == dict(
        epochs=200,
        warmup_epochs=5,
        lr_boundaries=(160, 180),
        eval_every_epochs=10,
        checkpoint_every_epochs=10,
        stage2_epochs=30,
    )
    assert c.loss.to_dict() == {"lam": 60.0, "total_epochs": 200, "offset": 10, "clamp": False}
    assert c.stage2.mode == "none"


def test_cifar_at_40_epochs():
    c = resolved("cifar_lt", "method=fbl,epochs=40")
    assert _schedule(c) == dict(
        epochs=40,
        warmup_epochs=1,
        lr_boundaries=(32, 36),
        eval_every_epochs=2,
        checkpoint_every_epochs=2,
        stage2_epochs=6,
    )
    assert (c.loss.total_epochs, c.loss.offset) == (40, 2)
    gcl = resolved("cifar_lt", "method=gcl,epochs=40")
    assert gcl.stage2.epochs == 6 and gcl.stage2.mode == "retrain"
    assert (gcl.stage2.warmup_epochs, tuple(gcl.stage2.lr_boundaries)) == (0, ())
    assert resolved("cifar_lt", "method=ldam_drw,epochs=40").loss.drw_epoch == 32
    assert resolved("cifar_lt", "method=kps_ga,epochs=40").loss.ga_epoch == 24


def test_an_absolute_eval_interval_is_not_stretched():
    c = resolved("cifar_lt", "method=fbl,epochs=40,eval_every=1")
    assert (c.eval_every_epochs, c.checkpoint_every_epochs) == (1, 2)
    assert resolved("imagenet_lt", "epochs=200").checkpoint_every_epochs == 1


def test_default_gcl_at_30_epochs_and_runlocal():
    assert _schedule(resolved("default")) == dict(
        epochs=30,
        warmup_epochs=2,
        lr_boundaries=(24, 27),
        eval_every_epochs=10,
        checkpoint_every_epochs=10,
        stage2_epochs=6,
    )
    assert _schedule(resolved("default", "runlocal")) == dict(
        epochs=2,
        warmup_epochs=1,
        lr_boundaries=(2, 2),
        eval_every_epochs=1,
        checkpoint_every_epochs=1,
        stage2_epochs=1,
    )


def test_default_loss_switches_at_30_epochs():
    """The 200-epoch switches are written at 30 epochs in default.py, then stretched."""
    assert get_config("default", "method=ldam_drw").loss.drw_epoch == 24
    assert resolved("default", "method=ldam_drw").loss.drw_epoch == 24
    assert resolved("default", "method=ldam_drw,epochs=10").loss.drw_epoch == 8
    fbl = resolved("default", "method=fbl")
    assert (fbl.loss.total_epochs, fbl.loss.offset) == (30, 2)


def test_runlocal_of_the_streamed_configs():
    imagenet = resolved("imagenet_lt", "method=gcl,runlocal")
    assert _schedule(imagenet) == dict(
        epochs=1,
        warmup_epochs=1,
        lr_boundaries=(1, 1),
        eval_every_epochs=1,
        checkpoint_every_epochs=1,
        stage2_epochs=1,
    )
    places = resolved("places_lt", "method=gcl,runlocal")
    assert _schedule(places) == dict(  # both decays at epoch 1 of 1: after the last step
        epochs=1,
        warmup_epochs=0,
        lr_boundaries=(1, 1),
        eval_every_epochs=1,
        checkpoint_every_epochs=1,
        stage2_epochs=1,
    )


def test_stage2_own_epoch_numbers_follow_its_length():
    c = get_config("cifar_lt", "method=gcl,epochs=100")
    c.stage2.warmup_epochs = 3
    c.stage2.lr_boundaries = (20, 25)
    c.stage2.lr_factors = (0.1, 0.01)
    c.stage2.method = "ldam_drw"
    c.stage2.loss = config_lib.loss_config("ldam_drw", 30)  # drw_epoch 24 of 30
    s2 = config_lib.resolve(c).stage2
    assert s2.epochs == 15
    assert (s2.warmup_epochs, tuple(s2.lr_boundaries), s2.loss.drw_epoch) == (2, (10, 12), 12)


def test_stage2_config_scales_its_loss_to_its_length():
    assert config_lib.stage2_config("none", epochs=30).loss.to_dict() == {}
    cfg = config_lib.stage2_config("gcl", epochs=10)
    assert (cfg.loss.s, cfg.loss.m, cfg.loss.focal_gamma) == (20.0, 0.1, 1.0)


# --- resolve's contract -------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_resolve_is_idempotent_and_leaves_its_input_alone(name):
    config = get_config(name, "method=fbl")
    config.lock()
    before = config.to_json_best_effort()
    once = config_lib.resolve(config)
    assert config.to_json_best_effort() == before and config.is_locked
    assert not once.is_locked
    assert config_lib.resolve(once) == once
    once.epochs = 3  # a new ConfigDict: changing it leaves the input alone
    assert config.to_json_best_effort() == before


@pytest.mark.parametrize("name", CONFIGS)
def test_resolved_keys_are_the_saved_ones(name):
    """No helper keys in the result, so config.json files written before them still match."""
    c = resolved(name)
    assert set(c) == set(config_lib.base_config()) - set(config_lib.HELPER_KEYS)
    assert set(c.stage2) == set(config_lib.stage2_config("none", epochs=1))
    assert set(c.dataset) == set(config_lib.base_config().dataset)


def test_an_old_config_json_resolves_with_the_compat_values():
    saved = json.loads(resolved("default", "method=ce,runlocal").to_json_best_effort())
    old = json.loads(json.dumps(saved))
    for key in ("kernels", "drop_last"):
        del old[key]
    del old["dataset"]["split_protocol"], old["dataset"]["allow_constant_images"]
    del old["stage2"]["tau_grid"]
    c = config_lib.resolve(old)
    assert (c.kernels, c.drop_last) == ("auto", True)
    assert (c.dataset.split_protocol, c.dataset.allow_constant_images) == ("per_class", False)
    assert tuple(c.stage2.tau_grid) == tuple(round(0.1 * i, 1) for i in range(21))
    for key in ("kernels", "drop_last"):
        del saved[key]
    del saved["dataset"]["split_protocol"], saved["dataset"]["allow_constant_images"]
    got = json.loads(c.to_json_best_effort())
    for key in ("kernels", "drop_last"):
        del got[key]
    del got["dataset"]["split_protocol"], got["dataset"]["allow_constant_images"]
    assert got == saved  # nothing else changed: recipe_epochs 0, intervals as saved
    assert "dataset.split_protocol" in config_lib.COMPAT_DEFAULTS


def test_a_saved_config_resolves_to_itself():
    """The trainer's workdir check: config.json (resolved, as JSON) against the run's."""
    current = resolved("cifar_lt", "method=fbl,epochs=40")
    saved = json.loads(current.to_json_best_effort())
    again = config_lib.resolve(saved)
    assert json.loads(again.to_json_best_effort()) == saved


def test_compat_defaults_name_existing_keys():
    base = config_lib.base_config()
    for dotted in config_lib.COMPAT_DEFAULTS:
        node = base
        for part in dotted.split("."):
            assert part in node, dotted
            node = node[part]


def test_auto_interval_without_evals_per_run_is_an_error():
    c = get_config("default")
    c.evals_per_run = 0
    with pytest.raises(ValueError, match=r"evals_per_run=N or --config.eval_every_epochs=N"):
        config_lib.resolve(c)
    c.eval_every_epochs = c.checkpoint_every_epochs = 5
    assert config_lib.resolve(c).eval_every_epochs == 5


def test_absolute_config_is_not_scaled():
    c = get_config("cifar_lt", "method=ldam_drw")
    c.recipe_epochs = 0
    c.epochs = 40
    r = config_lib.resolve(c)
    assert (tuple(r.lr_boundaries), r.warmup_epochs, r.loss.drw_epoch) == ((160, 180), 5, 160)
    assert (r.eval_every_epochs, r.stage2.epochs) == (2, 30)


def test_scale_epochs():
    assert config_lib.scale_epochs(160, 40) == 32
    assert config_lib.scale_epochs(5, 2) == 1  # at least 1
    assert config_lib.scale_epochs(0, 40) == 0  # the start stays the start
    assert config_lib.scale_epochs(27, 5, 30) == 4  # 4.5: round half to even


# --- no JAX -------------------------------------------------------------------------------


def test_configs_import_no_jax():
    code = (
        "import importlib.util, sys\n"
        "import lt_jax.config_lib as cl\n"
        "assert 'jax' not in sys.modules, 'config_lib'\n"
        f"for name in {CONFIGS!r}:\n"
        "    spec = importlib.util.spec_from_file_location(name, f'configs/{name}.py')\n"
        "    m = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(m)\n"
        "    cl.resolve(m.get_config())\n"
        "    assert 'jax' not in sys.modules, name\n"
        "assert 'lt_jax.methods' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
