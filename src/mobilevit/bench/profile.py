"""Parameter and MAC counts (from PyTorch's own FLOP counter) and wall-clock latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int] = (256, 256), in_channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass at batch 1, counted by ``torch.utils.flop_counter``.

    Convolutions, linear layers and the attention matrix products are counted (as the papers do); element-wise ops,
    norms and softmax are not. One MAC is two FLOPs in PyTorch's count.
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_channels, *input_size)
    # the fused CPU attention kernels are invisible to the counter; the math path counts its two matrix products
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def measure_latency(
    fn: Callable[[], object], warmup: int = 3, repeats: int = 20, min_time: float = 0.0
) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times, then time it ``repeats`` times (or until ``min_time`` seconds have passed).

    Returns:
        ``median_ms``, ``p90_ms``, ``min_ms`` and the number of timed ``runs``.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "min_ms": times[0],
        "runs": float(len(times)),
    }


def compare_latency(
    fns: dict[str, Callable[[], object]], rounds: int = 15, warmup: int = 3, per_round: int = 1, settle: int = 1
) -> dict[str, dict[str, float]]:
    """Time several implementations of the same computation, interleaved round by round.

    Interleaving spreads any slow-down of the machine (other processes, frequency changes) over all of them, so the
    ratio of their medians is fair even when the absolute numbers drift. Each turn starts with ``settle`` untimed
    calls: switching runtimes costs the next call (onnxruntime's and OpenMP's worker threads keep spinning for a while
    after their last op and take the cores the other runtime's threads need), and that cost belongs to neither.

    Returns:
        For each name, ``median_ms``, ``p90_ms`` and ``min_ms`` of one call.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(settle):
                fn()
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn()
            times[name].append((time.perf_counter() - t0) * 1e3 / per_round)
    out = {}
    for name, ts in times.items():
        ts.sort()
        out[name] = {
            "median_ms": statistics.median(ts),
            "p90_ms": ts[min(len(ts) - 1, int(0.9 * len(ts)))],
            "min_ms": ts[0],
        }
    return out


@torch.no_grad()
def measure_peak_gmacs(size: int = 2048, repeats: int = 10, warmup: int = 2) -> dict[str, float | str]:
    """This CPU's practical fp32 peak: the best multiply-accumulate rate of its most tuned dense kernels.

    Two kernels, each timed ``repeats`` times at the current ``torch.get_num_threads()``: a ``size`` x ``size`` by
    ``size`` x ``size`` ``torch.mm`` (``size**3`` MACs, BLAS) and a 3x3 convolution of ``size // 8`` channels to as
    many on a 64x64 map (oneDNN), the two operations libraries tune closest to the hardware limit. The faster one's
    best run is an honest ceiling for what a whole network (which adds depthwise convolutions, norms and memory-bound
    steps) can reach on this machine and thread count.

    Returns:
        ``measured_peak_gmacs`` (GMAC/s), ``measured_peak_gflops`` (twice that) and ``peak_method`` (how it was
        obtained, in words, with both kernels' rates).
    """
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    out = torch.empty(size, size)
    channels = max(size // 8, 8)
    image, weight = torch.randn(1, channels, 64, 64, generator=g), torch.randn(channels, channels, 3, 3, generator=g)
    kernels = {
        f"torch.mm {size}x{size} @ {size}x{size}": (lambda: torch.mm(a, b, out=out), size**3),
        f"conv2d 3x3 {channels}->{channels} on 64x64": (
            lambda: torch.nn.functional.conv2d(image, weight, padding=1),
            channels * channels * 9 * 64 * 64,
        ),
    }
    rates = {
        name: macs / (measure_latency(call, warmup=warmup, repeats=repeats)["min_ms"] / 1e3) / 1e9
        for name, (call, macs) in kernels.items()
    }
    gmacs = max(rates.values())
    return {
        "measured_peak_gmacs": gmacs,
        "measured_peak_gflops": 2 * gmacs,
        "peak_method": (
            f"best of {repeats} fp32 runs of the faster of "
            + " and ".join(f"{name} ({rate:.1f} GMAC/s)" for name, rate in rates.items())
            + f", with {torch.get_num_threads()} threads, measured at the start of this run"
        ),
    }
