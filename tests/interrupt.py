"""Interrupting a run right after it saved an epoch, as Ctrl-C would: for the tests of --resume."""

from contextlib import contextmanager

import pytest


@contextmanager
def interrupted_after_saves(monkeypatch, module, saves: int = 1):
    """Within the block, `module.save_state` writes its state as usual, and its `saves`-th call then
    raises KeyboardInterrupt; the block must end that way. The real function is back afterwards."""
    real, calls = module.save_state, []

    def save_then_interrupt(path, state):
        real(path, state)
        calls.append(path)
        if len(calls) == saves:
            raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_state", save_then_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(module, "save_state", real)
