"""Stopping a training run cleanly: SIGTERM/SIGINT stop the loop after the step in progress."""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop stops after the step in progress."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: signals stay with their owner
            pass
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signum = signum
        log.warning("%s: stopping after this step and writing a checkpoint", signal_name(signum))

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def ignore_sigint(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
