"""Checkpoints: reading files of every supported format, converting them, loading them strictly."""

from .load import CheckpointError, detect_format, is_folded_checkpoint, load_into, read_checkpoint, read_converted

__all__ = [
    "CheckpointError",
    "detect_format",
    "is_folded_checkpoint",
    "load_into",
    "read_checkpoint",
    "read_converted",
]
