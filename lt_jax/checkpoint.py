"""Thin Orbax wrapper: periodic saves, restore of the latest step, clear errors.

Kept behind this module so moving to Orbax's v1 ``training.Checkpointer`` is a
one-file change.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


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
        """Restores ``step`` (default: latest) with the structure, shapes and shardings of
        ``state_like``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # noqa: BLE001 - Orbax raises many types for a bad checkpoint
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} is corrupt or was written by a "
                f"different model/optimizer ({type(e).__name__}: {first[:300]}); "
                "use a new workdir or delete the checkpoints"
            ) from None

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
