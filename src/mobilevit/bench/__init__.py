"""Measurement: parameters, MACs and latency."""

from .profile import count_macs, count_params, measure_latency

__all__ = ["count_macs", "count_params", "measure_latency"]
