"""Stopping a run cleanly when it is asked to: SIGTERM (SLURM, Kubernetes, ``kill``) and SIGINT (Ctrl-C).

The first signal only raises a flag; the training loop reads it after each
step, writes a checkpoint at that step and exits with the status a shell
reports for the signal (128 + its number: 143 for SIGTERM, 130 for SIGINT).
A second signal ends the process at once, with the same status.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
    """A context manager that turns SIGTERM/SIGINT into a request to stop; call it to ask whether one came.

    Outside the main thread (where Python cannot install handlers) it installs nothing and never asks to stop.
    """

    def __init__(self):
        self.received: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def __call__(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by this signal: 128 + its number."""
        return 128 + int(self.received or 0)

    def _handle(self, number: int, frame) -> None:
        if self.received is not None:  # the second signal: no more waiting
            os.write(
                2,
                f"\n{signal.Signals(number).name} again: exiting now, without a checkpoint of this "
                f"step (the last one written is whole)\n".encode(),
            )
            os._exit(128 + number)
        self.received = number
