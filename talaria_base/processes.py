"""`talaria <command>` child processes: start, wait for /health, read their output, stop.

One helper for everything that runs `talaria cloud` / `talaria proxy` as a subprocess, exactly
as a user starts them (`python -m talaria_cli.main <command> ...`): `talaria up`, the tests,
the benchmarks and the privacy evaluation. Standard library only (the client image imports it).

A child's output goes either to a log file (`log_path`, appended) or, line by line, to a
callback (`on_line`, e.g. echo with a prefix); `log_tail()` returns its last output either way.
On Linux a child is started with PR_SET_PDEATHSIG, so it gets SIGTERM when the thread that
started it dies, even by SIGKILL: a killed `talaria up` or test run leaves no server behind.
Start children from a long-lived thread (normally the main one), or pass die_with_parent=False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Mapping, Sequence

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class NotReady(RuntimeError):
    """The child exited before its health check passed; the message ends with its last output."""


class NotReadyInTime(NotReady, TimeoutError):
    """The child was still running but not healthy when the timeout ran out."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it; another process may take it later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _prctl():
    """libc's prctl on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def parent_death_preexec(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A Popen preexec_fn that makes the child receive `sig` when its parent dies (None if unsupported)."""
    prctl = _prctl()  # looked up before the fork: the child only calls it
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will send the signal
            os.kill(os.getpid(), sig)

    return preexec


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # after the ')' of the command name: field 3 (state) is index 0, utime/stime are fields 14/15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ManagedProcess:
    """A running `talaria <command> *args` child serving HTTP at `url`.

    env: variables set over this process's environment (PYTHONUNBUFFERED=1 is always set).
    log_path: file the output is appended to; on_line: called with each output line instead
    (from a reader thread); neither: the child inherits this process's stdout and stderr.
    new_session: start the child in its own session, out of reach of a terminal's Ctrl-C.
    Subclasses may change the default timeouts of wait_ready and stop (seconds) below.
    """

    ready_timeout = 120.0
    stop_timeout = 15.0

    def __init__(self, command: str, args: Sequence[str], *, url: str, env: Mapping[str, str] | None = None,
                 log_path: str | Path | None = None, on_line: Callable[[str], None] | None = None,
                 new_session: bool = False, die_with_parent: bool = True, tail_lines: int = 40):
        if log_path is not None and on_line is not None:
            raise ValueError("give log_path or on_line, not both")
        self.name, self.url = command, url
        self.args = [sys.executable, "-m", "talaria_cli.main", command, *args]
        self.log_path = Path(log_path) if log_path is not None else None
        self._lines: deque[str] = deque(maxlen=tail_lines)
        self._on_line, self._reader = on_line, None
        out = open(self.log_path, "ab") if self.log_path is not None else (subprocess.PIPE if on_line else None)
        try:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT if out is not None else None,
                stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=new_session, preexec_fn=parent_death_preexec() if die_with_parent else None)
        finally:
            if self.log_path is not None:
                out.close()  # the child holds its own copy
        if on_line is not None:
            self._reader = threading.Thread(target=self._pump, name=f"{command}-output", daemon=True)
            self._reader.start()

    @classmethod
    def on_port(cls, command: str, args: Sequence[str], port: int | None = None, host: str = "127.0.0.1",
                **kwargs):
        """Start `talaria <command> *args --port P` (P: `port`, or a free one) with url http://host:P."""
        port = port or free_port(host)
        return cls(command, [*args, "--port", str(port)], url=f"http://{host}:{port}", **kwargs)

    def _pump(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self._lines.append(line)
            self._on_line(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def healthy(self, path: str = "/health") -> bool:
        import urllib.error
        import urllib.request  # not at the top: `talaria --help` imports this module

        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # ours is local: ignore *_proxy
        try:
            with no_proxy.open(self.url + path, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):  # refused, non-200 (HTTPError), timeout
            return False

    def wait_ready(self, path: str = "/health", timeout: float | None = None, stop: threading.Event | None = None):
        """Return self once GET url+path answers 200; raise NotReady (with the log tail) if the child
        exits first, NotReadyInTime after `timeout` seconds. Returns early, unready, once `stop` is set."""
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        stop = stop or threading.Event()
        while not stop.is_set():
            if not self.alive():
                raise NotReady(f"the {self.name} exited with code {self.proc.returncode} while starting; "
                               f"its last output:\n{self.last_output()}")
            if self.healthy(path):
                return self
            if time.monotonic() > deadline:
                raise NotReadyInTime(f"the {self.name} was not healthy at {self.url}{path} after {timeout:.0f}s; "
                                     f"its last output:\n{self.last_output()}")
            stop.wait(0.1)
        return self

    def log_tail(self, chars: int = 5000) -> str:
        """The last `chars` characters of the output (from the log file, or the last lines kept)."""
        if self.log_path is None:
            if self._reader is not None and not self.alive():
                self._reader.join(timeout=2)  # let the pipe drain after an exit
            return "\n".join(self._lines)[-chars:]
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4 * chars))
                return fh.read().decode("utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def last_output(self) -> str:
        """log_tail(), indented for an error message."""
        return "\n".join(f"    {line}" for line in self.log_tail().splitlines()) or "    (no output)"

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> bool:
        """Send `sig`, wait up to `timeout` s, then SIGKILL. True if it had to be killed. Never hangs:
        a child that survives even SIGKILL for 10 s (stuck in the kernel) is left behind."""
        killed = False
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                killed = True
                self.proc.kill()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        if self._reader is not None:
            self._reader.join(timeout=2)
        return killed

