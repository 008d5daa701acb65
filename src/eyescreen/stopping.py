"""Stopping a training run cleanly: SIGTERM (a scheduler's or a job script's "stop now") or a first
Ctrl-C lets the epoch in progress finish and its checkpoint be written, so that `--resume` loses
nothing; a second Ctrl-C stops at once."""

from __future__ import annotations

import signal
import sys
import threading


class StopRequested(Exception):
    """Training stopped on request after a finished epoch, its checkpoint written."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.exit_code = 128 + signal.Signals[signal_name].value  # what the shell reports for that signal


class StopRequest:
    """Within the block, SIGTERM and a first SIGINT set `reason` instead of ending the process. Only in
    the main thread (Python's signal handlers live there); elsewhere `reason` stays None."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def stop_if_asked(self, done: int, total: int, out, how_to_continue: str) -> None:
        """After epoch `done` is written: raise StopRequested when a stop was asked and epochs remain."""
        if self.reason and done < total:
            raise StopRequested(
                f"stopped ({self.reason}) after epoch {done} of {total}, written to {out}; {how_to_continue}",
                self.reason,
            )

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.reason:
            raise KeyboardInterrupt  # the second Ctrl-C: now
        self.reason = signal.Signals(signum).name
        print(
            f"\n{self.reason}: stopping once this epoch is finished and written "
            "(Ctrl-C again to stop at once, losing it)",
            file=sys.stderr,
            flush=True,
        )
