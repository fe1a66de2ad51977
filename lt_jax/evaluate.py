"""Re-evaluates a finished run: ``python -m lt_jax.evaluate --workdir DIR``.

Reads the config saved in the workdir, restores the final checkpoint of each
stage, evaluates on the test split and prints the many / medium / few table.
Nothing is trained; an unfinished run is an error.
"""

import json
import os
import sys

from absl import app, flags

flags.DEFINE_string("workdir", None, "Workdir of a finished run.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import ml_collections

    from lt_jax import cli

    cli.keep_host_memory()  # before JAX's backend starts (see lt_jax.main)
    from lt_jax import checkpoint, metrics, train

    path = os.path.join(FLAGS.workdir, "config.json")
    if not os.path.exists(path):
        sys.exit(f"lt_jax: error: {path} not found; is {FLAGS.workdir} an lt_jax workdir?")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    cli.setup_logging()
    try:
        results = train.train_and_evaluate(config, FLAGS.workdir, eval_only=True)
    except (ValueError, FileNotFoundError, train.TrainingError, checkpoint.CheckpointError) as e:
        sys.exit(f"lt_jax: error: {e}")
    print(metrics.format_table(cli.result_rows(results)))


if __name__ == "__main__":
    app.run(main)
