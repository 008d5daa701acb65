"""What `--time-budget` decides on a finished run's own epoch times: the first decision alone (before
commit 4308b51) against the first decision plus revisions when the epochs slow (since), replayed on the
epoch seconds the run logged.

    python benchmarks/budget_replay.py RUN [--minutes 60]

RUN is a run trained with `--time-budget` (its run_info.json holds the start-up before the first epoch)
or without one (start-up taken as 0; --minutes required). Elapsed time is the start-up plus the logged
epochs (validation included; the checkpoint writes between epochs, a few seconds, are not logged), so
the replayed end is a lower bound of what the clock showed.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from eyescreen import pace


def replay(seconds: list[float], startup: float, minutes: float, asked: int, revise: bool):
    """(epochs run, seconds at their end, [(after epoch, epochs then)]) for logged epoch `seconds`."""
    history, budget, changes = [], None, []
    for k, s in enumerate(seconds, 1):
        history.append({"epoch": k, "seconds": s})
        started = time.perf_counter() - startup - sum(seconds[:k])  # the clock after epoch k
        decided = pace.budget_after_epoch(minutes, asked, budget, history, 0, started, revise)
        if decided is not None:
            budget = decided
            changes.append((k, budget["epochs"]))
        if k >= budget["epochs"]:
            return k, startup + sum(seconds[:k]), changes
    raise SystemExit(
        f"the run logged {len(seconds)} epochs, fewer than the budget kept: replay needs them all"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--minutes", type=float)
    args = parser.parse_args()
    with open(args.run / "metrics.csv", newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    info = json.loads((args.run / "run_info.json").read_text()).get("time_budget")
    if info is None and args.minutes is None:
        raise SystemExit(f"{args.run} was trained without --time-budget: give --minutes")
    minutes = args.minutes or info["minutes"]
    asked = info["epochs_asked"] if info else len(seconds)
    startup = info["seconds_before_the_second_epoch"] - info["first_epoch_seconds"] if info else 0.0
    print(f"{args.run}: {len(seconds)} epochs logged, budget {minutes:g} min, {asked} epochs asked, "
          f"{startup:.0f} s before the first epoch")  # fmt: skip
    for name, revise in (("first decision only", False), ("with revisions", True)):
        epochs, end, changes = replay(seconds, startup, minutes, asked, revise)
        steps = ", ".join(f"after epoch {k}: {n}" for k, n in changes)
        print(f"  {name}: {epochs} epochs, ending at {end / 60:.1f} min ({end / 60 - minutes:+.1f}); {steps}")


if __name__ == "__main__":
    main()
