"""Entry point: ``python -m lt_jax.main --config configs/<file>.py[:args] --workdir DIR``."""

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
config_flags.DEFINE_config_file("config", None, "Config file (get_config(arg)).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _setup_logging():
    """lt_jax's progress lines on stderr; other libraries' INFO chatter (Orbax) hidden."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("lt_jax")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv):
    del argv
    import jax  # after flag parsing, so --help is fast

    from lt_jax import checkpoint, metrics, train

    if os.environ.get("LT_JAX_MULTIHOST"):
        jax.distributed.initialize()
    _setup_logging()
    log = logging.getLogger("lt_jax")
    log.info("process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
    try:
        results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, FileNotFoundError, train.TrainingError, checkpoint.CheckpointError) as e:
        sys.exit(f"lt_jax: error: {e}")
    if jax.process_index() == 0:
        best = results["best_epoch"]
        print(
            metrics.format_table(
                {
                    f"final (epoch {results['final']['epoch']})": results["final"],
                    f"best epoch ({best['epoch']})": best,
                }
            )
        )
        print(f"results: {os.path.join(FLAGS.workdir, 'results.json')}")


if __name__ == "__main__":
    app.run(main)
