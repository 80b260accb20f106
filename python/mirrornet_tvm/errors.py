"""The project's own exceptions. Every message says what was wrong and what to do about it.

The CLI prints ``str(error)`` without a traceback and exits with ``error.exit_code``.
"""


class MirrorNetError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class UsageError(MirrorNetError):
    """Bad arguments or options."""

    exit_code = 2


class DatasetError(MirrorNetError):
    """A dataset is missing, truncated or corrupt."""


class ModelError(MirrorNetError):
    """A model file is missing, corrupt, or outside the supported op set / shapes / dtypes."""


class UnsupportedOpError(ModelError):
    """The model uses an operator the front end does not support."""


class StrategyError(MirrorNetError):
    """A CPM strategy is malformed or does not fit the model (e.g. a tap that does not exist)."""


class ArtifactError(MirrorNetError):
    """An artifact or build folder is missing files or was written by an incompatible version."""


class CompileError(MirrorNetError):
    """Compilation of the backbone or the CPM failed."""


class TeeError(MirrorNetError):
    """The trusted application or the TEE client failed (carries the GP error code when there is one)."""

    def __init__(self, message, code=None, origin=None):
        super().__init__(message)
        self.code = code
        self.origin = origin


class NotBuiltYet(MirrorNetError):
    """A capability that is planned but not implemented yet."""

    exit_code = 3


class TargetMismatchError(UsageError):
    """A cost model was asked to predict for a target it was not trained on (measure and train one for it)."""


class ModelNotice(UserWarning):
    """A one-line notice that loading changed a model (e.g. a dynamic batch fixed to 1); not an error."""
