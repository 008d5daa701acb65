"""Patient bootstrap of the headline metrics: scikit-learn per resample vs `metrics.resample_metrics`
(numpy), the same resamples, one run; prints the time of each, the ratio and the largest difference.

    python benchmarks/bootstrap_speed.py [--eyes 404] [--patients 232] [--resamples 1000]

The default size is ODIR-5K's validation (or test) split; `evaluate` runs this bootstrap for the
metrics as they are and for the decision rule, per eye and with the fellow eye.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from eyescreen.metrics import headline_metrics, patient_resamples, resample_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eyes", type=int, default=404)
    ap.add_argument("--patients", type=int, default=232)
    ap.add_argument("--resamples", type=int, default=1000)
    opts = ap.parse_args()
    rng = np.random.default_rng(0)
    y = rng.choice(4, opts.eyes, p=[0.58, 0.33, 0.05, 0.04])
    prob = rng.dirichlet(np.ones(4), opts.eyes)
    groups = rng.integers(0, opts.patients, opts.eyes)
    weights = np.array([2.0, 4.0, 43.0, 49.0])
    resamples = list(patient_resamples(groups, opts.resamples, rng))
    times, values = {}, {}
    for name, fn in (("scikit-learn", headline_metrics), ("numpy", resample_metrics)):
        t0 = time.perf_counter()
        values[name] = [fn(y[idx], prob[idx], weights) for idx in resamples]
        times[name] = time.perf_counter() - t0
    diff = max(abs(a[k] - b[k]) for a, b in zip(*values.values(), strict=True) for k in a)
    print(f"{opts.resamples} resamples of {opts.eyes} eyes ({opts.patients} patients)")
    print("| variant | seconds | ratio to scikit-learn |\n|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} | {times['scikit-learn'] / seconds:.1f}x |")
    print(f"largest difference in any metric: {diff:.1e}")


if __name__ == "__main__":
    main()
