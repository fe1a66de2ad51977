"""Shared pieces of the command-line entry points (no flags defined here)."""

import logging

from absl import logging as absl_logging


def setup_logging():
    """lt_jax's progress lines on stderr; other libraries' INFO chatter (Orbax) hidden."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("lt_jax")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def result_rows(results):
    """Table rows: each stage's final epoch (the headline) and its best epoch, labelled."""
    rows = {}
    for stage in ("stage1", "stage2"):
        if stage in results:
            r = results[stage]
            tag = f" tau={r['final']['tau']}" if "tau" in r["final"] else ""
            rows[f"{stage} final (ep {r['final'].get('epoch', '-')}){tag}"] = r["final"]
            if "epoch" in r["best_epoch"]:
                rows[f"{stage} best epoch ({r['best_epoch']['epoch']})"] = r["best_epoch"]
    return rows
