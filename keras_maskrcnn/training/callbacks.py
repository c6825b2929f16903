"""The training guard: checkpoints that are kept only when sound, a stop on divergence.

Not a paper section: ``train.py``'s fault handling (docs/reliability.md). The rules a kept
checkpoint follows are ``training.checkpoints``'; this callback applies them step by step:

    step s ends -> loss of step s (computed from the weights after update s - 1) finite?
                   no:  stop; the pending checkpoint (of step s - 1) is dropped
                   yes: the pending checkpoint is kept (renamed to ckpt-<s - 1>)
                -> s is a checkpoint step: weights after update s finite?
                   no:  stop
                   yes: written as pending (kept when the loss of step s + 1 is finite, or
                        at once when s is the last step)

Training never runs past ``total_steps``: the guard stops ``fit`` there.
"""
import os

import keras
import numpy as np

from keras_maskrcnn.training import checkpoints as ckpt


class CheckpointAndGuard(keras.callbacks.Callback):
    """Every ``every`` steps (and at ``total_steps``) a sound checkpoint; a stop on divergence.

    Keeps the newest ``keep`` checkpoints. A non-finite loss, non-finite weights or a failed
    write set ``self.failed`` (one line) and stop training; the checkpoints on disk are then
    the sound ones written before.
    """

    def __init__(self, directory, every, keep, total_steps):
        super().__init__()
        self.directory, self.every, self.keep = directory, int(every), int(keep)
        self.total_steps = int(total_steps)
        self.failed = None
        self.error = None  # the CheckpointError behind ``failed``, if a write failed
        self.pending = None  # (step, path) written, waiting for the next step's loss
        ckpt.remove_unfinished(directory)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        bad = {k: float(v) for k, v in (logs or {}).items()
               if k.endswith("loss") and not np.isfinite(v)}
        if bad:
            self._drop_pending()
            return self._stop(f"non-finite loss at step {step}: {bad}")
        if not self._commit_pending():  # its weights gave this step's finite loss
            return None
        if step % self.every == 0 or step >= self.total_steps:
            bad_variables = ckpt.non_finite_variables(self.model)
            if bad_variables:
                return self._stop(f"non-finite weights after step {step} (e.g. "
                                  f"{bad_variables[0]})")
            if not self._write_pending(step):
                return None
            if step >= self.total_steps:  # no next loss: finite weights suffice
                self._commit_pending()
        if step >= self.total_steps:
            self.model.stop_training = True
        return None

    def _write_pending(self, step):
        path = os.path.join(self.directory, f"ckpt-{step:08d}.pending.weights.h5")
        try:
            ckpt.write_checkpoint(self.model, path)
        except ckpt.CheckpointError as e:
            self.error = e
            self._stop(str(e))
            return False
        self.pending = (step, path)
        return True

    def _commit_pending(self):
        if self.pending is None:
            return True
        step, path = self.pending
        self.pending = None
        try:
            ckpt.rename_durably(path, ckpt.checkpoint_path(self.directory, step))
        except OSError as e:
            self.error = ckpt.CheckpointError(f"{path} not kept: {ckpt.describe(e)}")
            self._stop(str(self.error))
            return False
        for _, old in ckpt.list_checkpoints(self.directory)[:-self.keep]:
            os.remove(old)
        return True

    def _drop_pending(self):
        if self.pending is not None:
            ckpt.remove_quietly(self.pending[1])
            self.pending = None

    def _stop(self, reason):
        self.failed = reason
        self.model.stop_training = True
