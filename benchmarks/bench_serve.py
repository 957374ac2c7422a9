"""Throughput and latency of ``mobilevit serve``: dynamic batching on vs off at concurrency 1, 8 and 32.

Starts one real server process per setting on 127.0.0.1 (same model, same machine, one run), sends the same photo
as raw bytes from an asyncio client, and prints a markdown table. Apple's MobileOne-S0 weights are used when the
shared test data is present, else random weights (the timing is the same).

    python benchmarks/bench_serve.py [--requests 200] [--max-batch-size 16] [--backend onnxruntime] [--model NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

SHARED_S0 = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobileone_s0_reparam.safetensors"


def photo() -> bytes:
    import skimage

    return (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()


def model_args(name: str, backend: str, workdir: Path) -> list[str]:
    """``--model`` (and weights) options for the server: Apple's S0 weights when present, else random weights (the
    timing is the same); for onnxruntime, the folded model exported once by ``mobilevit export``."""
    real = name == "mobileone_s0" and SHARED_S0.exists()
    source = ["--model", "mobileone_s0.orig_in1k_reparam", "--pretrained", str(SHARED_S0)] if real else []
    source = source or ["--model", name, "--random-weights"]
    if backend == "eager":
        return source
    onnx = workdir / f"{name}.onnx"
    if not onnx.exists():
        cmd = [sys.executable, "-m", "mobilevit.cli", "export", *source, "--format", "onnx", "--output", str(onnx)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return ["--model", str(onnx), "--backend", "onnxruntime"]


def start(model: list[str], max_batch_size: int, max_wait_ms: float, threads: int) -> tuple[subprocess.Popen, str]:
    """A server process; returns once /health says ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mobilevit.cli", "serve", *model, "--port", str(port)]
    cmd += ["--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms), "--queue-size", "64"]
    cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


async def measure(url: str, body: bytes, concurrency: int, requests: int) -> dict[str, float]:
    """Closed loop: ``concurrency`` clients, each sending its next request when the last one is answered."""
    latencies: list[float] = []
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                r = await client.post("/", content=body)
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text

        await asyncio.gather(*(worker() for _ in range(min(concurrency, 4))))  # warm-up
        latencies.clear()
        remaining = requests
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {"throughput": len(latencies) / elapsed, "p50": q[49] * 1000, "p99": q[98] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="the server's model threads (0: one per core)")
    parser.add_argument("--model", default="mobileone_s0", help="architecture (Apple's weights for mobileone_s0)")
    parser.add_argument("--backend", choices=["eager", "onnxruntime"], default="eager")
    args = parser.parse_args()
    body = photo()
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model = model_args(args.model, args.backend, workdir)
    rows = []
    for label, batch, wait in (
        ("off (max batch 1)", 1, 0.0),
        (f"on (max batch {args.max_batch_size})", args.max_batch_size, args.max_wait_ms),
    ):
        proc, url = start(model, batch, wait, args.threads)
        try:
            for concurrency in (1, 8, 32):
                n = args.requests if concurrency > 1 else max(20, args.requests // 4)
                r = asyncio.run(measure(url, body, concurrency, n))
                rows.append((label, concurrency, r))
                print(f"{label} c={concurrency}: {r['throughput']:.1f} req/s", file=sys.stderr)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print(f"{args.model}, backend {args.backend}, server threads {args.threads or 'one per core'}")
    print("| batching | concurrency | throughput (req/s) | p50 (ms) | p99 (ms) |")
    print("|---|---:|---:|---:|---:|")
    for label, concurrency, r in rows:
        print(f"| {label} | {concurrency} | {r['throughput']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} |")


if __name__ == "__main__":
    main()
