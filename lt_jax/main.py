"""Entry point: ``python -m lt_jax.main --config configs/<file>.py[:args] --workdir DIR``."""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_bool("print_config", False, "Print the resolved config and exit (no training).")
config_flags.DEFINE_config_file("config", None, "Config file (get_config(arg)).", lock_config=True)
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from lt_jax import cli  # no JAX import yet

    config = FLAGS.config
    if FLAGS.print_config:
        from lt_jax import preflight

        try:
            resolved = preflight.check(config)
        except ValueError as e:
            cli.fail("lt_jax", e, cli.USAGE)
        print(resolved.to_json_best_effort(indent=1, sort_keys=True))
        return
    if not FLAGS.workdir:
        cli.fail("lt_jax", "--workdir is missing: give the folder the run writes to", cli.USAGE)
    cli.use_all_cpu_cores([config.batch_size, config.stage2.batch_size, config.eval_batch_size])
    cli.keep_host_memory()
    import jax  # after flag parsing and the CPU device setup

    cli.enable_compilation_cache()

    from lt_jax import checkpoint, distributed, metrics, preflight, train

    try:
        preflight.check(config)  # a bad setting: one line and status 2 in seconds
    except ValueError as e:
        cli.fail("lt_jax", e, cli.USAGE)
    cli.setup_logging()
    spec = ":".join(filter(None, cli.config_spec(sys.argv) or ()))
    logging.getLogger("lt_jax").info("lt_jax: %s, workdir %s", spec, FLAGS.workdir)
    try:  # LT_JAX_COORDINATOR/_NUM_PROCESSES/_PROCESS_ID, or LT_JAX_MULTIHOST=1
        distributed.initialize()
    except distributed.DistributedError as e:
        cli.fail("lt_jax", e)
    log = logging.getLogger("lt_jax")
    log.info("process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
    try:
        results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except distributed.DistributedError as e:  # a peer is gone: no shutdown barrier
        distributed.abandon(cli.one_line(e))
    except jax.errors.JaxRuntimeError as e:
        if not distributed.peer_lost(e):  # one process: JAX's own error
            raise
        distributed.abandon(distributed.collective_failed(e))
    except (ValueError, OSError, train.TrainingError, checkpoint.CheckpointError) as e:
        cli.fail("lt_jax", e)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback from deep inside JAX
        print(
            "lt_jax: interrupted; the newest checkpoint is kept, rerun to resume", file=sys.stderr
        )
        sys.stderr.flush()
        # The workdir lock and the checkpointer are closed by now; an XLA compile may still
        # run on another thread, which interpreter teardown would crash into.
        os._exit(130)
    if jax.process_index() == 0:
        print(metrics.format_table(cli.result_rows(results)))
        print(f"results: {os.path.join(FLAGS.workdir, 'results.json')}")


if __name__ == "__main__":
    from lt_jax import cli

    app.run(main, flags_parser=cli.absl_flags_parser("lt_jax", cli.main_help))
