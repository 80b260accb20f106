"""Where kernels run: this process, or a device reached through a TVM RPC tracker.

Both are :class:`Device` objects that open a ``tvm.rpc`` session, so measurement takes the same code
path (upload a library, load it, ``time_evaluator``) whether it runs locally or on a fleet of boards
registered with a tracker under one key. :func:`local_fleet` starts a tracker and servers on
127.0.0.1 (for tests and for trying the RPC path without a board) and always shuts them down.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class TrackerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_tracker(text: str) -> TrackerAddress:
    """Parse ``HOST:PORT``."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"RPC tracker address {text!r} is not HOST:PORT (e.g. 127.0.0.1:9190)")
    return TrackerAddress(host, int(port))


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Device:
    """A place to run kernels. ``tracker is None`` means this process (``tvm.rpc.LocalSession``)."""

    tracker: TrackerAddress | None = None
    key: str = ""
    session_timeout: float = 600.0

    @property
    def name(self) -> str:
        return "local" if self.tracker is None else f"rpc:{self.key}@{self.tracker}"

    def check(self) -> None:
        """Fail early and clearly when the tracker is unreachable or has no server for the key."""
        if self.tracker is None:
            return
        from tvm import rpc

        t = self.tracker
        if not _reachable(t.host, t.port):
            raise UsageError(
                f"cannot reach the RPC tracker at {t}; start one with "
                f"`python -m tvm.exec.rpc_tracker --host {t.host} --port {t.port}` or fix --rpc-tracker"
            )
        summary = rpc.connect_tracker(t.host, t.port).summary()
        servers = [s for s in summary.get("server_info", []) if s.get("key", "").split(":", 1)[-1] == self.key]
        if not servers:
            known = sorted({s.get("key", "").split(":", 1)[-1] for s in summary.get("server_info", [])})
            raise UsageError(
                f"the RPC tracker at {t} has no server registered under key {self.key!r} "
                f"(keys present: {', '.join(known) or 'none'}); start one with "
                f"`python -m tvm.exec.rpc_server --tracker {t} --key {self.key}`"
            )

    def connect(self):
        """Open a session (``tvm.rpc.RPCSession``); the caller keeps it for a batch of measurements."""
        from tvm import rpc

        if self.tracker is None:
            return rpc.LocalSession()
        self.check()
        try:
            return rpc.connect_tracker(self.tracker.host, self.tracker.port).request(
                self.key, session_timeout=self.session_timeout, max_retry=3)
        except RuntimeError as err:
            raise UsageError(f"RPC request for key {self.key!r} at {self.tracker} failed: {err}") from err


def rpc_device(tracker: str | TrackerAddress, key: str, session_timeout: float = 600.0) -> Device:
    """A device reached through the tracker at ``tracker`` (``HOST:PORT``) under ``key``."""
    if not key:
        raise UsageError("an RPC key is needed with --rpc-tracker (the key the servers registered with)")
    if not isinstance(tracker, TrackerAddress):
        tracker = parse_tracker(tracker)
    return Device(tracker=tracker, key=key, session_timeout=session_timeout)


LOCAL = Device()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Terminate a process group we started (the tracker/server and the workers they fork)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    else:  # the leader exited; its forked children may still hold the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def local_fleet(key: str = "local", servers: int = 1, startup_timeout: float = 120.0):
    """Start an RPC tracker and ``servers`` RPC servers on 127.0.0.1; yield the :class:`Device`.

    Every process runs in its own process group and is terminated on exit, also on errors.
    """
    procs: list[subprocess.Popen] = []
    py = sys.executable
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    try:
        port = _free_port()
        procs.append(subprocess.Popen(
            [py, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
             "--port-end", str(port + 1), "--silent"], **quiet))
        deadline = time.monotonic() + startup_timeout
        while not _reachable("127.0.0.1", port, timeout=0.5):
            if procs[0].poll() is not None or time.monotonic() > deadline:
                raise UsageError(f"the local RPC tracker did not start on port {port}")
            time.sleep(0.2)
        for _ in range(servers):
            sport = _free_port()
            procs.append(subprocess.Popen(
                [py, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(sport),
                 "--port-end", str(sport + 1), "--tracker", f"127.0.0.1:{port}", "--key", key,
                 "--silent"], **quiet))
        from tvm import rpc

        while True:
            summary = rpc.connect_tracker("127.0.0.1", port).summary()
            if summary.get("queue_info", {}).get(key, {}).get("free", 0) >= servers:
                break
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise UsageError(f"the local RPC servers for key {key!r} did not register in time")
            time.sleep(0.3)
        yield Device(tracker=TrackerAddress("127.0.0.1", port), key=key)
    finally:
        for proc in reversed(procs):
            _stop(proc)
