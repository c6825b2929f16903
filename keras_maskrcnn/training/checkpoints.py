"""Checkpoints of a training run: written only when sound and durable, restored over damaged ones.

Not a paper section: the machinery that makes ``train.py`` resumable (docs/reliability.md).

Conventions pinned here:
- A checkpoint is ``ckpt-<step>.weights.h5``: Keras' weights file of the model and its optimizer
  (``step`` = ``optimizer.iterations``, so ``model.load_weights`` reads it as any weights file),
  plus the seed generators' states in the group ``RNG_GROUP`` (Keras' files leave them out).
- Sound: the checkpoint of step s holds the weights after update s. It is kept only when those
  weights are finite and the loss of step s + 1, which is computed from them, is finite too:
  it is written as ``ckpt-<s>.pending.weights.h5`` and renamed to its name when that loss comes
  (the loss Keras reports for step s is computed before update s, so checking it alone keeps a
  diverged update). The checkpoint of the last step (``total_steps``) has no next loss: it is
  kept when its weights are finite.
- Durable: every file is written to ``<name>.partial.weights.h5``, fsynced, renamed, and the
  directory fsynced; a kill leaves at most a ``.partial`` or ``.pending`` file, which the next
  run removes. Before writing, the free space is checked against the variables' size: HDF5
  that runs out of space mid-write leaves a file state whose close crashes the process (h5py
  issue #914), so a full disk is refused before HDF5 writes anything. A write error is one
  ``CheckpointError`` naming the file and the errno; the partial file is removed and older
  checkpoints stay. A disk that another writer fills during the write can still fail inside
  HDF5: its objects are then kept alive and quiet, and ``run.report_failure`` ends the
  process with ``os._exit``; an error that HDF5 meets while closing the file crashes inside
  h5py itself, which no caller can catch (docs/reliability.md).
- Restore: the newest checkpoint that loads, matches its step and holds finite weights; each
  one skipped is named with the reason. When none is usable the run stops (it does not start
  over from step 0 with half-loaded weights).
"""
import errno
import glob
import os
import re
import sys

import h5py
import numpy as np

