"""Where kernels run: this process, or a device reached through a TVM RPC tracker.

Both are :class:`Device` objects that open a ``tvm.rpc`` session, so measurement takes the same code
path (upload a library, load it, ``time_evaluator``) whether it runs locally or on a fleet of boards
registered with a tracker under one key. :func:`local_fleet` starts a tracker and servers on
127.0.0.1 (for tests and for trying the RPC path without a board) and always shuts them down.
"""
from __future__ import annotations

import contextlib
import logging
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
            # the in-process session logs every module it loads: keep measurement output readable
            logging.getLogger("RPCServer").setLevel(logging.WARNING)
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


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.info["pid"])
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate a process group we started: the tracker/server and the workers it forked."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)
    deadline = time.monotonic() + grace
    while group_members(proc.pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.1)


class LocalFleet:
    """An RPC tracker and ``servers`` RPC servers on 127.0.0.1 (``with LocalFleet(key) as device:``).

    Every process runs in its own process group (a server forks one child per session), and every
    group is terminated on exit, also on errors.
    """

    def __init__(self, key: str = "local", servers: int = 1, startup_timeout: float = 120.0):
        if not key or servers < 1:
            raise UsageError("a local fleet needs a key and at least one server")
        self.key, self.servers, self.startup_timeout = key, servers, startup_timeout
        self._procs: list[subprocess.Popen] = []

    @property
    def process_groups(self) -> list[int]:
        return [p.pid for p in self._procs]

    def __enter__(self) -> Device:
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> Device:
        from tvm import rpc

        py = sys.executable
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
        port = _free_port()
        self._procs.append(subprocess.Popen(
            [py, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
             "--port-end", str(port + 1), "--silent"], **quiet))
        deadline = time.monotonic() + self.startup_timeout
        while not _reachable("127.0.0.1", port, timeout=0.5):
            if self._procs[0].poll() is not None or time.monotonic() > deadline:
                raise UsageError(f"the local RPC tracker did not start on port {port}")
            time.sleep(0.2)
        for _ in range(self.servers):
            sport = _free_port()
            self._procs.append(subprocess.Popen(
                [py, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(sport),
                 "--port-end", str(sport + 1), "--tracker", f"127.0.0.1:{port}", "--key", self.key,
                 "--silent"], **quiet))
        while True:
            summary = rpc.connect_tracker("127.0.0.1", port).summary()
            if summary.get("queue_info", {}).get(self.key, {}).get("free", 0) >= self.servers:
                break
            if any(p.poll() is not None for p in self._procs) or time.monotonic() > deadline:
                raise UsageError(f"the local RPC servers for key {self.key!r} did not register in time")
            time.sleep(0.3)
        return Device(tracker=TrackerAddress("127.0.0.1", port), key=self.key)

    def close(self) -> None:
        for proc in reversed(self._procs):
            _stop(proc)


def local_fleet(key: str = "local", servers: int = 1, startup_timeout: float = 120.0) -> LocalFleet:
    """A tracker and servers on 127.0.0.1 for tests and trials: ``with local_fleet("k") as device:``."""
    return LocalFleet(key, servers, startup_timeout)
