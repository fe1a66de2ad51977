r"""Runs a grid of methods x seeds: ``python -m lt_jax.sweep --config FILE --methods ...``.

Each run goes to ``ROOT/<method>_s<seed>`` (finished runs are skipped, interrupted
ones resume from their checkpoints); afterwards ``python -m lt_jax.report
'ROOT/*'`` compares them. Example, every method on the embedded MNIST-LT, 3 seeds:

  python -m lt_jax.sweep --config configs/default.py --root /tmp/mnist_sweep \
      --methods ce,focal,cb_focal,ldam_drw,balanced_softmax,logit_adjusted,kps,kps_ga,fbl,gcl \
      --seeds 0,1,2

Config-file arguments go after the file name as in ``lt_jax.main`` (``--config
configs/cifar_lt.py:epochs=10``; ``--args epochs=10`` is the same), and ``--config.KEY=VALUE``
overrides apply to every run, as in ``lt_jax.main``; with
``--config.num_seeds=3`` each run trains seeds seed..seed+2 in one program and the report
averages them (``ROOT/<method>_s<seed>`` then holds all three).
"""

import argparse
import ast
import json
import logging
import os


def load_config(path: str, arg: str):
    from lt_jax import cli

    return cli.load_config_module(path).get_config(arg)


def apply_override(config, item: str) -> None:
    """``--config.a.b=value`` on ``config``: the key must exist, the value keeps its type."""
    key, sep, text = item.removeprefix("--config.").partition("=")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node.get(p) if hasattr(node, "get") else None
    if not sep or node is None or not hasattr(node, "keys") or leaf not in node:
        raise ValueError(f"{item}: the config has no key {key!r} (or no =VALUE)")
    old = node[leaf]
    try:
        if isinstance(old, str):
            value = text
        elif isinstance(old, bool):
            value = {"true": True, "false": False}[text.lower()]
        else:
            value = ast.literal_eval(text)
            if isinstance(old, float) and isinstance(value, int):
                value = float(value)
            if isinstance(old, tuple) and isinstance(value, list | tuple):
                value = tuple(value)
            if type(value) is not type(old):
                raise TypeError
    except (ValueError, SyntaxError, TypeError, KeyError):
        raise ValueError(f"{item}: {text!r} is not a {type(old).__name__}") from None
    node[leaf] = value


def summary(finished: list[tuple[str, dict]]) -> str:
    """The grid's table: each run's final epoch (and its seeds' mean where it has several)."""
    from lt_jax import metrics

    rows = {}
    for workdir, results in finished:
        name = os.path.basename(os.path.normpath(workdir))
        blank = {
            **dict.fromkeys(("top1", "many", "medium", "few", "ece")),
            "shot_convention": "paper",
        }
        rows[f"{name} final"] = {**blank, **results["final"]}
        agg = results.get("aggregate", {})
        if len(agg.get("seeds", ())) > 1:
            n = len(agg["seeds"])
            mean = {k: v["mean"] for k, v in agg["final"].items()}
            rows[f"{name} mean of {n} seeds"] = {**rows[f"{name} final"], **mean}
    return metrics.format_table(rows)


def main(argv=None):
    from lt_jax import catalog, cli

    parser = argparse.ArgumentParser(
        prog="python -m lt_jax.sweep",
        description=__doc__,
        epilog=cli.catalog_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", required=True, help="config file and its arguments, configs/FILE.py[:a=1,...]"
    )
    parser.add_argument("--root", required=True, help="parent folder of the run workdirs")
    parser.add_argument(
        "--methods", required=True, help=f"comma-separated, of: {', '.join(catalog.METHODS)}"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--args", default="", help="config-file arguments, e.g. epochs=10")
    args, extra = parser.parse_known_args(argv)
    if any(not e.startswith("--config.") for e in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    path, file_args = cli.split_config_spec(args.config)

    cli.keep_host_memory()  # before JAX's backend starts (see lt_jax.main)
    cli.enable_compilation_cache()
    from lt_jax import checkpoint, preflight, train

    cli.setup_logging()
    log = logging.getLogger("lt_jax")
    # Every run of the grid is checked before the first one trains.
    runs = []
    for method in args.methods.split(","):
        for seed in args.seeds.split(","):
            workdir = os.path.join(args.root, f"{method}_s{seed}")
            arg = ",".join(filter(None, [file_args, args.args, f"method={method}", f"seed={seed}"]))
            try:
                config = load_config(path, arg)
                for item in extra:
                    apply_override(config, item)
                preflight.check(config)
            except (ValueError, OSError) as e:
                cli.fail(f"lt_jax.sweep: {workdir}", e, cli.USAGE)
            runs.append((workdir, config))
    finished = []
    for k, (workdir, config) in enumerate(runs, 1):
        done = os.path.join(workdir, "results.json")
        if os.path.exists(done):
            log.info("run %d of %d: %s finished before, skipped", k, len(runs), workdir)
            with open(done) as f:
                finished.append((workdir, json.load(f)))
            continue
        log.info("run %d of %d: %s", k, len(runs), workdir)
        try:
            results = train.train_and_evaluate(config, workdir)
        except (ValueError, OSError, train.TrainingError, checkpoint.CheckpointError) as e:
            cli.fail(f"lt_jax.sweep: {workdir}", e)
        finished.append((workdir, results))
        log.info(
            "run %d of %d: %s final top-1 %.2f%%", k, len(runs), workdir,
            100 * results["final"]["top1"],
        )  # fmt: skip
    print(summary(finished))
    print(f"compare them: python -m lt_jax.report '{os.path.join(args.root, '*')}'")


if __name__ == "__main__":
    main()
