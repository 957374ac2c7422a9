"""What an exported file carries besides the graph: the task, the preprocessing, the labels and the valid input sizes.

The same flat ``str -> str`` dictionary goes into ONNX ``metadata_props``, as one JSON file into a TorchScript
archive's ``_extra_files``, as one JSON string into a ``.pte`` program's ``mobilevit_metadata`` method and a
``.tflite`` file's ``mobilevit.metadata`` entry, so that a runtime needs nothing but the exported file. The exporters
(:mod:`mobilevit.export`) write it and the runtimes read it, so it lives here, below both::

    {
      "library": "mobilevit",
      "format_version": "1",
      "arch": "mobilevit_xxs",
      "task": "classification",                          # or "segmentation": [B, num_classes, h, w] logits
      "weights": "mobilevit_xxs.cvnets_in1k",          # or "" for random / unregistered weights
      "input_name": "pixel_values", "output_name": "logits",
      "output_names": "[\"logits\", \"boxes\", \"anchors\"]",  # only for a model of several outputs (a detector)
      "input_size": "[256, 256]",                        # the (H, W) the file was exported and checked at
      "dynamic_axes": "[\"batch\", \"height\", \"width\"]",
      "size_multiple": "1",                              # dynamic H and W must be multiples of this
      "preprocess": "{\"input_size\": [256, 256], \"resize_size\": 288, ...}",  # Preprocess as JSON
      "labels": "[\"tench\", \"goldfish\", ...]"         # index-aligned with the logits
    }

A file without ``task`` (written before the key existed, or by hand) is read as a classifier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import UsageError
from ..weights.entries import Preprocess
from ..weights.load import LIBRARY
from ..weights.pretrained import preprocess_from_json, preprocess_to_json

FORMAT_VERSION = 1
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportMetadata:
    """Everything an exported file records about its model.

    Attributes:
        arch: architecture name.
        weights: the weights entry name (``arch.tag``), or ``""`` when there is none.
        input_size: (H, W) the export was traced and checked at.
        dynamic_axes: names of the input axes that may vary (subset of ``batch``, ``height``, ``width``).
        size_multiple: dynamic heights and widths must be multiples of this.
        preprocess: the eval transform the weights expect.
        labels: class names, index-aligned with the logits.
        task: the name of the model's task (:mod:`mobilevit.tasks`, which reads it): ``"classification"`` (``[B,
            num_classes]`` logits), ``"segmentation"`` (``[B, num_classes, h, w]``
            logits at a fraction of the input's size).
        output_axes: what each axis of the output is (``("batch", "classes")``; a segmentation model's also
            ``"height", "width"``).
        output_names: every output's name in the graph's order, for a model of several (a detector's ``logits``,
            ``boxes``, ``anchors``); ``()`` for a model of one (``output_name`` names it).
        per_image: the outputs are one image's (batch 1) and vary in length from image to image (a Mask R-CNN's
            ``boxes``, ``labels``, ``scores``, ``masks``): a runtime gives them back as the eager model does, a list
            of one dict by name (:meth:`~mobilevit.runtime.base.Runtime.run`).
    """

    arch: str
    weights: str
    input_size: tuple[int, int]
    dynamic_axes: tuple[str, ...]
    size_multiple: int
    preprocess: Preprocess | None
    labels: tuple[str, ...]
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    task: str = "classification"
    output_axes: tuple[str, ...] = ("batch", "classes")
    output_names: tuple[str, ...] = ()
    per_image: bool = False

    @property
    def outputs(self) -> tuple[str, ...]:
        """The names of the graph's outputs, in order."""
        return self.output_names or (self.output_name,)

    def to_dict(self) -> dict[str, str]:
        """The flat string dictionary stored in the exported file."""
        extra = {"output_names": json.dumps(list(self.output_names))} if self.output_names else {}
        if self.per_image:
            extra["per_image"] = "true"
        return {
            "library": LIBRARY,
            "format_version": str(FORMAT_VERSION),
            "arch": self.arch,
            "task": self.task,
            "weights": self.weights,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "input_size": json.dumps(list(self.input_size)),
            "dynamic_axes": json.dumps(list(self.dynamic_axes)),
            "size_multiple": str(self.size_multiple),
            "preprocess": json.dumps(preprocess_to_json(self.preprocess)),
            "labels": json.dumps(list(self.labels)),
            "output_axes": json.dumps(list(self.output_axes)),
            **extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> ExportMetadata:
        """Read back :meth:`to_dict` (as found in an exported file); raises ``ValueError`` for a foreign file."""
        if data.get("library") != LIBRARY:
            raise UsageError(f"not a file exported by {LIBRARY} (no 'library': '{LIBRARY}' metadata)")
        return cls(
            arch=data["arch"],
            weights=data.get("weights", ""),
            input_size=tuple(json.loads(data["input_size"])),
            dynamic_axes=tuple(json.loads(data["dynamic_axes"])),
            size_multiple=int(data["size_multiple"]),
            preprocess=preprocess_from_json(json.loads(data["preprocess"])),
            labels=tuple(json.loads(data["labels"])),
            input_name=data.get("input_name", INPUT_NAME),
            output_name=data.get("output_name", OUTPUT_NAME),
            task=data.get("task", "classification"),
            output_axes=tuple(json.loads(data.get("output_axes", '["batch", "classes"]'))),
            output_names=tuple(json.loads(data.get("output_names", "[]"))),
            per_image=data.get("per_image") == "true",
        )
