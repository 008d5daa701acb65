"""The pace of a run: how long the rest will take (said after each epoch: long CPU runs should say so
early), and how many epochs a time budget holds (`--time-budget`, in train and pretrain)."""

from __future__ import annotations

import time


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


def check_budget(minutes: float) -> None:
    """A time budget is zero (no limit) or some minutes: the check both train's and pretrain's configs make."""
    if minutes < 0:
        raise ValueError("time_budget must be zero (no limit) or more minutes")


def epochs_within(budget_s: float, elapsed_s: float, epoch_s: float, done: int, asked: int) -> int:
    """How many epochs a run can have in all within `budget_s` seconds: the `done` ones, plus as many as the
    time left holds at `epoch_s` each (the pace so far); never more than `asked`, nor fewer than `done`."""
    more = int(max(budget_s - elapsed_s, 0.0) // max(epoch_s, 1e-9))
    return max(done, min(asked, done + more))


def budget_decision(
    minutes: float, asked: int, history: list[dict], resumed_epochs: int, started: float
) -> dict:
    """After the first epoch: how many of the `asked` epochs fit `minutes` at the pace of that epoch, as a
    run records it. Elapsed time counts from this session's `started` (a `time.perf_counter()`), plus
    earlier sessions' epochs (their `history` rows, not their start-up)."""
    elapsed = _elapsed(history, resumed_epochs, started)
    epoch_s = history[-1]["seconds"]
    epochs = epochs_within(minutes * 60, elapsed, epoch_s, len(history), asked)
    return {"minutes": minutes, "epochs_asked": asked, "epochs": epochs,
            "first_epoch_seconds": epoch_s, "seconds_before_the_second_epoch": round(elapsed, 1)}  # fmt: skip


def budget_after_epoch(minutes: float, asked: int, budget: dict | None, history: list[dict], resumed_epochs: int,
                       started: float, revise: bool) -> dict | None:  # fmt: skip
    """The time budget's new decision after an epoch, or None: the first after the first epoch, then fewer
    epochs if the machine slows (`revise`: the session that measured it; a resumed run keeps its epochs)."""
    if not minutes:
        return None
    if budget is None:
        return budget_decision(minutes, asked, history, resumed_epochs, started)
    return budget_revision(budget, history, resumed_epochs, started) if revise else None


def budget_revision(budget: dict, history: list[dict], resumed_epochs: int, started: float) -> dict | None:
    """After a later epoch: `budget` with fewer epochs if the machine has slowed since the first (another
    job on it, a busier server) so that the rest, at the mean pace of the epochs so far, would end more
    than half an epoch past the minutes given; None while they fit. The mean, not the last few epochs:
    one slow epoch would cut epochs for good (benchmarks/budget_replay.py). A schedule once shortened is
    never lengthened again: the epochs already run followed it."""
    done = len(history)
    epoch_s = sum(row["seconds"] for row in history[resumed_epochs:]) / (done - resumed_epochs)
    elapsed = _elapsed(history, resumed_epochs, started)
    if elapsed + (budget["epochs"] - done) * epoch_s <= budget["minutes"] * 60 + epoch_s / 2:
        return None
    epochs = epochs_within(budget["minutes"] * 60, elapsed, epoch_s, done, budget["epochs"])
    if epochs == budget["epochs"]:
        return None
    revision = {"after_epoch": done, "seconds_an_epoch": round(epoch_s, 1), "elapsed_seconds": round(elapsed, 1),
                "epochs": epochs}  # fmt: skip
    return budget | {"epochs": epochs, "revisions": [*budget.get("revisions", []), revision]}


def _elapsed(history: list[dict], resumed_epochs: int, started: float) -> float:
    return time.perf_counter() - started + sum(row["seconds"] for row in history[:resumed_epochs])


def budget_line(budget: dict) -> str:
    """What the budget's latest decision was, as train and pretrain say it."""
    if budget.get("revisions"):
        last = budget["revisions"][-1]
        return (
            f"time budget {budget['minutes']:g} min: the epochs have slowed to {last['seconds_an_epoch']:.0f} s "
            f"({last['elapsed_seconds']:.0f} s so far): {last['epochs']} of the {budget['epochs_asked']} epochs "
            "asked fit now; the learning-rate schedule is shortened to end with them"
        )
    fit = (f"all {budget['epochs_asked']} epochs asked fit" if budget["epochs"] == budget["epochs_asked"] else
           f"{budget['epochs']} of the {budget['epochs_asked']} epochs asked fit; the learning-rate schedule is "
           "shortened to end with them")  # fmt: skip
    return (
        f"time budget {budget['minutes']:g} min: {budget['seconds_before_the_second_epoch']:.0f} s so far, "
        f"{budget['first_epoch_seconds']:.0f} s an epoch: {fit}"
    )
