"""Measurement: parameters, MACs and latency."""

from .profile import compare_latency, count_macs, count_params, measure_latency, measure_peak_gmacs

__all__ = ["compare_latency", "count_macs", "count_params", "measure_latency", "measure_peak_gmacs"]
