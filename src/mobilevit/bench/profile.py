"""Parameter and MAC counts (from PyTorch's own FLOP counter), wall-clock latency, and the CPU's fp32 ceiling (the
FMA limit of the hardware and the measured rate of dense kernels)."""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

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
    x = torch.zeros(1, in_channels, *input_size, device=next(model.parameters()).device)  # meta: shapes only
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


# --------------------------------------------------------------------------------------------------------------------
# The fp32 ceiling: the FMA limit of the hardware, and the rate dense kernels measurably reach

SYS_CPU = Path("/sys/devices/system/cpu")


def _cpuinfo_blocks(cpuinfo: str) -> list[dict[str, str]]:
    """``/proc/cpuinfo`` text -> one ``{field: value}`` per logical processor."""
    blocks = []
    for block in cpuinfo.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def fp32_fmas_per_cycle(cpuinfo: str) -> tuple[int | None, str]:
    """fp32 fused multiply-adds one core can start per cycle (vector lanes x FMA units), from ``/proc/cpuinfo``.

    x86 only, from the vendor, family and ISA flags of the first processor. Where a generation has parts with fewer
    units, the larger count is returned, so that the limit stays an upper bound.

    Returns:
        (count, the reasoning in words), or (``None``, why it cannot be told).
    """
    blocks = _cpuinfo_blocks(cpuinfo)
    first = blocks[0] if blocks else {}
    flags = set(first.get("flags", "").split())
    if not flags:
        return None, "no x86 'flags' line in /proc/cpuinfo (only x86 AVX2/AVX-512 vector widths are tabulated)"
    if "fma" not in flags:
        return None, "the CPU has no FMA instructions (no 'fma' flag)"
    amd = first.get("vendor_id") in ("AuthenticAMD", "HygonGenuine")
    try:
        family, model = int(first.get("cpu family", "")), int(first.get("model", ""))
    except ValueError:
        family, model = 0, 0
    if amd and (family == 0x18 or (family == 0x17 and model < 0x30)):
        return 8, "AMD Zen/Zen+ (family 23, model < 0x30; Hygon 24): 2 FMA pipes of 128 bits = 2 x 4 fp32 lanes"
    if amd and family == 0x19 and "avx512f" in flags:
        return 16, (
            "AMD Zen 4 (family 25 with avx512f): 2 FMA pipes of 256 bits, AVX-512 split over two cycles "
            "('double-pumped') = 16 fp32 lanes"
        )
    if amd and family >= 0x1A and "avx512f" in flags:
        return 32, "AMD Zen 5 (family 26): 2 FMA pipes of 512 bits = 2 x 16 fp32 lanes (laptop parts: 256-bit, half)"
    if "avx512f" in flags:
        return 32, "AVX-512 (avx512f), assuming 2 FMA units per core = 2 x 16 fp32 lanes (parts with one unit: half)"
    if "avx2" in flags or "avx" in flags:
        return 16, "AVX2 + FMA, assuming 2 FMA units per core = 2 x 8 fp32 lanes"
    return None, "FMA without AVX: vector width not tabulated"


def physical_cores(cpuinfo: str) -> int | None:
    """Distinct (``physical id``, ``core id``) pairs in ``/proc/cpuinfo``: cores, not SMT threads (``None``: absent)."""
    ids = {(b.get("physical id"), b["core id"]) for b in _cpuinfo_blocks(cpuinfo) if "core id" in b}
    return len(ids) or None


def _nominal_clock(cpuinfo: str) -> str:
    """The clocks /proc/cpuinfo names (model name ``@ x.xxGHz``, ``cpu MHz``): base or current, not the maximum."""
    first = next(iter(_cpuinfo_blocks(cpuinfo)), {})
    found = []
    if match := re.search(r"@\s*([\d.]+)\s*GHz", first.get("model name", "")):
        found.append(f"model name says {float(match.group(1)):.2f} GHz")
    if "cpu MHz" in first:
        found.append(f"'cpu MHz' {float(first['cpu MHz']) / 1e3:.2f} GHz")
    return " and ".join(found) if found else "no clock in /proc/cpuinfo"


def max_clock_ghz(cpu_dir: Path = SYS_CPU) -> tuple[float | None, str]:
    """The highest clock a core of this machine runs at, from cpufreq's ``cpuinfo_max_freq``.

    The ``model name`` GHz and ``cpu MHz`` of ``/proc/cpuinfo`` are base or current clocks that boost exceeds, so
    they are no upper bound; neither is ``acpi-cpufreq``'s maximum while boost is on (its table stops at the base
    clock). Virtual machines usually have no cpufreq at all.

    Returns:
        (GHz, its source), or (``None``, why it cannot be read).
    """
    cpufreq = cpu_dir / "cpu0" / "cpufreq"
    try:
        khz = int((cpufreq / "cpuinfo_max_freq").read_text())
    except (OSError, ValueError):
        return None, f"no {cpufreq / 'cpuinfo_max_freq'} (usual in virtual machines)"
    try:
        driver = (cpufreq / "scaling_driver").read_text().strip()
    except OSError:
        driver = "unknown driver"
    try:
        boost = (cpu_dir / "cpufreq" / "boost").read_text().strip()
    except OSError:
        boost = None
    if driver == "acpi-cpufreq" and boost != "0":
        return None, f"acpi-cpufreq's cpuinfo_max_freq ({khz / 1e6:.2f} GHz) is the base clock and boost is on"
    return khz / 1e6, f"cpuinfo_max_freq, {driver}"


