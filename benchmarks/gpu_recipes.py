"""Issue 7 on one GPU: the best CPU recipe (`graham-findings`) at the photographs' own 256 px, trained
as long as on the CPU and longer, several runs side by side on the baseline's patient split.

One ResNet-18 at batch 32 leaves a large GPU mostly idle (each step is a few milliseconds of kernels
and as long again of Python), so the runs are started together. A device lease is short and the speed
is not known in advance: once each run has logged a few epochs, a run whose projected end falls after
the deadline stops the lowest-priority run still going (said so in the summary), leaving the GPU to the
others. A stopped run resumes on that machine only: its optimiser state is too large to travel back.
Finished runs are then evaluated on validation and on test, once.

    python benchmarks/gpu_recipes.py --data MANIFEST --split SPLIT --out runs/gpu --deadline 450
    # SPLIT: benchmarks/splits/odir5k-4class-seed0.csv, the split of every ODIR-5K number in RESULTS.md
    python benchmarks/gpu_recipes.py ... --pack OUTDIR   # logs and reports as one archive, and the
                                                         # best run's checkpoint in chunks
    python benchmarks/gpu_recipes.py ... --pack OUTDIR --pack-half  # every finished run's, as fp16
                                                         # copies, as many as fit (two ResNet-18s)
    python benchmarks/gpu_recipes.py ... --only f256-e120-s1 f256-e120-s2 f256-e120-s3 \
        --ensemble f256-e120-s1 f256-e120-s2 f256-e120-s3   # then one `eyescreen ensemble` of them, here
    # a dry run on a CPU, everything small:
    python benchmarks/gpu_recipes.py ... --set --image-size 64 --epochs 3 --deadline 120
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tarfile
import time
from multiprocessing import Pool
from pathlib import Path

# (name, train options), most important first: the deadline stops runs from the end of this list.
RUNS = [
    ("f256-s1", ["--image-size", "256", "--seed", "1"]),
    ("f256-s2", ["--image-size", "256", "--seed", "2"]),
    ("f256-e120-s1", ["--image-size", "256", "--seed", "1", "--epochs", "120"]),
    ("f256-s3", ["--image-size", "256", "--seed", "3"]),
    # more seeds of the 120-epoch run (= the preset graham-findings-256, the GPU default)
    ("f256-e120-s2", ["--image-size", "256", "--seed", "2", "--epochs", "120"]),
    ("f256-e120-s3", ["--image-size", "256", "--seed", "3", "--epochs", "120"]),
    ("f256-e120-s4", ["--image-size", "256", "--seed", "4", "--epochs", "120"]),
    # a longer schedule (run once: validation 0.881, under its bar of 0.895; RESULTS "200 epochs at 256 px"),
    # then deeper networks (level with ResNet-18 at 128 px on the CPU)
    ("f256-e200-s1", ["--image-size", "256", "--seed", "1", "--epochs", "200"]),
    ("r34-f256-e120-s1", ["--image-size", "256", "--seed", "1", "--epochs", "120", "--model", "resnet34"]),
    ("r50-f256-e120-s1", ["--image-size", "256", "--seed", "1", "--epochs", "120", "--model", "resnet50"]),
    # more pixels per lesion for the weak classes (normal, DR): the 256-px photographs up-sampled to 320
    ("f320-e120-s1", ["--image-size", "320", "--seed", "1", "--epochs", "120"]),
    # weights averaged over ~8 epochs (1000 steps): the 120-epoch curves fall over their last 20 epochs
    ("ema-f256-e120-s1", ["--image-size", "256", "--seed", "1", "--epochs", "120", "--ema", "0.999"]),
    # mixup against the fall over the last epochs
    ("mix-f256-e120-s1", ["--image-size", "256", "--seed", "1", "--epochs", "120", "--mixup", "0.2"]),
    # without the findings head (data with no diagnoses column): = the preset graham-augment-256
    ("nofind-f256-e120-s1", ["--image-size", "256", "--seed", "1", "--epochs", "120", "--findings", ""]),
    # the findings head carries +0.03 at 256 px against +0.006 at 128 px: does its loss at full weight
    # (level at 128 px) help where it matters more?
    (
        "fw1-f256-e120-s1",
        ["--image-size", "256", "--seed", "1", "--epochs", "120", "--findings-weight", "1.0"],
    ),
    # stronger weight decay (0.05 -> 0.2, never varied before) against the fall over the last epochs
    ("wd02-f256-e120-s1", ["--image-size", "256", "--seed", "1", "--epochs", "120", "--weight-decay", "0.2"]),
    # the patient's age as more supervision: "age > t" at each training decile beside the keywords
    (
        "age-f256-e120-s1",
        ["--image-size", "256", "--seed", "1", "--epochs", "120", "--findings", "keywords,age"],
    ),
    # both eyes as one model (issue 5's negative was at 10 epochs, 128 px, without the findings head),
    # at the default's budget; scored per eye like the others (its eval-*/eyes/ report)
    (
        "bino-f256-e120-s1",
        ["--image-size", "256", "--seed", "1", "--epochs", "120", "--model", "resnet18-binocular"],
    ),
    # half the width (resnet18-half, 32 to 256 channels): on the CPU seed 1 was level with the full-width GPU
    # run, validation 0.882 against 0.885 (RESULTS "Half the width at 256 px"); seeds side by side, to ensemble
    (
        "half-f256-e120-s1",
        ["--image-size", "256", "--seed", "1", "--epochs", "120", "--model", "resnet18-half"],
    ),
    (
        "half-f256-e120-s2",
        ["--image-size", "256", "--seed", "2", "--epochs", "120", "--model", "resnet18-half"],
    ),
    (
        "half-f256-e120-s3",
        ["--image-size", "256", "--seed", "3", "--epochs", "120", "--model", "resnet18-half"],
    ),
    # born again: the default's seed 1 taught by its own finished run (this call's or an earlier one's on
    # this machine); last: born again at 128 px on the CPU it was level on test (RESULTS "Knowledge distillation")
    (
        "kd-f256-e120-s1",
        ["--image-size", "256", "--seed", "1", "--epochs", "120", "--teacher", "@f256-e120-s1"],
    ),
]
PRESET = "graham-findings"
# Issue 7's goal, per eye on validation with the fellow eye (balanced accuracy: the decision rule's). An
# ensemble's test split is read only if its validation reaches both: the three GPU seeds averaged had
# reached 0.897 / 0.738 there, and their test was left unread.
ENSEMBLE_BAR = {"macro_auc": 0.90, "balanced_accuracy": 0.75}
FINISH_GRACE = 60  # seconds past the deadline for a run that has logged its last epoch
WEIGHTS_LIMIT = 48 * 2**20  # bytes of weights packed to travel back
CLASSES = "normal,dr,amd,glaucoma"


def option(args: list[str], name: str) -> str:
    """The last value given for `name` (later options override earlier ones, as argparse does), else
    the preset's."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
    if values:
        return values[-1]
    from eyescreen.config import PRESETS

    return str(PRESETS[PRESET][name[2:].replace("-", "_")])


