"""Re-evaluates a finished run: ``python -m lt_jax.evaluate --workdir DIR``.

Reads the config saved in the workdir, restores the final checkpoint of each
stage, evaluates on the test split, prints the many / medium / few table and writes
``evaluation.json`` (the training's ``results.json`` stays as it was). Nothing is
trained; an unfinished run is an error.
"""

import json
import os

from absl import app, flags

flags.DEFINE_string("workdir", None, "Workdir of a finished run.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import ml_collections

    from lt_jax import cli

    cli.keep_host_memory()  # before JAX's backend starts (see lt_jax.main)
    cli.enable_compilation_cache()
    from lt_jax import checkpoint, metrics, train

    path = os.path.join(FLAGS.workdir, "config.json")
    if not os.path.exists(path):
        cli.fail("lt_jax.evaluate", f"{path} not found; is {FLAGS.workdir} an lt_jax workdir?")
    try:
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except ValueError as e:
        cli.fail("lt_jax.evaluate", f"{path} is not a readable config ({e})")
    cli.setup_logging()
    try:
        results = train.train_and_evaluate(config, FLAGS.workdir, eval_only=True)
    except (ValueError, OSError, train.TrainingError, checkpoint.CheckpointError) as e:
        cli.fail("lt_jax.evaluate", e)
    print(metrics.format_table(cli.result_rows(results)))
    print(f"evaluation: {os.path.join(FLAGS.workdir, 'evaluation.json')}")


if __name__ == "__main__":
    from lt_jax import cli

    app.run(main, flags_parser=cli.absl_flags_parser("lt_jax.evaluate"))
