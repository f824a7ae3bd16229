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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import selectors
import socket
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

# serve(sock) answers one request that is waiting on sock; False: drop the connection
Serve = Callable[[socket.socket], bool]


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

    def adopt(self, sock: socket.socket, serve: Serve) -> None:
        """Hand a connection to the compute thread: `serve(sock)` runs on it whenever sock is
        readable (or holds buffered TLS data); it closes sock when serve returns False or raises.
        Give sock a timeout: a peer that stalls mid-request holds up every connection."""
        future = self.submit(self._register, sock, serve)
        future.add_done_callback(lambda f: f.exception() is not None and sock.close())  # refused: not leaked

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

    def _register(self, sock: socket.socket, serve: Serve) -> None:
        self._selector.register(sock, selectors.EVENT_READ, serve)
        self._serve_buffered(sock, serve)  # TLS may already hold the first call's bytes

    def _drop(self, sock: socket.socket) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        try:
            sock.close()
        except OSError:
            pass

    def _serve(self, sock: socket.socket, serve: Serve) -> None:
        if self._serve_once(sock, serve):
            self._serve_buffered(sock, serve)

    def _serve_buffered(self, sock: socket.socket, serve: Serve) -> None:
        # a TLS socket may have decrypted the next request already: select() would not see it
        pending = getattr(sock, "pending", None)
        while pending is not None and sock.fileno() >= 0 and pending() > 0:
            if not self._serve_once(sock, serve):
                return

    def _serve_once(self, sock: socket.socket, serve: Serve) -> bool:
        try:
            keep = serve(sock)
        except Exception:  # serve answers what it can; anything escaping it ends the connection
            log.exception("compute thread: connection handler failed; closing the connection")
            keep = False
        if not keep:
            self._drop(sock)
        return keep

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
                for key, _ in self._selector.select():
                    if key.data is None:
                        self._run_jobs()
                    elif not self._stopping:
                        self._serve(key.fileobj, key.data)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for key in list(self._selector.get_map().values()):
            if key.data is not None:
                self._drop(key.fileobj)
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
