"""Throughput and latency of ``mobilevit serve``: dynamic batching on vs off at concurrency 1, 8 and 32.

Starts one real server process per setting on 127.0.0.1 (same model, same machine, one run), sends the same photo
as raw bytes from an asyncio client, and prints a markdown table. Apple's MobileOne-S0 weights are used when the
shared test data is present, else random weights (the timing is the same).

Each row also gives the CPU time per request of the server process and of the client (this process): on a small
machine the client's share is taken from the server. Then, in this process with no server running, the same
predictor's model time per image at batch 1 and at the maximum batch, and the photo's decoding + preprocessing time:
what batching can save is model time (and the per-call overhead around it), so those numbers say how far batching can
go on this machine.

    python benchmarks/bench_serve.py [--requests 200] [--max-batch-size 16] [--backend onnxruntime|openvino]
        [--client wrk --seconds 10] [--model NAME] [--photo FILE] [--litserve]

``--litserve`` adds the same rows for a LitServe server running timm's model (``litserve_timm.py``, started here on
127.0.0.1 in its own process group, which is killed whole afterwards: LitServe's idle inference worker polls its
queue and would take CPU from whatever runs next). Both servers then get the same request body, JSON
``{"inputs": "<base64 photo>"}``, from the same client.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2

HERE = Path(__file__).resolve().parent

SHARED_S0 = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobileone_s0_reparam.safetensors"


def photo(path: Path | None) -> bytes:
    """The photo every request carries: ``path``, or scikit-image's cat (a 451x300 PNG)."""
    import skimage

    return (path or Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str) -> None:
    """Return once ``url``/health answers 200; kill the server's process group if it never does."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx2.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"server {url} did not become ready")


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server and every process it started (its own process group), then make sure they are gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass(frozen=True)
class Served:
    """The served model: what ``mobilevit serve`` is given, and the same predictor built in this process."""

    model: str
    pretrained: str | None  # weights file; None: random weights
    backend: str

    def cli(self) -> list[str]:
        weights = ["--pretrained", self.pretrained] if self.pretrained else []
        if self.backend != "eager":
            return ["--model", self.model, "--backend", self.backend]
        return ["--model", self.model, *(weights or ["--random-weights"])]

    def predictor(self, threads: int) -> object:
        import torch

        from mobilevit.predict import load_predictor

        torch.set_num_threads(threads or torch.get_num_threads())
        pretrained = True if self.backend != "eager" else (self.pretrained or False)
        return load_predictor(self.model, backend=self.backend, pretrained=pretrained, threads=threads)


def served_model(name: str, backend: str, workdir: Path) -> Served:
    """Apple's S0 weights when present, else random weights (the timing is the same); for onnxruntime and openvino,
    the folded model exported once by ``mobilevit export``."""
    real = name == "mobileone_s0" and SHARED_S0.exists()
    eager = Served("mobileone_s0.orig_in1k_reparam", str(SHARED_S0), "eager") if real else Served(name, None, "eager")
    if backend == "eager":
        return eager
    onnx = workdir / f"{name}.onnx"
    if not onnx.exists():
        cmd = [sys.executable, "-m", "mobilevit.cli", "export", *eager.cli(), "--format", "onnx", "--output", str(onnx)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return Served(str(onnx), None, backend)


def batch_gain(served: Served, body: bytes, max_batch_size: int, threads: int, rounds: int = 20) -> dict:
    """Per-image milliseconds of decoding + preprocessing and of the model at batch 1 and at ``max_batch_size``
    (medians of ``rounds``; the three alternate), and the two ratios batch 1 / max batch per image: model time alone
    (``model_gain``) and with decoding (``gain_with_decode``)."""
    import torch

    predictor = served.predictor(threads)
    predictor.batch_size = max_batch_size

    def decode() -> torch.Tensor:  # as the server decodes: fast_decode, its default
        return predictor.prepare(body, "photo", fast_decode=True)

    image = decode()
    single, full = image[None], image.expand(max_batch_size, *image.shape).contiguous()
    times: dict[str, list[float]] = {"decode": [], "model@1": [], "model@max": []}
    calls = {"decode": decode, "model@1": lambda: predictor.logits(single), "model@max": lambda: predictor.logits(full)}
    per = {"decode": 1, "model@1": 1, "model@max": max_batch_size}
    for call in calls.values():
        call()  # untimed: allocations
    for _ in range(rounds):
        for key, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[key].append((time.perf_counter() - t0) * 1000 / per[key])
    ms = {key: statistics.median(values) for key, values in times.items()}
    return {
        **ms,
        "model_gain": ms["model@1"] / ms["model@max"],
        "gain_with_decode": (ms["decode"] + ms["model@1"]) / (ms["decode"] + ms["model@max"]),
    }


def start(model: list[str], max_batch_size: int, max_wait_ms: float, threads: int) -> tuple[subprocess.Popen, str]:
    """A ``mobilevit serve`` process; returns once /health says ready."""
    port = free_port()
    cmd = [sys.executable, "-m", "mobilevit.cli", "serve", *model, "--port", str(port)]
    cmd += ["--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms), "--queue-size", "64"]
    cmd += ["--threads", str(threads)]
    return launch(cmd, port)


def start_litserve(arch: str, max_batch_size: int, max_wait_ms: float, threads: int) -> tuple[subprocess.Popen, str]:
    """A LitServe server with timm's ``arch`` (``litserve_timm.py``); returns once /health says ready."""
    port = free_port()
    cmd = [sys.executable, str(HERE / "litserve_timm.py"), "--port", str(port), "--model", arch]
    cmd += ["--max-batch-size", str(max_batch_size), "--batch-timeout-ms", str(max_wait_ms), "--threads", str(threads)]
    return launch(cmd, port)