CHECKPOINT_PATTERN = re.compile(r"ckpt-(\d+)\.weights\.h5$")
#: h5 group of a checkpoint holding the seed generators' states (Keras' loader ignores it).
RNG_GROUP = "keras_maskrcnn_seed_generators"
_SUFFIX = ".weights.h5"
#: Files a killed run can leave behind (removed when the next run starts).
_UNFINISHED = ("*.partial.weights.h5", "*.pending.weights.h5")
#: Exceptions HDF5 raised while writing: kept alive so their HDF5 objects are never freed (h5py
#: prints pages of errors and may crash when it frees a file that failed to write).
_FAILED_HDF5_WRITES = []


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or restored; ``str()`` is one line naming the file.

    ``hdf5_damaged`` is True when HDF5 itself failed mid-write: its library state is then
    broken, and the process should end with ``os._exit`` (see ``run.report_failure``).
    """

    def __init__(self, message, hdf5_damaged=False):
        super().__init__(message)
        self.hdf5_damaged = hdf5_damaged


# ------------------------------------------------------------------------------- listing
def list_checkpoints(directory):
    """[(step, path)] of the checkpoints in ``directory``, oldest first."""
    found = []
    for path in glob.glob(os.path.join(directory, "ckpt-*.weights.h5")):
        match = CHECKPOINT_PATTERN.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def checkpoint_path(directory, step):
    return os.path.join(directory, f"ckpt-{step:08d}{_SUFFIX}")


def remove_unfinished(directory):
    """Removes the ``.partial`` / ``.pending`` files a killed run left in ``directory``."""
    for pattern in _UNFINISHED:
        for path in glob.glob(os.path.join(directory, pattern)):
            remove_quietly(path)


# ------------------------------------------------------------------------------- soundness
def _state_variables(model):
    """The model's variables and its optimizer's (what a checkpoint holds)."""
    optimizer = getattr(model, "optimizer", None)
    return list(model.variables) + list(getattr(optimizer, "variables", None) or [])


def non_finite_variables(model):
    """Paths of the model and optimizer variables holding a NaN or an infinity."""
    bad = []
    for variable in _state_variables(model):
        value = np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            bad.append(getattr(variable, "path", getattr(variable, "name", "?")))
    return bad


def estimated_size(model):
    """Bytes a weights file of ``model`` (and its optimizer) takes at most: the variables'
    bytes plus HDF5's overhead (under 4 KiB per variable) and 64 KiB (tested on the tiny Mask
    R-CNN: the file is between half of this and this)."""
    variables = _state_variables(model)
    data = sum(int(np.prod(v.shape)) * np.dtype(str(getattr(v, "dtype", "float32"))).itemsize
               for v in variables)
    return data + 4096 * len(variables) + (64 << 10)


# ------------------------------------------------------------------------------- writing
def write_weights(model, path, extra_writer=None):
    """``model.save_weights(path)``, durably and atomically; a full disk is refused first.

    Args:
      model: a built Keras model (its optimizer's variables are saved too).
      path: the final ``*.weights.h5`` path.
      extra_writer: optional ``f(partial_path)`` adding groups to the file before it is renamed.
    Raises:
      CheckpointError: one line with the path and the errno; the partial file is removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    partial = path[:-len(_SUFFIX)] + ".partial" + _SUFFIX
    try:
        os.makedirs(directory, exist_ok=True)
        stat = os.statvfs(directory)
    except OSError as e:
        raise CheckpointError(f"{path} not written: {describe(e)}") from None
    needed, free = estimated_size(model), stat.f_bavail * stat.f_frsize
    if free < needed:
        raise CheckpointError(f"{path} not written: [Errno {errno.ENOSPC}] "
                              f"{os.strerror(errno.ENOSPC)} (needs about {needed / 2**20:.1f} "
                              f"MiB, {free / 2**20:.1f} MiB free)")
    in_hdf5, damaged, hook = True, False, sys.unraisablehook
    sys.unraisablehook = _quiet_hdf5_hook(hook)
    try:
        model.save_weights(partial)
        if extra_writer is not None:
            extra_writer(partial)
        in_hdf5 = False
        _fsync(partial)
        rename_durably(partial, path)
    except OSError as e:
        damaged = in_hdf5
        if damaged:  # keep HDF5's objects alive and quiet: see the module docstring
            _FAILED_HDF5_WRITES.append(e)
        remove_quietly(partial)
        raise CheckpointError(f"{path} not written: {describe(e)}",
                              hdf5_damaged=damaged) from None
    finally:
        if not damaged:
            sys.unraisablehook = hook


def _quiet_hdf5_hook(hook):
    """An unraisable-exception hook that drops h5py's object-freeing errors (after a failed
    write they come by the hundred); anything else goes to ``hook``."""
    def quiet(unraisable):
        if "h5py" not in repr(getattr(unraisable, "object", "")):
            hook(unraisable)
    return quiet


def rename_durably(source, target):
    """``os.replace`` then fsync of the directory (the rename itself reaches the disk)."""
    os.replace(source, target)
    _fsync(os.path.dirname(os.path.abspath(target)), directory=True)


def _fsync(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory
        if not directory or e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def describe(error):
    """``[Errno N] strerror`` of an OSError, without HDF5's page-long detail."""
    if error.errno is None:
        return str(error).strip().splitlines()[0][:200]
    return f"[Errno {error.errno}] {os.strerror(error.errno)}"


def remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


# ---------------------------------------------------------------------------- seed states
def seed_generator_states(model):
    """The state variables of the model's ``keras.random.SeedGenerator``s, in model order."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def save_seed_generator_states(model, path):
    """Adds the seed generators' states to a weights file (Keras' own leave them out)."""
    with h5py.File(path, "a") as f:
        group = f.require_group(RNG_GROUP)
        for i, variable in enumerate(seed_generator_states(model)):
            group.create_dataset(str(i), data=variable.numpy())
            group[str(i)].attrs["path"] = variable.path


def load_seed_generator_states(model, path):
    """Restores the states ``save_seed_generator_states`` wrote (a file without them, e.g.
    one written before they were saved, leaves the generators at their seeds)."""
    with h5py.File(path, "r") as f:
        if RNG_GROUP not in f:
            return
        group = f[RNG_GROUP]
        variables = seed_generator_states(model)
        if len(group) != len(variables):
            raise ValueError(f"{len(group)} seed generator states for a model with "
                             f"{len(variables)}")
        for i, variable in enumerate(variables):
            variable.assign(group[str(i)][()])


def write_checkpoint(model, path):
    """A checkpoint file at ``path``: weights, optimizer and seed states (``write_weights``)."""
    write_weights(model, path, lambda partial: save_seed_generator_states(model, partial))


# ------------------------------------------------------------------------------- restoring
def restore_latest(model, directory, log=print):
    """Loads the newest usable checkpoint into a built model + optimizer; returns its step.

    A checkpoint that cannot be read (truncated, corrupt), whose optimizer step differs from
    its name, or that holds non-finite weights is skipped with a message through ``log``, and
    the previous one is tried. Returns 0 when the directory has no checkpoint.

    Raises:
      CheckpointError: checkpoints exist but none is usable (the model may be half-loaded).
    """
    checkpoints = list_checkpoints(directory)
    problems = []
    for step, path in reversed(checkpoints):
        problem = _try_restore(model, path, step)
        if problem is None:
            return step
        problems.append(f"{os.path.basename(path)}: {problem}")
        log(f"checkpoint {path} is unusable ({problem}); trying the previous one")
    if problems:
        raise CheckpointError(f"no usable checkpoint in {directory} ({'; '.join(problems)}); "
                              "move them away to train from step 0")
    return 0


def _try_restore(model, path, step):
    """Loads one checkpoint; returns None, or a one-line reason it is unusable."""
    try:
        model.load_weights(path)
        load_seed_generator_states(model, path)
    except Exception as e:  # noqa: BLE001 - h5py/Keras raise OSError, ValueError, KeyError...
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0][:200] if text else 'unreadable'}"
    restored = int(model.optimizer.iterations.numpy())
    if restored != step:
        return f"optimizer step {restored} does not match the file name"
    bad = non_finite_variables(model)
    if bad:
        return f"non-finite values in {len(bad)} variable(s), e.g. {bad[0]}"
    return None