def fp32_fma_limit(
    threads: int | None = None,
    clock_ghz: float | None = None,
    cpuinfo: str | None = None,
    cpu_dir: Path = SYS_CPU,
) -> dict[str, float | str | None]:
    """The rate no fp32 kernel can exceed on this CPU: cores x fp32 FMAs per cycle per core x maximum clock.

    One multiply-accumulate is one FMA lane; no algorithm that does every counted multiplication can go faster.
    (Winograd and FFT convolutions do fewer multiplications than the MACs counted, so they can.)

    Args:
        threads: threads the work runs on (default ``torch.get_num_threads()``); the cores used are these, at most
            the physical cores (two SMT threads share one core's FMA units).
        clock_ghz: the maximum (boost) clock, when known from elsewhere (a VM hides it); default: :func:`max_clock_ghz`.
        cpuinfo: ``/proc/cpuinfo`` text (default: read it).
        cpu_dir: the sysfs CPU folder holding ``cpu0/cpufreq``.

    Returns:
        ``fma_limit_gmacs`` (``None`` when the vector width or the maximum clock cannot be read),
        ``fma_per_cycle`` (over the cores used; ``None`` when the width is unknown) and ``fma_limit_method`` (how it
        was computed, or what could not be read).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    threads = threads or torch.get_num_threads()
    per_core, width = fp32_fmas_per_cycle(cpuinfo)
    cores = min(threads, physical_cores(cpuinfo) or threads)
    if clock_ghz is not None:
        clock, source = clock_ghz, "given"
    else:
        clock, source = max_clock_ghz(cpu_dir)
    if per_core is None:
        return {"fma_limit_gmacs": None, "fma_per_cycle": None, "fma_limit_method": f"not known: {width}"}
    per_cycle = cores * per_core
    how = f"{cores} core{'s' * (cores > 1)} used x {per_core} fp32 FMA/cycle ({width})"
    if clock is None:
        method = (
            f"not known: the maximum clock cannot be read ({source}; {_nominal_clock(cpuinfo)}, a base or current "
            f"clock boost exceeds); {how} = {per_cycle} FMA/cycle"
        )
        return {"fma_limit_gmacs": None, "fma_per_cycle": per_cycle, "fma_limit_method": method}
    limit = per_cycle * clock
    method = f"{how} x {clock:.2f} GHz maximum clock ({source}) = {limit:.1f} GMAC/s"
    return {"fma_limit_gmacs": limit, "fma_per_cycle": per_cycle, "fma_limit_method": method}


class DenseKernel(NamedTuple):
    """One kernel :func:`measure_peak_gmacs` times."""

    call: Callable[[], object]
    macs: int  # multiply-accumulates per call
    must_run_direct: bool  # a 3x3 convolution: counts only if oneDNN reports a direct (non-Winograd) implementation


def dense_kernels(size: int = 2048) -> dict[str, DenseKernel]:
    """The kernels :func:`measure_peak_gmacs` times, by name: dense products that do one FMA per counted MAC.

    A ``size`` x ``size`` by ``size`` x ``size`` ``torch.mm`` (BLAS: MKL or OpenBLAS), a 1x1 convolution of
    ``size // 4`` channels to as many on a 32x32 map (oneDNN or a GEMM; a 1x1 kernel has no Winograd form), and a 3x3
    convolution of ``size // 8`` channels on a 64x64 map, which oneDNN's direct kernels run closest to the FMA
    limit but which could also run as Winograd (fewer multiplications than the MACs counted, so a rate above the
    hardware's): it counts only when :func:`onednn_convolutions` shows a direct implementation.
    """
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    out = torch.empty(size, size)
    wide, narrow = max(size // 4, 8), max(size // 8, 8)
    x1, w1 = torch.randn(1, wide, 32, 32, generator=g), torch.randn(wide, wide, 1, 1, generator=g)
    x3, w3 = torch.randn(1, narrow, 64, 64, generator=g), torch.randn(narrow, narrow, 3, 3, generator=g)
    conv2d = torch.nn.functional.conv2d
    return {
        f"torch.mm {size}x{size} @ {size}x{size}": DenseKernel(lambda: torch.mm(a, b, out=out), size**3, False),
        f"conv2d 1x1 {wide}->{wide} on 32x32": DenseKernel(lambda: conv2d(x1, w1), wide * wide * 32 * 32, False),
        f"conv2d 3x3 {narrow}->{narrow} on 64x64": DenseKernel(
            lambda: conv2d(x3, w3, padding=1), narrow * narrow * 9 * 64 * 64, True
        ),
    }


def onednn_convolutions(call: Callable[[], object]) -> list[str]:
    """The oneDNN implementation of every convolution one ``call`` runs, e.g. ``["jit:avx512_core"]`` (direct) or
    ``["jit_wino_4x3:avx512_core"]`` (Winograd), from oneDNN's verbose log (written to file descriptor 1, which is
    redirected to a temporary file meanwhile). Empty when no convolution ran in oneDNN (NNPACK, a build without it)."""
    if not torch.backends.mkldnn.is_available():
        return []
    sys.stdout.flush()
    with tempfile.TemporaryFile() as log:
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                call()
        except AssertionError:  # a oneDNN built without verbose mode: nothing to read
            pass
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = log.read().decode(errors="replace").splitlines()
    found = []
    for line in lines:
        fields = line.split(",")
        if "exec" in fields and "convolution" in fields[:-1]:
            found.append(fields[fields.index("convolution") + 1])
    return found


@torch.no_grad()
def measure_peak_gmacs(
    size: int = 2048, repeats: int = 10, warmup: int = 2, clock_ghz: float | None = None
) -> dict[str, float | str | None]:
    """This CPU's fp32 peak: the best measured rate of dense kernels, beside the FMA limit of the hardware.

    The measured peak is the best of ``repeats`` runs of the fastest of :func:`dense_kernels` (one FMA per counted
    MAC; the 3x3 convolution only when oneDNN ran it direct, never as Winograd) at the current
    ``torch.get_num_threads()``. It is what tuned libraries reach, which can be well below the hardware limit, so a
    whole network can run above it. The limit (:func:`fp32_fma_limit`) is reported beside it
    where the CPU's vector width and maximum clock can be read; nothing that does the counted MACs runs above it.

    Args:
        size: the matmul's side (the convolutions have ``size // 4`` and ``size // 8`` channels).
        repeats: timed runs per kernel.
        warmup: untimed runs per kernel first.
        clock_ghz: the maximum clock for the limit when the machine does not expose it (see :func:`fp32_fma_limit`).

    Returns:
        ``measured_peak_gmacs`` (GMAC/s), ``measured_peak_gflops`` (twice that), ``peak_kernel`` (the fastest counted
        kernel), ``fma_limit_gmacs`` (``None`` when unknown), ``measured_pct_of_fma_limit``, ``fma_limit_method`` and
        ``peak_method`` (how both were obtained, in words, with every kernel's rate).
    """
    threads = torch.get_num_threads()
    rates, notes = {}, []
    for name, kernel in dense_kernels(size).items():
        if kernel.must_run_direct:
            implementations = onednn_convolutions(kernel.call)
            if not implementations or any("wino" in impl for impl in implementations):
                notes.append(f"{name} left out: not known to run direct ({', '.join(implementations) or 'not oneDNN'})")
                continue
            name = f"{name} (direct: {', '.join(sorted(set(implementations)))})"
        rates[name] = kernel.macs / (measure_latency(kernel.call, warmup=warmup, repeats=repeats)["min_ms"] / 1e3) / 1e9
    best = max(rates, key=rates.get)
    gmacs = rates[best]
    limit = fp32_fma_limit(threads, clock_ghz)
    method = (
        f"best of {repeats} fp32 runs of the fastest of "
        + ", ".join(f"{name} ({rate:.1f} GMAC/s)" for name, rate in rates.items())
        + "".join(f"; {note}" for note in notes)
        + f"; dense kernels, one FMA per MAC, with {threads} threads, measured at the start of this run; "
    )
    if limit["fma_limit_gmacs"]:
        pct = 100 * gmacs / limit["fma_limit_gmacs"]
        method += f"{pct:.0f}% of the fp32 FMA limit {limit['fma_limit_gmacs']:.1f} GMAC/s"
    else:
        pct = None
        method += "the fp32 FMA limit is not known"
        if limit["fma_per_cycle"]:
            # the measured rate is a lower bound on the clock the cores ran at
            method += f" (this rate alone implies a clock of at least {gmacs / limit['fma_per_cycle']:.2f} GHz)"
    return {
        "measured_peak_gmacs": gmacs,
        "measured_peak_gflops": 2 * gmacs,
        "peak_kernel": best,
        "fma_limit_gmacs": limit["fma_limit_gmacs"],
        "measured_pct_of_fma_limit": pct,
        "fma_limit_method": limit["fma_limit_method"],
        "peak_method": method,
    }
