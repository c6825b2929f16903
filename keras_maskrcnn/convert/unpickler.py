"""The one restricted unpickler of the weight converters (torch ``.pth`` and detectron2 ``.pkl``).

Python's pickle runs whatever callables a file names; a checkpoint only needs a few (tensor
rebuild functions, numpy's array reconstruction, plain containers). ``RestrictedUnpickler``
resolves a global only when its (module, name) is a key of the reader's allow-list and refuses
anything else with an error naming the file and the global, before anything is called.
``_codecs.encode`` (how pickle protocol 2 writes ``bytes`` from Python 3) is resolved for the
latin1 codec only.

Errors are ``CheckpointError`` (a ``ValueError``); each message starts with the file's path.
"""
import pickle


class CheckpointError(ValueError):
    """A checkpoint a reader refuses: not the expected format, corrupt, oversized or holding
    code. The message names the file."""


def latin1_encode(path):
    """``_codecs.encode`` restricted to latin1 (pickle protocol 2's ``bytes``) for ``path``."""
    def encode(text, encoding="latin1"):
        if encoding.replace("-", "").lower() != "latin1":
            raise CheckpointError(f"{path}: refusing _codecs.encode with codec {encoding!r}")
        return text.encode("latin1")
    return encode


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` resolving only the allowed globals.

    Args:
        file: binary file object positioned at the pickle.
        path: the checkpoint's path, for messages.
        allowed: {(module, name): object} the pickle may name; a value None means "import it"
            (``pickle.Unpickler.find_class``: numpy's reconstruction functions).
        encoding: for Python 2 era strings ("latin1" for detectron2's pickles).
        persistent_load: callable for persistent ids (torch's storages), or None to refuse them.
        error: the exception class raised (a ``CheckpointError`` subclass).
        hint: appended to the refusal message (what the reader accepts instead).
    """

    def __init__(self, file, path, allowed, encoding="ASCII", persistent_load=None,
                 error=CheckpointError, hint=""):
        super().__init__(file, encoding=encoding)
        self.path, self.allowed, self.error, self.hint = path, allowed, error, hint
        self._persistent_load = persistent_load

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return latin1_encode(self.path)
        if (module, name) not in self.allowed:
            raise self.error(f"{self.path}: refusing to unpickle the global {module}.{name}"
                             + (f" ({self.hint})" if self.hint else ""))
        found = self.allowed[(module, name)]
        return super().find_class(module, name) if found is None else found

    def persistent_load(self, pid):
        if self._persistent_load is None:
            raise self.error(f"{self.path}: unexpected persistent id in the pickle")
        return self._persistent_load(pid)


def unpickle(unpickler, error=CheckpointError):
    """``unpickler.load()``; any failure but a refusal becomes ``error`` naming the file."""
    try:
        return unpickler.load()
    except CheckpointError as e:
        if str(e).startswith(str(unpickler.path)):
            raise
        raise error(f"{unpickler.path}: {e}") from None
    except Exception as e:  # truncated / corrupt pickle streams raise many kinds of errors
        raise error(f"{unpickler.path}: corrupt pickle ({type(e).__name__}: {e})") from None
