"""Load test of `eyescreen serve` on loopback: p50/p95 latency and requests/s for predict and
predict+explain at several concurrencies, error count, and the server's resident memory after each
phase (flat = no leak). Bounded: a fixed number of requests per phase, a time limit per phase.

python benchmarks/serve_load.py --checkpoint runs/seed-baseline/resnet18/best.safetensors
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def phase(url: str, files: dict, explain: bool, concurrency: int, requests: int, limit_s: float) -> dict:
    deadline = time.perf_counter() + limit_s

    def one(_):
        if time.perf_counter() > deadline:
            return None
        start = time.perf_counter()
        try:
            r = client.post(f"{url}/v1/predict", params={"explain": str(explain).lower()}, files=files)
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - start, ok

    with httpx.Client(timeout=300) as client, ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        results = [r for r in pool.map(one, range(requests)) if r is not None]
        wall = time.perf_counter() - start
    latency = np.array([r[0] for r in results])
    return {
        "mode": "predict+explain" if explain else "predict",
        "concurrency": concurrency,
        "requests": len(results),
        "errors": sum(not r[1] for r in results),
        "p50_ms": float(np.percentile(latency, 50) * 1000),
        "p95_ms": float(np.percentile(latency, 95) * 1000),
        "requests_per_s": len(results) / wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=48, help="per phase (at least 4 per client)")
    parser.add_argument("--limit-s", type=float, default=120, help="per phase: stop sending after this")
    parser.add_argument("--json", default="runs/serve-load.json")
    args = parser.parse_args()

    sample = resources.files("eyescreen") / "sample" / "images"
    files = {
        "right": ("right.jpg", (sample / "1111_right.jpg").read_bytes(), "image/jpeg"),
        "left": ("left.jpg", (sample / "1111_left.jpg").read_bytes(), "image/jpeg"),
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eyescreen",
            "serve",
            "--checkpoint",
            args.checkpoint,
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            try:
                health = httpx.get(f"{url}/health").json()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise SystemExit("server did not start")
        httpx.post(f"{url}/v1/predict", params={"explain": "true"}, files=files, timeout=300)  # warm-up
        rows, memory = [], [("after warm-up", rss_mb(server.pid))]
        for explain in (False, True):
            for c in map(int, args.concurrency.split(",")):
                row = phase(url, files, explain, c, max(args.requests, 4 * c), args.limit_s)
                row["server_rss_mb"] = rss_mb(server.pid)
                rows.append(row)
                print(json.dumps(row), flush=True)
        memory.append(("after all phases", rss_mb(server.pid)))
    finally:
        server.terminate()
        server.wait(10)
    print(f"\nmodel {health['model']} ({health['input_size']} px), {args.workers} workers, both eyes per request; "
          f"{platform.processor() or platform.machine()}")  # fmt: skip
    print("| mode | concurrency | requests | errors | p50 ms | p95 ms | requests/s | server RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.0f} | "
              f"{r['p95_ms']:.0f} | {r['requests_per_s']:.2f} | {r['server_rss_mb']:.0f} |")  # fmt: skip
    print("server RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in memory))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "memory": memory, "health": health}, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