def chosen_runs(opts) -> list[tuple[str, list[str]]]:
    """(name, train options) of the runs asked for, most important first: in the order --only names
    them, else RUNS' order; the options given for every run (--set) last."""
    known = dict(RUNS)
    if opts.only:
        unknown = [n for n in opts.only if n not in known]
        if unknown:
            raise SystemExit(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return [(n, known[n] + opts.set) for n in dict.fromkeys(opts.only)]
    return [(n, a + opts.set) for n, a in RUNS]


def warm_cache(manifest: Path, preprocessings: set[tuple[int, str]], workers: int) -> None:
    """Preprocess every image once, on all cores, before the runs start (each would otherwise do it)."""
    with open(manifest, newline="") as f:
        paths = [manifest.parent / row["image"] for row in csv.DictReader(f)]
    for size, enhance in sorted(preprocessings):
        t0 = time.perf_counter()
        with Pool(workers, initializer=_init_cache, initargs=(size, enhance)) as pool:
            failed = sum(pool.map(_cache_one, paths, chunksize=32))
        print(
            f"cache {size} px, {enhance}: {len(paths)} images ({failed} unreadable) in {time.perf_counter() - t0:.0f}s"
        )


_CACHE = None


def _init_cache(size: int, enhance: str) -> None:
    global _CACHE
    from eyescreen.preprocess import ImageCache, Preprocessing

    _CACHE = ImageCache(Preprocessing(image_size=size, enhance=enhance))


def _cache_one(path: Path) -> int:
    from eyescreen.preprocess import ImageError

    try:
        _CACHE.get(path)
        return 0
    except ImageError:
        return 1


def epochs_logged(run: Path) -> int:
    try:
        with open(run / "metrics.csv") as f:
            return len(list(csv.DictReader(f)))
    except FileNotFoundError:
        return 0


def teacher_of(args: list[str]) -> str | None:
    """The run of this queue named by `--teacher @NAME` (its folder beside this run's), else None."""
    given = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--teacher"]
    return given[-1][1:] if given and given[-1].startswith("@") else None


def start(name: str, args: list[str], opts, threads: int) -> subprocess.Popen:
    out = opts.out / name
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    if (out / "resume.pt").exists():
        cmd = ["train", "--data", str(opts.data), "--out", str(out), "--resume"]
    else:
        cmd = ["train", "--data", str(opts.data), "--out", str(out), "--preset", PRESET, "--classes", CLASSES,
               "--split", str(opts.split), *args]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "train.log", "a")
    return subprocess.Popen(
        [sys.executable, "-m", "eyescreen", *cmd, "--no-progress"], stdout=log, stderr=log, env=env
    )


