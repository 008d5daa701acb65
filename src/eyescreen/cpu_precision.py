"""Which precision is faster on this CPU, measured once and remembered.

A CPU that reports native bf16 instructions is not always faster in bf16: on AMD Zen 4 bf16 autocast
trained ResNet-18 2.1 to 2.6 times faster than fp32, but on an Intel Xeon under KVM with AVX-512 bf16
and no AMX, fp32 with channels_last was 1.2 to 1.6 times faster than bf16, and the real trainer 1.48
times (benchmarks/precision_speed.py and train_speed.py; RESULTS "Native bf16 that is slower than
fp32"). So `--precision auto` times a few training steps of ResNet-18 in
both, as cudnn.benchmark times its kernels, and keeps the answer per CPU, torch version and thread
count in `cpu-precision.json` in the cache folder (delete it to measure again).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from functools import cache
from pathlib import Path

import torch

from .preprocess import default_cache_dir

STORE = "cpu-precision.json"
BF16_MUST_BE_FASTER = 1.15  # bf16 rounds; at about the same speed, fp32 is kept


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@cache
def cpu_precision() -> str:
    """'bf16' where this CPU has native bf16 and it trains faster than fp32 here, else 'fp32'."""
    return cpu_choice()["precision"]


def cpu_choice() -> dict:
    """The choice and why: {"precision", "speedup" (bf16 over fp32, None without native bf16)}."""
    if not cpu_supports_bf16():
        return {"precision": "fp32", "speedup": None}
    store = default_cache_dir() / STORE
    key = f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    known = _read(store)
    if key not in known:
        seconds = probe()
        speedup = seconds["fp32"] / seconds["bf16"]
        known[key] = {"precision": "bf16" if speedup >= BF16_MUST_BE_FASTER else "fp32",
                      "speedup": round(speedup, 3), "seconds_per_step": seconds}  # fmt: skip
        _write(store, known)
    return known[key]


def cpu_note() -> str:
    """Why `--precision auto` chose what it did on this CPU, for the training log."""
    choice = cpu_choice()
    if choice["speedup"] is None:
        return (" (this CPU has no native bf16: training is about 3.5 times slower than with it, README "
                "\"Speed on a CPU\")")  # fmt: skip
    return (f" (auto: bf16 measured at {choice['speedup']:.2f}x fp32's speed on this CPU, {STORE} in the cache "
            "folder; --precision fp32|bf16 to choose)")  # fmt: skip


def probe(steps: int = 3, size: int = 112, batch: int = 16) -> dict[str, float]:
    """Seconds per ResNet-18 training step (channels_last, as the trainer runs) in fp32 and bf16: the
    fastest of `steps` after one warm-up, the two precisions taking turns so that a passing load on
    the machine touches both."""
    # A caller's random state is its own (the seed of a run's initial weights), and so is its grad mode:
    # `auto` may first be resolved inside inference (explain --evaluate's curves).
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        return _timed_steps(steps, size, batch)


def _timed_steps(steps: int, size: int, batch: int) -> dict[str, float]:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (batch,))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)

    def step(precision: str) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    timings: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for k in range(steps + 1):
        for precision in timings:
            seconds = step(precision)
            if k:  # the first of each is the warm-up
                timings[precision].append(seconds)
    return {precision: round(min(times), 5) for precision, times in timings.items()}


def cpu_name() -> str:
    """The model name with its family and model numbers (a virtual machine's name is often generic)."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line
        )
    except OSError:
        return platform.processor() or platform.machine()
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')})"


def _read(store: Path) -> dict:
    try:
        return json.loads(store.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: measured again


def _write(store: Path, known: dict) -> None:
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=store.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(known, f, indent=1)
        os.replace(tmp, store)  # atomic: two commands starting at once never read half a file
    except OSError:
        pass  # a read-only cache folder: measured again next time, nothing lost
