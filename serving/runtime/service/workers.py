"""Several worker processes on one listening socket (`anonlab serve --workers N`): each is
forked before any model is loaded, loads its own, and serves the socket it inherited; the
kernel hands each new connection to one of them. SIGTERM or Ctrl-C to the parent is passed on
to every worker, which stops as one process does (admitted images finish)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable

from serving.runtime.errors import ServingError

log = logging.getLogger(__name__)


def run_workers(count: int, sock: socket.socket, serve: Callable[[socket.socket], int]) -> int:
    """Run `serve(sock)` in `count` forked processes until a signal stops them; 0 when every
    worker stopped cleanly. A worker that exits on its own (its models failed to load, say)
    stops the others: ServingError naming its status."""
    context = multiprocessing.get_context("fork")  # nothing heavy is loaded yet: each loads its own
    workers = [
        context.Process(target=_worker, args=(serve, sock), name=f"anonlab-worker-{i}")
        for i in range(count)
    ]
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping %d workers", signal.Signals(signum).name, count)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in workers:
            worker.start()
        log.info("%d worker processes: %s", count, ", ".join(str(w.pid) for w in workers))
        failed = None
        while not stop.wait(0.25):
            failed = next((w for w in workers if w.exitcode is not None), None)
            if failed is not None:
                break
    finally:
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()
    if failed is not None:
        raise ServingError(
            f"worker process {failed.pid} exited with status {failed.exitcode} (its messages "
            "are above): all workers are stopped"
        )
    codes = [w.exitcode for w in workers]
    return 0 if all(code == 0 for code in codes) else 1


def _worker(serve: Callable[[socket.socket], int], sock: socket.socket) -> None:
    """One worker: `serve(sock)`, its ServingError a message and status 2 (as for the command)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)  # `serve` sets its own
    try:
        code = serve(sock)
    except ServingError as exc:
        log.error("%s", exc)
        code = 2
    sys.exit(code)
