"""Thin Orbax wrapper: periodic saves, restore of the newest intact step, clear errors.

Kept behind this module so moving to Orbax's v1 ``training.Checkpointer`` is a
one-file change.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("lt_jax.checkpoint")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into the current run."""


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, state_like, step: int | None = None):
        """Restores ``step`` with the structure, shapes and shardings of ``state_like``.

        Without ``step``: the newest intact checkpoint. A damaged newer one is skipped with
        a warning and moved, untouched, to ``<directory>.damaged/`` (so that training on
        from the older one can save that step again); only when no checkpoint restores is
        it an error.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        if step is not None:
            return self._restore(step, abstract)
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        errors = []
        for s in steps:
            try:
                state = self._restore(s, abstract)
            except CheckpointError as e:
                errors.append(e)
                continue
            for damaged, e in zip(steps, errors, strict=False):
                self._set_aside(damaged, e)
            return state
        raise (
            errors[0]
            if len(errors) == 1
            else CheckpointError(
                f"none of the {len(steps)} checkpoints in {self.directory} restores (newest: "
                f"{errors[0]}); use a new workdir or delete the checkpoints"
            )
        )

    def _restore(self, step: int, abstract):
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # noqa: BLE001 - Orbax raises many types for a bad checkpoint
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} is corrupt or was written by a "
                f"different model/optimizer ({type(e).__name__}: {first[:300]}); "
                "use a new workdir or delete the checkpoints"
            ) from None

    def _set_aside(self, step: int, error: CheckpointError) -> None:
        """Moves a damaged step out of the managed directory, keeping every byte."""
        aside = f"{self.directory}.damaged"
        os.makedirs(aside, exist_ok=True)
        target = os.path.join(aside, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(os.path.join(self.directory, str(step)), target)
        self._manager.reload()
        log.warning("skipped checkpoint %d (%s); kept it in %s", step, error, target)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self, timeout: float | None = None) -> bool:
        """Waits for a pending save to finish, then closes. With ``timeout`` (seconds) the
        wait is bounded: a save whose finalisation is still waiting for the other processes
        then is left unfinished (its step is not committed; the newest finished one is kept)
        and this returns False."""
        if timeout is None:
            self._manager.close()
            return True
        failed = []

        def close():
            try:
                self._manager.close()
            except Exception as e:  # noqa: BLE001 - the caller reports the unfinished save
                failed.append(e)

        closing = threading.Thread(target=close, name="lt_jax-checkpoint-close", daemon=True)
        closing.start()
        closing.join(timeout)
        return not closing.is_alive() and not failed
