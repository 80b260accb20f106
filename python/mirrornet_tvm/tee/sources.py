"""Where the TA template, the simulator's sources and its client library live.

The TA template (``ta/``) and the native sources (``src/``) sit at the top of the source tree, next to
``python/``; they are found from this file's location (an editable install), or from
``$MIRRORNET_ROOT``.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import TeeError

SIM_LIBRARY = "libmirrornet_teec_sim.so"


def repo_root() -> Path:
    """The source tree holding ``ta/`` and ``src/tee_sim/``."""
    env = os.environ.get("MIRRORNET_ROOT")
    candidates = [Path(env)] if env else []
    candidates += list(Path(__file__).resolve().parents)
    for parent in candidates:
        if (parent / "ta" / "mirrornet_ta.c").is_file() and (parent / "src" / "tee_sim").is_dir():
            return parent
    raise TeeError(
        "cannot find the mirrornet-tvm source tree (ta/mirrornet_ta.c, src/tee_sim/): install the "
        "package from a checkout (pip install -e .) or set MIRRORNET_ROOT to the checkout"
    )


def ta_template() -> Path:
    return repo_root() / "ta"


def tee_sim_dir() -> Path:
    return repo_root() / "src" / "tee_sim"


def simulator_library() -> Path:
    """The host simulator's libteec: ``$MIRRORNET_LIBTEEC``, else ``<repo>/build``."""
    env = os.environ.get("MIRRORNET_LIBTEEC")
    if env:
        path = Path(env)
        if not path.is_file():
            raise TeeError(f"MIRRORNET_LIBTEEC={env} does not exist")
        return path
    path = repo_root() / "build" / SIM_LIBRARY
    if not path.is_file():
        raise TeeError(
            f"the host TEE simulator's client library {path} is not built: run `make setup` "
            "(or `cmake -S . -B build && cmake --build build`)"
        )
    return path