def trained_before(name: str, opts) -> bool:
    """Has run `name` of the queue logged all its epochs in opts.out (an earlier call on this machine)?"""
    known = dict(RUNS)
    return name in known and epochs_logged(opts.out / name) >= int(option(known[name] + opts.set, "--epochs"))


class Run:
    """One training run; a run taught by another of the queue (`--teacher @NAME`) waits for it to finish,
    unless it finished in an earlier call on this machine."""

    def __init__(self, name: str, args: list[str], opts, threads: int):
        self.name, self.dir, self.opts, self.threads = name, opts.out / name, opts, threads
        self.args = [str(opts.out / a[1:]) if a.startswith("@") else a for a in args]  # @NAME: its folder
        self.epochs = int(option(args, "--epochs"))
        self.teacher = teacher_of(args)
        self.proc: subprocess.Popen | None = None
        self.marks: list[tuple[float, int]] = []  # (time, epochs logged) since the last change of load
        if self.teacher:
            self.state = f"waiting for {self.teacher}"
        else:
            self.begin()

    def begin(self) -> None:
        """Start the run (a taught one once its teacher has finished)."""
        self.proc = start(self.name, self.args, self.opts, self.threads)
        self.state, self.marks = "running", []

    def poll(self, now: float) -> None:
        if self.proc is None:
            return
        done = epochs_logged(self.dir)
        if not self.marks or self.marks[-1][1] != done:
            self.marks.append((now, done))
        if self.proc.poll() is not None and self.state == "running":
            self.state = "finished" if self.proc.returncode == 0 else f"failed (exit {self.proc.returncode})"

    def projected_end(self) -> float | None:
        """When this run should end at the pace of its last epochs under the present load; None = unknown.
        Not before five epochs: the first ones run slower (two runs side by side: 5 s an epoch over the
        first five, on an H200 where one alone took 2.4 s), and a run stopped on a wrong guess costs a call."""
        if len(self.marks) < 6:
            return None
        (t0, e0), (t1, e1) = self.marks[1], self.marks[-1]  # from the first whole epoch seen
        pace = (t1 - t0) / max(e1 - e0, 1)
        return t1 + (self.epochs - e1) * pace

    def stop(self, why: str) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.state = f"stopped: {why} after {epochs_logged(self.dir)}/{self.epochs} epochs"