def launch(cmd: list[str], port: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url)
    return proc, url


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and of every live process in its process group, all their threads
    (Linux /proc): a LitServe server is several processes."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == pid:  # the process group
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def measure(url: str, body: bytes, concurrency: int, requests: int, server_pid: int) -> dict[str, float]:
    """Closed loop: ``concurrency`` clients, each sending its next request when the last one is answered. Also the
    CPU time per request of the server process and of this (client) process over the timed requests."""
    latencies: list[float] = []
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                r = await client.post("/", content=body, headers={"Content-Type": content_type(body)})
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text

        await asyncio.gather(*(worker() for _ in range(min(concurrency, 4))))  # warm-up
        latencies.clear()
        remaining = requests
        server0, client0, t0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        server_cpu, client_cpu = cpu_seconds(server_pid) - server0, time.process_time() - client0
    q = statistics.quantiles(latencies, n=100)
    n = len(latencies)
    return {
        "throughput": n / elapsed,
        "p50": q[49] * 1000,
        "p99": q[98] * 1000,
        "server_cpu_ms": server_cpu * 1000 / n,
        "client_cpu_ms": client_cpu * 1000 / n,
    }


def content_type(body: bytes) -> str:
    """The request's ``Content-Type``: JSON, or the image's own type for a raw body."""
    if body.startswith(b"{"):
        return "application/json"
    return "image/png" if body.startswith(b"\x89PNG") else "image/jpeg"


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("BENCH_SERVE_TYPE")
wrk.body = io.open(os.getenv("BENCH_SERVE_BODY"), "rb"):read("*a")
done = function(summary, latency, requests)
  io.write(string.format("BENCH %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write,
    summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def measure_wrk(url: str, body_path: Path, concurrency: int, seconds: float, server_pid: int) -> dict[str, float]:
    """The same closed loop run by ``wrk`` (one thread, ``concurrency`` connections, for ``seconds``): a C client
    that takes less of the cores than this process's asyncio client. Every answer must be 2xx."""
    script = body_path.with_suffix(".lua")
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_SERVE_BODY": str(body_path), "BENCH_SERVE_TYPE": content_type(body_path.read_bytes())}
    warm = ["wrk", "-t1", f"-c{min(concurrency, 4)}", "-d1s", "-s", str(script), url + "/"]
    subprocess.run(warm, env=env, check=True, capture_output=True)
    before = os.times()
    server0 = cpu_seconds(server_pid)
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "60s", "-s", str(script), url + "/"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    server_cpu = cpu_seconds(server_pid) - server0
    after = os.times()
    fields = next(line for line in out.splitlines() if line.startswith("BENCH ")).split()[1:]
    n, duration_us, bad_status, socket_errors, timeouts, p50_us, p99_us = (int(f) for f in fields)
    if bad_status or socket_errors or timeouts:
        raise RuntimeError(f"wrk: {bad_status} non-2xx answers, {socket_errors} socket errors, {timeouts} timeouts")
    client_cpu = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    return {
        "throughput": n / (duration_us / 1e6),
        "p50": p50_us / 1000,
        "p99": p99_us / 1000,
        "server_cpu_ms": server_cpu * 1000 / n,
        "client_cpu_ms": client_cpu * 1000 / n,
    }


def run_levels(label: str, proc: subprocess.Popen, url: str, args: argparse.Namespace, body: bytes, body_path: Path):
    """One row per concurrency level against a running server; the server is stopped afterwards, whatever happens."""
    rows = []
    try:
        for concurrency in (1, 8, 32):
            if args.client == "wrk":
                r = measure_wrk(url, body_path, concurrency, args.seconds, proc.pid)
            else:
                n = args.requests if concurrency > 1 else max(20, args.requests // 4)
                r = asyncio.run(measure(url, body, concurrency, n, proc.pid))
            rows.append((label, concurrency, r))
            print(f"{label} c={concurrency}: {r['throughput']:.1f} req/s", file=sys.stderr)
    finally:
        stop(proc)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="the server's model threads (0: one per core)")
    parser.add_argument("--model", default="mobileone_s0", help="architecture (Apple's weights for mobileone_s0)")
    parser.add_argument("--backend", choices=["eager", "onnxruntime", "openvino"], default="eager")
    parser.add_argument("--photo", type=Path, help="the image every request carries (default: scikit-image's cat)")
    parser.add_argument("--litserve", action="store_true", help="also LitServe with timm's model, same rows")
    parser.add_argument(
        "--body",
        choices=["json", "raw"],
        default="json",
        help='the request: JSON {"inputs": "<base64 image>"} (both servers) or the image bytes (mobilevit only)',
    )
    parser.add_argument(
        "--client",
        choices=["asyncio", "wrk"],
        default="asyncio",
        help="load generator: this process (httpx; --requests per level) or wrk (Debian package; --seconds per level)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk: seconds per concurrency level")
    args = parser.parse_args()
    if args.body == "raw" and args.litserve:
        parser.error("--body raw is for mobilevit serve only; the LitServe server takes JSON")
    if args.client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk needs wrk on PATH (Debian: apt-get install wrk)")
    return args


def main() -> None:
    args = parse_args()
    image = photo(args.photo)
    body = image if args.body == "raw" else json.dumps({"inputs": base64.b64encode(image).decode()}).encode()
    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    body_path = workdir / "body.json"
    body_path.write_bytes(body)
    served = served_model(args.model, args.backend, workdir)
    settings = (
        ("off (max batch 1)", 1, 0.0),
        (f"on (max batch {args.max_batch_size})", args.max_batch_size, args.max_wait_ms),
    )
    rows = []
    for label, batch, wait in settings:
        rows += run_levels(
            f"mobilevit, batching {label}", *start(served.cli(), batch, wait, args.threads), args, body, body_path
        )
        if args.litserve:
            server = start_litserve(args.model, batch, wait, args.threads)
            rows += run_levels(f"LitServe + timm, batching {label}", *server, args, body, body_path)
    print(
        f"{args.model}, backend {args.backend}, server threads {args.threads or 'one per core'}, client {args.client},"
        f" photo {args.photo or 'chelsea.png'} ({len(image) / 1024:.0f} KiB) as {args.body}, load average before"
        f" {load_before:.2f}"
    )
    print("| server | concurrency | req/s | p50 (ms) | p99 (ms) | server CPU ms/req | client CPU ms/req |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, concurrency, r in rows:
        print(
            f"| {label} | {concurrency} | {r['throughput']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} "
            f"| {r['server_cpu_ms']:.1f} | {r['client_cpu_ms']:.1f} |"
        )
    off, on = (r for label, concurrency, r in rows if concurrency == 32 and label.startswith("mobilevit"))
    print(
        f"\nbatching at concurrency 32: {on['throughput'] / off['throughput']:.2f}x the throughput of max batch 1,"
        f" {off['server_cpu_ms'] / on['server_cpu_ms']:.2f}x less server CPU per request"
    )
    b = batch_gain(served, image, args.max_batch_size, args.threads)
    print(
        f"in-process, no server: decode (fast_decode, as served) + preprocess {b['decode']:.1f} ms/img;"
        f" model {b['model@1']:.1f} ms/img at batch 1, {b['model@max']:.1f} ms/img at batch {args.max_batch_size}"
    )
    print(
        f"model time alone: batching is {b['model_gain']:.2f}x faster per image; with this photo's decoding"
        f" {b['gain_with_decode']:.2f}x"
    )


if __name__ == "__main__":
    main()
