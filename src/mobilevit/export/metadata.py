"""How an exporter fills the record an exported file carries (:class:`~mobilevit.runtime.metadata.ExportMetadata`,
which lives with the runtimes that read it and is importable from here too) from a model of this package."""

from __future__ import annotations

from torch import nn

from ..runtime.metadata import FORMAT_VERSION, INPUT_NAME, OUTPUT_NAME, ExportMetadata
from ..tasks import get_task
from ..weights.entries import Preprocess, check_labels
from ..weights.pretrained import model_io

__all__ = [
    "FORMAT_VERSION",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportMetadata",
    "model_metadata",
    "size_multiple",
]


def size_multiple(model: nn.Module) -> int:
    """The multiple that input heights and widths must have for one exported graph to serve every size: ``1``.

    MobileViT blocks always emit their patch-grid resize (an identity on the grid) and FastViT and MobileOne are fully
    convolutional up to the pooled head, so a dynamic graph takes every size the eager model takes. The predictor
    honours whatever multiple a file records.
    """
    return 1


def model_metadata(
    model: nn.Module,
    input_size: tuple[int, int] | None = None,
    dynamic_axes: tuple[str, ...] = (),
    preprocess: Preprocess | None = None,
    labels: list[str] | tuple[str, ...] | None = None,
) -> ExportMetadata:
    """The metadata of ``model`` as the runner of its task would use it (a segmentation model: the whole image
    resized, no crop; a detector fixed at ``input_size``: the whole image resized to it).

    Args:
        model: a model of this package; its ``pretrained_cfg`` supplies the preprocessing and labels.
        input_size: (H, W) of the export (default: the preprocessing's crop).
        dynamic_axes: the input axes the exported graph accepts at any size.
        preprocess: override of the preprocessing (default: :func:`~mobilevit.weights.model_io`).
        labels: override of the class names (default: :func:`~mobilevit.weights.model_io`).
    """
    io = model_io(model)
    task = get_task(io.task)
    preprocess = task.preprocess(preprocess or io.preprocess)  # as the task's runner feeds the model
    labels = check_labels(labels, int(model.num_classes)) if labels is not None else io.labels
    input_size = input_size or preprocess.input_size
    if "height" not in dynamic_axes or "width" not in dynamic_axes:
        preprocess = task.fixed_size_preprocess(preprocess, input_size)
    return ExportMetadata(
        arch=io.arch,
        weights=io.weights or "",
        input_size=(int(input_size[0]), int(input_size[1])),
        dynamic_axes=tuple(dynamic_axes),
        size_multiple=size_multiple(model),
        preprocess=preprocess,
        labels=tuple(str(x) for x in labels),
        task=io.task,
        output_axes=tuple(getattr(model, "output_axes", task.output_axes)),
        output_names=task.image_outputs or (task.outputs if len(task.outputs) > 1 else ()),
        per_image=bool(task.image_outputs),
    )