def train_all(opts) -> list[Run]:
    chosen = chosen_runs(opts)
    threads = max(1, (os.cpu_count() or 2) // len(chosen))
    t_start = time.time()
    deadline = t_start + opts.deadline
    runs = [Run(n, a, opts, threads) for n, a in chosen]
    by_name = {r.name: r for r in runs}
    for r in runs:
        if r.teacher and r.teacher not in by_name:  # a teacher trained in an earlier call on this machine
            if trained_before(r.teacher, opts):
                r.begin()
            else:
                r.state = f"not started: its teacher {r.teacher} has not finished here (add it: --only {r.teacher} {r.name})"
    while True:
        now = time.time()
        for r in runs:
            r.poll(now)
        for r in runs:
            if r.state.startswith("waiting"):
                teacher = by_name[r.teacher]
                if teacher.state == "finished":
                    r.begin()
                    for other in runs:
                        other.marks = []  # the pace changes with the load: measure it afresh
                elif not teacher.state.startswith(("running", "waiting")):
                    r.state = f"not started: its teacher {r.teacher} {teacher.state}"
        alive = [r for r in runs if r.state == "running"]
        waiting = [r for r in runs if r.state.startswith("waiting")]
        if not alive and not waiting:
            break
        if now > deadline:
            for r in alive:
                # a run with every epoch logged is calibrating or saving: stopping it now loses a finished run
                if epochs_logged(r.dir) >= r.epochs:
                    try:
                        r.proc.wait(FINISH_GRACE)
                    except subprocess.TimeoutExpired:
                        pass
                    r.poll(time.time())
                if r.state == "running":
                    r.stop("deadline")
            for r in waiting:
                r.state = f"not started: the deadline came before its teacher {r.teacher} finished"
            break
        late = [r for r in alive if (end := r.projected_end()) is not None and end > deadline]
        if late and len(alive) > 1:  # the last one left runs until the deadline
            victim = alive[-1]  # the lowest priority still going
            victim.stop(f"projected past the deadline ({late[0].name})")
            print(f"{time.time() - t_start:.0f}s: {victim.state} of {victim.name}", flush=True)
            for r in runs:
                r.marks = []  # the pace changes with the load: measure it afresh
        time.sleep(5)
    print(f"training ended after {time.time() - t_start:.0f}s", flush=True)
    return runs


def evaluate(runs: list[Run], opts) -> None:
    threads = max(1, (os.cpu_count() or 2) // (2 * max(len(runs), 1)))
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    procs = []
    for r in runs:
        if r.state != "finished":
            continue
        for subset in ("val", "test"):
            cmd = [*_evaluation(r.dir, subset, opts), "--no-progress"]
            log = open(r.dir / f"eval-{subset}.log", "w")
            procs.append(
                subprocess.Popen([sys.executable, "-m", "eyescreen", *cmd], stdout=log, stderr=log, env=env)
            )
    end = time.time() + opts.eval_deadline
    for p in procs:
        try:
            p.wait(max(end - time.time(), 1))
        except subprocess.TimeoutExpired:
            p.kill()  # its report is missing from the summary, which says so


def summarise(runs: list[Run], opts) -> list[dict]:
    rows = []
    for r in runs:
        row = {"run": r.name, "state": r.state, "epochs": f"{epochs_logged(r.dir)}/{r.epochs}"}
        if (r.dir / "metrics.csv").exists():
            with open(r.dir / "metrics.csv") as f:
                log = list(csv.DictReader(f))
            row["seconds_per_epoch"] = round(sum(float(x["seconds"]) for x in log) / max(len(log), 1), 1)
            row["best_val_macro_auc"] = max((float(x["val_macro_auc"]) for x in log), default=None)
        for subset in ("val", "test"):
            report = r.dir / f"eval-{subset}" / "report.json"
            if (r.dir / f"eval-{subset}" / "eyes" / "report.json").exists():  # a both-eye model: per eye
                report = r.dir / f"eval-{subset}" / "eyes" / "report.json"
            if report.exists():
                rep = json.loads(report.read_text())
                m = rep["metrics"]
                row["best_epoch"] = rep.get("epoch")
                row[f"{subset}_macro_auc"] = round(m["macro_auc"], 4)
                row[f"{subset}_balanced_accuracy"] = round(m["balanced_accuracy"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    (opts.out / "summary.json").write_text(json.dumps(rows, indent=2))
    return rows


def ensemble(names: list[str], opts) -> dict | None:
    """The finished runs `names` (of this call, or of an earlier one on this machine) as one `eyescreen
    ensemble` checkpoint, calibrated on validation and evaluated there; its test split only where
    validation with the fellow eye reaches ENSEMBLE_BAR. On the device: the members' weights cannot all
    travel back. Its summary row, also written to its folder; None with fewer than two members."""
    members = [n for n in names if (opts.out / n / "best.safetensors").exists()]
    if len(members) < 2:
        print(f"ensemble: {len(members)} of {', '.join(names)} finished here; two are needed", flush=True)
        return None
    out = opts.out / ("ens-" + "+".join(members))
    out.mkdir(parents=True, exist_ok=True)
    row = {"run": out.name, "members": members}
    made = ["ensemble", *(str(opts.out / n) for n in members), "--out", str(out), "--data", str(opts.data)]
    if _eyescreen(made, out / "ensemble.log", opts, row) and _eyescreen(
        _evaluation(out, "val", opts), out / "eval-val.log", opts, row
    ):
        row.update(_ensemble_scores(out, "val"))
        short = [k for k, bar in ENSEMBLE_BAR.items() if row.get(f"val_{k}_with_fellow", 0.0) < bar]
        if short:
            row["test"] = f"not read: validation {' and '.join(short)} with the fellow eye under the bar"
        elif _eyescreen(_evaluation(out, "test", opts), out / "eval-test.log", opts, row):
            row.update(_ensemble_scores(out, "test"))
    (out / "summary.json").write_text(json.dumps(row, indent=2))
    print(json.dumps(row), flush=True)
    return row


def _eyescreen(args: list[str], log_path: Path, opts, row: dict) -> bool:
    """Run `eyescreen ARGS` into `log_path`, within the evaluation deadline; a failure goes into `row`."""
    with open(log_path, "w") as log:
        try:
            done = subprocess.run([sys.executable, "-m", "eyescreen", *args, "--no-progress"], stdout=log,
                                  stderr=log, timeout=opts.eval_deadline)  # fmt: skip
        except subprocess.TimeoutExpired:
            row["state"] = f"stopped: eyescreen {args[0]} past --eval-deadline ({log_path.name})"
            return False
    if done.returncode:
        row["state"] = f"failed: eyescreen {args[0]} (exit {done.returncode}, {log_path.name})"
    return done.returncode == 0


def _evaluation(out: Path, subset: str, opts) -> list[str]:
    return ["evaluate", "--checkpoint", str(out / "best.safetensors"), "--data", str(opts.data),
            "--subset", subset, "--out", str(out / f"eval-{subset}")]  # fmt: skip


def _ensemble_scores(out: Path, subset: str) -> dict:
    """Per eye, alone and blended with the fellow eye (balanced accuracy by the decision rule)."""
    scores = {}
    for suffix, folder in (
        ("", out / f"eval-{subset}"),
        ("_with_fellow", out / f"eval-{subset}" / "fellow-eye"),
    ):
        if (folder / "report.json").exists():
            rep = json.loads((folder / "report.json").read_text())
            scores[f"{subset}_macro_auc{suffix}"] = round(rep["metrics"]["macro_auc"], 4)
            decided = rep.get("decision", {}).get("metrics", rep["metrics"])
            scores[f"{subset}_balanced_accuracy{suffix}"] = round(decided["balanced_accuracy"], 4)
    return scores


def pack(rows: list[dict], opts) -> None:
    """Everything but the weights in one archive; then weights, best run by validation macro-AUC first,
    as many as fit what a lease returns (WEIGHTS_LIMIT), in chunks (`cat NAME*.part* > best.safetensors`).
    In fp32 only the best run's fits; with --pack-half each goes as an fp16 copy (half the size: two
    ResNet-18s travel), which `load_model` reads back into fp32 weights rounded to fp16."""
    dest = Path(opts.pack)
    dest.mkdir(parents=True, exist_ok=True)

    def small(info: tarfile.TarInfo):
        return None if info.name.endswith((".safetensors", ".pt", ".tmp")) else info

    with tarfile.open(dest / "runs.tar.gz", "w:gz") as tar:
        tar.add(opts.out, arcname=opts.out.name, filter=small)
    scored = [r for r in rows if r["state"] == "finished" and "best_val_macro_auc" in r]
    scored.sort(key=lambda r: r["best_val_macro_auc"], reverse=True)
    for old in dest.glob("*.safetensors.part*"):
        old.unlink()
    room, sent = WEIGHTS_LIMIT, 0
    for r in scored:
        if sent and not opts.pack_half:  # in fp32, the best run that fits (a ResNet-34, 85 MB, cannot)
            break
        weights = weights_to_send(opts.out / r["run"] / "best.safetensors", opts.pack_half)
        if len(weights) > room:
            print(f"weights of {r['run']} do not fit what a lease returns ({room >> 20} MiB left): left behind",
                  flush=True)  # fmt: skip
            continue
        room, sent = room - len(weights), sent + 1
        name = f"{r['run']}.best{'.fp16' if opts.pack_half else ''}.safetensors"
        chunk = 15 * 2**20
        for i in range(0, len(weights), chunk):
            (dest / f"{name}.part{i // chunk}").write_bytes(weights[i : i + chunk])


def weights_to_send(path: Path, half: bool) -> bytes:
    """The checkpoint's bytes; with `half`, an fp16 copy of its floating-point tensors, metadata kept."""
    if not half:
        return path.read_bytes()
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()

    def small(t):  # a value past fp16's range (65504) would become inf: such a tensor stays fp32
        return t.is_floating_point() and t.numel() > 0 and float(t.abs().max()) < 6e4

    tensors = {k: t.half() if small(t) else t for k, t in load_file(str(path)).items()}
    return save(tensors, metadata=metadata)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/gpu"))
    ap.add_argument("--deadline", type=float, default=450, help="seconds of training for all runs together")
    ap.add_argument("--eval-deadline", type=float, default=120, help="seconds for all evaluations together")
    ap.add_argument("--only", nargs="*", help="run only these names, most important first")
    ap.add_argument("--pack", help="folder for the archive of logs and reports and the best checkpoint")
    ap.add_argument("--pack-half", action="store_true",
                    help="send the weights of every finished run that fits, as fp16 copies (two ResNet-18s)")  # fmt: skip
    ap.add_argument("--ensemble", nargs="+", metavar="NAME",
                    help="then these finished runs as one ensemble, on this machine (see ENSEMBLE_BAR)")  # fmt: skip
    ap.add_argument("--set", nargs=argparse.REMAINDER, default=[], help="train options for every run (last)")
    opts = ap.parse_args()
    opts.data, opts.split = opts.data.resolve(), opts.split.resolve()
    import torch

    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""), flush=True)  # fmt: skip
    preprocessings = {(int(option(a, "--image-size")), option(a, "--enhance")) for _, a in chosen_runs(opts)}
    warm_cache(opts.data, preprocessings, os.cpu_count() or 2)
    runs = train_all(opts)
    if opts.pack:  # the logs and the weights first, should the evaluation not finish in the lease
        pack(summarise(runs, opts), opts)
    evaluate(runs, opts)
    rows = summarise(runs, opts)
    if opts.ensemble:
        ensemble(opts.ensemble, opts)  # its folder goes into the archive; its weights stay here
    if opts.pack:
        pack(rows, opts)


if __name__ == "__main__":
    main()
