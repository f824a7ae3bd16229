"""`ComputeThread`: the one thread of the cloud process that does tensor work.

Why one thread: torch's CPU kernels run on OpenMP, and GNU OpenMP gives every thread that starts
a parallel region its own team of workers. Once the process holds more OpenMP threads than
cores (two teams of 2 on 2 cores, e.g. one from loading the model on the main thread and one
in a connection thread), libgomp stops letting idle workers spin and puts them to sleep after
~100 spins, so every GEMM pays a futex wake-up of its workers. Measured on a 2-core VM with the
0.5B-shaped model and 2 threads, one decode sweep of 97 calls: 75 ms when all calls run on the
thread that loaded the model, 104 ms from a second thread; over the frame socket 124 ms before
this module, 90 ms after. So the model is loaded, every GEMM is run and every large tensor is
encoded on this thread, and nowhere else:

- frame connections are adopted by it after their handshake (`adopt`): it waits on all of them
  with a selector and serves each call inline, so a call costs no thread hop;
- REST and WebSocket calls, and anything else, are submitted (`submit` / `run`) and wake it
  through a socket pair.

Because this one thread serves everyone, it never waits on a socket: adopted connections are
non-blocking, a `Connection` takes what has arrived and says whether it has a whole request yet,
writes what the socket accepts and keeps the rest, and carries a deadline for the request or
answer in progress. A peer that sends one byte a second costs a few microseconds a second and is
cut off at its deadline; everyone else is served in between.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import selectors
import socket
import threading
import time
from typing import Any, Callable, Protocol

log = logging.getLogger(__name__)


class Connection(Protocol):
    """An adopted, non-blocking connection; every method runs on the compute thread and returns
    at once. `readable`/`writable` return False to have the connection dropped (and closed)."""

    sock: socket.socket

    def readable(self) -> bool: ...  # bytes arrived: take them, answer a request that is complete

    def writable(self) -> bool: ...  # the socket accepts bytes again: send more of the answer

    @property
    def wants_write(self) -> bool: ...  # an answer is waiting to go out (then nothing is read)

    @property
    def deadline(self) -> float | None: ...  # time.monotonic() by which the work in progress must end

    def buffered(self) -> bool: ...  # readable bytes the selector cannot see (decrypted TLS)


class ComputeThread:
    def __init__(self, threads: int | None = None, name: str = "talaria-compute"):
        self.threads = threads
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()  # a job is either queued before shutdown drains, or refused
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._ready: set[Connection] = set()  # connections with buffered TLS bytes to serve
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.ident: int | None = None

    def start(self) -> "ComputeThread":
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def connections(self) -> int:
        """Adopted connections being served now."""
        return sum(1 for key in list(self._selector.get_map().values()) if key.data is not None)

    # ---- work from other threads -------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args, **kwargs) -> concurrent.futures.Future:
        """Run fn(*args, **kwargs) on the compute thread; its result or exception in the future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._stopping or not self.alive:
                future.set_exception(RuntimeError("the compute thread is not running"))
                return future
            self._jobs.put((future, fn, args, kwargs))
        self._wake()
        return future

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Blocking `submit`; runs inline when already on the compute thread."""
        if threading.get_ident() == self.ident:
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """`submit` for coroutines: await the result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def adopt(self, conn: Connection) -> None:
        """Hand a non-blocking connection to the compute thread; it calls conn.readable() or
        conn.writable() when the socket is ready and closes it once either returns False, raises,
        or conn.deadline passes."""
        future = self.submit(self._register, conn)
        future.add_done_callback(lambda f: f.exception() is not None and conn.sock.close())  # refused: not leaked

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the job at hand, fail queued ones, close adopted connections, end the thread."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._wake()
        if self._thread.is_alive() and threading.get_ident() != self.ident:
            self._thread.join(timeout)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):  # a full pipe already wakes it; a closed one is stopping
            pass

    # ---- on the compute thread ---------------------------------------------------------------

    def _register(self, conn: Connection) -> None:
        conn.sock.setblocking(False)
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        if conn.buffered():  # TLS may already hold the first call's bytes
            self._ready.add(conn)

    def _drop(self, conn: Connection) -> None:
        self._ready.discard(conn)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        try:
            conn.sock.close()
        except OSError:
            pass

    def _serve(self, conn: Connection, mask: int) -> None:
        try:
            keep = True
            if mask & selectors.EVENT_WRITE:
                keep = conn.writable()
            if keep and mask & selectors.EVENT_READ and not conn.wants_write:
                keep = conn.readable()
        except Exception:  # a connection answers what it can; anything escaping it ends the connection
            log.exception("compute thread: connection handler failed; closing the connection")
            keep = False
        if not keep:
            self._drop(conn)
            return
        events = selectors.EVENT_WRITE if conn.wants_write else selectors.EVENT_READ
        if self._selector.get_key(conn.sock).events != events:
            self._selector.modify(conn.sock, events, conn)
        if events == selectors.EVENT_READ and conn.buffered():
            self._ready.add(conn)  # select() would not see it
        else:
            self._ready.discard(conn)

    def _connections(self) -> list[Connection]:
        return [key.data for key in self._selector.get_map().values() if key.data is not None]

    def _timeout(self) -> float | None:
        """Seconds select() may sleep: 0 with buffered TLS bytes, else until the nearest deadline."""
        if self._ready:
            return 0.0
        deadlines = [d for d in (conn.deadline for conn in self._connections()) if d is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in self._connections():
            deadline = conn.deadline
            if deadline is not None and deadline <= now:
                log.info("compute thread: a connection missed its deadline mid-request; closing it")
                self._drop(conn)

    def _run_jobs(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while not self._stopping:  # once stopping, queued jobs are failed by _shutdown
            try:
                future, fn, args, kwargs = self._jobs.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001  (handed to the waiting caller)
                future.set_exception(exc)

    def _run(self) -> None:
        self.ident = threading.get_ident()
        import torch

        # pinned on this thread, so that the main thread can drop to 1 without affecting it
        torch.set_num_threads(self.threads or torch.get_num_threads())
        try:
            while not self._stopping:
                for key, mask in self._selector.select(self._timeout()):
                    if key.data is None:
                        self._run_jobs()
                    elif not self._stopping:
                        self._serve(key.data, mask)
                for conn in list(self._ready):
                    if not self._stopping and conn in self._ready:
                        self._serve(conn, selectors.EVENT_READ)
                self._expire()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for conn in self._connections():
            self._drop(conn)
        with self._lock:
            self._stopping = True  # also when the loop itself failed
        while True:
            try:
                future, *_ = self._jobs.get_nowait()
            except queue.Empty:
                break
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("the compute thread stopped"))
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
