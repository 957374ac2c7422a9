"""Measurement: parameters, MACs, latency, and the CPU's fp32 ceiling."""

from .profile import (
    compare_latency,
    count_macs,
    count_params,
    fp32_fma_limit,
    measure_latency,
    measure_peak_gmacs,
)

__all__ = [
    "compare_latency",
    "count_macs",
    "count_params",
    "fp32_fma_limit",
    "measure_latency",
    "measure_peak_gmacs",
]
