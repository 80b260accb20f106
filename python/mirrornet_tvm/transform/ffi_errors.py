"""Let the project's exceptions cross TVM's FFI with their type.

A pass written in Python runs behind TVM's C++ pass manager; an exception it raises comes back to the
caller rebuilt from its registered name, or as a plain ``RuntimeError`` when the name is unknown.
Registering every ``MirrorNetError`` subclass keeps ``except StrategyError`` working around
``Sequential`` and ``get_pipeline``. Each pass module calls ``register_errors()`` when it loads.
"""
from __future__ import annotations

import tvm_ffi

from .. import errors


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def register_errors() -> None:
    for cls in (errors.MirrorNetError, *_subclasses(errors.MirrorNetError)):
        name = f"mirrornet_tvm.{cls.__name__}"
        if tvm_ffi.core.ERROR_NAME_TO_TYPE.get(name) is not cls:
            tvm_ffi.register_error(name, cls)

