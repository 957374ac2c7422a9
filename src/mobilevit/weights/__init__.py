"""Checkpoints: fetching an entry's file (hub cache or download), reading every supported format, converting it,
loading it strictly, and saving our own self-describing folder."""

from .entries import labels_for, read_labels_file
from .hub import WeightsUnavailableError, cached_weights, resolve_weights
from .load import (
    CheckpointError,
    convert_checkpoint,
    detect_format,
    is_folded_checkpoint,
    is_segmentation_checkpoint,
    load_into,
    read_checkpoint,
    read_converted,
)
from .loader import ModelRequest, check_head_weights, load_pretrained
from .pretrained import ModelIO, PretrainedCfg, model_io, model_labels, save_pretrained

__all__ = [
    "CheckpointError",
    "ModelIO",
    "ModelRequest",
    "PretrainedCfg",
    "WeightsUnavailableError",
    "cached_weights",
    "check_head_weights",
    "convert_checkpoint",
    "detect_format",
    "is_folded_checkpoint",
    "is_segmentation_checkpoint",
    "labels_for",
    "load_into",
    "load_pretrained",
    "model_io",
    "model_labels",
    "read_checkpoint",
    "read_converted",
    "read_labels_file",
    "resolve_weights",
    "save_pretrained",
]
