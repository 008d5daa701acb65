"""The CSV of a batch job (`predict`, `explain`), written so that an interrupted job can resume.

Rows are flushed a chunk at a time. With `resume`, the complete rows of the earlier run are kept (a row
torn by the interruption is dropped) and their keys are skipped, so only the rest is computed. A side
file records which checkpoint wrote the rows: resuming with another checkpoint is refused, because a
CSV that mixes two models' predictions looks like one model's.

Also how a batch job reports the files it could not use: a few on the console, all of them kept.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .checkpoint import file_sha256

SHOWN = 20  # problem lines a batch job prints; the rest are counted, and kept where it says


def print_problems(kind: str, messages: list[str], kept_in: str | Path, limit: int = SHOWN) -> None:
    """The first `limit` messages on stderr as `kind: message`, then how many more and where all of them
    are: a folder of 10,000 photographs from another camera may warn on every one."""
    for message in messages[:limit]:
        print(f"{kind}: {message}", file=sys.stderr)
    if len(messages) > limit:
        print(
            f"{kind}: {len(messages) - limit} more not shown; all {len(messages)} are in {kept_in}",
            file=sys.stderr,
        )


def keep_problems(kind: str, messages: list[str], path: Path) -> None:
    """For a job whose other outputs have no place for them: every message in `path`, one a line, and
    the first few on stderr. Without any, an earlier run's list is removed."""
    if not messages:
        path.unlink(missing_ok=True)
        return
    path.write_text("".join(f"{m}\n" for m in messages))
    print_problems(kind, messages, path)


class BatchOutput:
    """Context manager: `done` holds the keys already written (`kept_rows` the rows, as dicts), `write(row)`
    adds a row, `flush()` makes the rows so far survive a kill. `settings` (e.g. the CAM method) must also
    match for a resume. `is_done(row)` says whether an earlier row counts as finished (rows
    that are not, e.g. unreadable files, are computed again)."""

    def __init__(
        self,
        path: str | Path,
        header: list[str],
        checkpoint: str | Path | None,
        resume: bool = False,
        key: str = "file",
        is_done: Callable[[dict], bool] = lambda row: not row.get("error"),
        settings: dict | None = None,
    ):
        self.path, self.header, self.key = Path(path), list(header), key
        self.job_file = self.path.with_name(self.path.name + ".job.json")
        known = checkpoint is not None  # a model handed over in Python: its weights are not fingerprinted
        self.job = {
            "checkpoint": str(checkpoint) if known else None,
            "checkpoint_sha256": file_sha256(checkpoint) if known else None,
        }
        self.job["settings"] = settings or {}
        self.resume, self.is_done = resume, is_done
        self.done: set[str] = set()
        self.kept_rows: list[dict] = []

    def __enter__(self) -> BatchOutput:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = self._earlier_rows() if self.resume and self.path.exists() else []
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([self.header] + kept)
        os.replace(tmp, self.path)
        self.job_file.write_text(json.dumps(self.job, indent=2) + "\n")
        self.kept_rows = [dict(zip(self.header, row, strict=True)) for row in kept]
        self.done = {row[self.key] for row in self.kept_rows}
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        return self

    def _earlier_rows(self) -> list[list[str]]:
        earlier = json.loads(self.job_file.read_text()) if self.job_file.exists() else {}
        if earlier.get("checkpoint_sha256") != self.job["checkpoint_sha256"]:
            was = earlier.get("checkpoint", "an unknown checkpoint")
            raise ValueError(
                f"{self.path}: written by {was}, not by {self.job['checkpoint']} (or its record "
                f"{self.job_file.name} is missing); resume with the same checkpoint, or choose another --out"
            )
        if earlier.get("settings", {}) != self.job["settings"]:
            raise ValueError(
                f"{self.path}: written with {earlier.get('settings')}, not {self.job['settings']}; resume with "
                "the same settings, or choose another --out"
            )
        with open(self.path, newline="") as f:
            text = f.read()
        if not text.endswith("\n"):  # the last row was cut off mid-write
            text = text[: text.rfind("\n") + 1]
        rows = list(csv.reader(io.StringIO(text, newline="")))
        if not rows or rows[0] != self.header:
            raise ValueError(f"{self.path}: its columns are not this job's; choose another --out")
        complete = [r for r in rows[1:] if len(r) == len(self.header)]
        return [r for r in complete if self.is_done(dict(zip(self.header, r, strict=True)))]

    @property
    def kept(self) -> int:
        return len(self.kept_rows)

    def write(self, row: list) -> None:
        self._writer.writerow(row)

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def __exit__(self, *exc) -> None:
        self._file.close()
