"""How long the rest of a run will take, said after each epoch: long CPU runs should say so early."""

from __future__ import annotations


def time_left(history: list[dict], epochs: int) -> str:
    """The rest of the run at the pace of its last few epochs, e.g. "about 2 h 10 min left"."""
    if not history or history[-1]["epoch"] >= epochs:
        return ""
    recent = [row["seconds"] for row in history[-3:]]  # recent epochs: the pace of this machine now
    seconds = (epochs - history[-1]["epoch"]) * sum(recent) / len(recent)
    if seconds < 60:
        return "under a minute left"
    minutes = round(seconds / 60)
    text = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
    return f"about {text} left"


def epochs_within(budget_s: float, elapsed_s: float, epoch_s: float, done: int, asked: int) -> int:
    """How many epochs a run can have in all within `budget_s` seconds: the `done` ones, plus as many as the
    time left holds at `epoch_s` each (the pace so far); never more than `asked`, nor fewer than `done`."""
    more = int(max(budget_s - elapsed_s, 0.0) // max(epoch_s, 1e-9))
    return max(done, min(asked, done + more))
