"""What a task is, and the one registry of tasks.

A task says what a model's outputs mean and owns everything that follows from it: how its images are preprocessed
(a centre crop, or the whole image resized), what one image's outputs become (a typed result), how a labelled set
scores it (``eval``), how training reads its targets (the loss), how the server reads a request's parameters and
answers (the Hugging Face task), what ``--json`` and the command line show. A model says which task it answers by
name (its ``task`` attribute, an exported file's ``task`` metadata); :func:`get_task` turns the name into the task
object, and every caller asks that object instead of comparing names. The runner (:mod:`mobilevit.predict`), the
server, ``eval``, ``export`` and ``bench`` are task-neutral.

Registering a task (:func:`register_task`) is all it takes for those callers to run its models.
"""

from __future__ import annotations

import reprlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor, nn

from ..errors import NonFiniteOutputError, UsageError, suggest
from ..weights.entries import Preprocess

ECHO_CHARS = 64  # an error message quotes at most this much of what a client sent
_echo = reprlib.Repr()  # repr() bounded in length and depth: a value from a request can be 16 MB or deeply nested
_echo.maxstring = _echo.maxother = _echo.maxlong = ECHO_CHARS
_echo.maxlevel = 3


def echo(value: Any) -> str:
    """A short repr of a value taken from a request, for an error message."""
    return _echo.repr(value)


class Runner(Protocol):
    """What a task asks of the runner that runs its model (:class:`mobilevit.predict.Runner`)."""

    labels: list[str]
    batch_size: int

    @property
    def model_name(self) -> str: ...

    def load_input(self, item: Any, name: str | None = None) -> tuple[Tensor, Any]: ...

    def logits(self, batch: Tensor) -> Tensor: ...

    def postprocess(self, outputs: Tensor, context: Any = None, **options: Any) -> Any: ...

    def answer(self, loaded: list[tuple[Tensor, Any]], **options: Any) -> list[Any]: ...

    def map_files(self, items: Any, load: Callable, answer: Callable, progress: Callable | None = None) -> Any: ...


class Task(ABC):
    """One task: the meaning of a model's outputs and every policy that follows from it.

    A subclass sets the class attributes and implements :meth:`postprocess`, :meth:`evaluate`, :meth:`read_parameters`
    and :meth:`encode`; the other methods have the defaults most tasks want.

    Attributes:
        name: what models (their ``task`` attribute) and exported files (their ``task`` metadata) record.
        hf_task: the Hugging Face task the server speaks (``image-classification``).
        title: the task in messages (``"image classification"``).
        model_kind: a model of this task in messages (``"an image classification model"``).
        how_to_run: what to do with such a model, told when it is given to a runner of another task.
        outputs: the names of the model's outputs, in order (the first is ``logits``).
        output_axes: the axes of the first output (``("batch", "classes")``).
        default_label_set: the label set (:data:`~mobilevit.weights.entries.LABEL_SETS`) whose names a model of
            the task gets when nothing names its outputs and they are as many (``None``: ``class_<i>``).
        parameters: the request parameters the server accepts for this task (the names of ``parameter_schema``).
        parameter_schema: the JSON schema of each request parameter, for the server's OpenAPI description.
        answer_schema: the JSON schema of the server's answer, for its OpenAPI description.
        exact_decode: decode every image exactly (no DCT-downscaled JPEG decode): its result has the image's size.
        data_help: what ``eval`` reads for this task, for ``--help``.
        classifies_images: the first output scores classes per image (CoreML exports such a model as a classifier,
            its outputs labelled); else its outputs are maps or other tensors, exported as they are.
        export_kind: the model in an exported file's description (``"image classifier"``).
        batch_limit: the most images its models take in one forward pass (``None``: any number), whatever the
            runner's or the server's batch size (a Mask R-CNN's masks take 400 MB per image).
        also_answers: the names of other tasks whose commands run this task's models too, this task answering for
            them (a Mask R-CNN's boxes are a detector's: ``detect`` and ``eval --task detection`` run it).
        image_outputs: for a model whose output is one dict per image (``outputs`` names it as one), the names of
            one image's outputs, in the order an exported file gives them (batch 1); ``()`` for the others.
        export_formats: the export formats that can hold its models (``None``: every one).
    """

    name: ClassVar[str]
    hf_task: ClassVar[str]
    title: ClassVar[str]
    model_kind: ClassVar[str]
    how_to_run: ClassVar[str] = ""
    outputs: ClassVar[tuple[str, ...]] = ("logits",)
    output_axes: ClassVar[tuple[str, ...]] = ("batch", "classes")
    default_label_set: ClassVar[str | None] = None
    parameter_schema: ClassVar[dict[str, dict[str, Any]]] = {}
    answer_schema: ClassVar[dict[str, Any]] = {}
    exact_decode: ClassVar[bool] = False
    data_help: ClassVar[str] = ""
    classifies_images: ClassVar[bool] = False
    export_kind: ClassVar[str] = "model"
    batch_limit: ClassVar[int | None] = None
    also_answers: ClassVar[tuple[str, ...]] = ()
    image_outputs: ClassVar[tuple[str, ...]] = ()
    export_formats: ClassVar[tuple[str, ...] | None] = None

    @property
    def parameters(self) -> frozenset[str]:
        """The request parameters the server accepts for this task."""
        return frozenset(self.parameter_schema)

    # ------------------------------------------------------------------------------------------ preprocessing

    def preprocess(self, preprocess: Preprocess) -> Preprocess:
        """The preprocessing this task runs its models with, from the weights' (default: as it is)."""
        return preprocess

    def fixed_size_preprocess(self, preprocess: Preprocess, size: tuple[int, int]) -> Preprocess:
        """The preprocessing an exported file that takes only ``size`` (H, W) records, from :meth:`preprocess`'s
        (default: as it is: a classifier's crop and a segmentation model's resize are the weights' own, and the runner
        refuses a file that cannot take them)."""
        return preprocess

    def bench_size(self, preprocess: Preprocess, default: int) -> tuple[int, int]:
        """The (H, W) ``bench`` times a model of this task at when no resolution is given (default: square)."""
        return default, default

    def labelled_classes(self, num_classes: int) -> int:
        """How many of a model's ``num_classes`` output classes labels name (default: all; a detector's background
        has none)."""
        return num_classes

    def batched(self, outputs: dict[str, Tensor], batch: int) -> dict[str, Tensor]:
        """A model's named outputs (a task with several :attr:`outputs`) with a ``[batch, ...]`` row for each image
        (default: as they are)."""
        return outputs

    def context(self, image: Image.Image) -> Any:
        """What :meth:`postprocess` needs of the decoded image besides the model's input (default: nothing)."""
        return None

    # ------------------------------------------------------------------------------------------------ results

    def check_options(self, **options: Any) -> None:
        """Raise a clear error for bad :meth:`postprocess` options, before any image is decoded (default: any go)."""
        return None

    @abstractmethod
    def postprocess(self, runner: Runner, outputs: Tensor, context: Any = None, **options: Any) -> Any:
        """One image's typed result from its row of the model's outputs (and :meth:`context`)."""

    def wrong_runner(self, model: str) -> str:
        """The error for a model of this task given to a runner of another: what it is, what runs it."""
        return (
            f"{model} is {self.model_kind}: {self.how_to_run}" if self.how_to_run else f"{model} is {self.model_kind}"
        )

    def render(self, result: Any, stem: Path) -> dict[str, str]:
        """Write the pictures of one result next to ``stem`` (a path without suffix); ``{kind: file}`` of what was
        written (default: nothing)."""
        return {}

    def describe(self, path: str, result: Any, files: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
        """One input's line of the command line's output, with the ``files`` :meth:`render` wrote: ``(the --json
        record, the text)``."""
        record = {"file": path, **(files or {}), **result.to_dict()}
        return record, f"{path}: {record}"

    # ------------------------------------------------------------------------------------------------- eval

    @abstractmethod
    def evaluate(
        self, runner: Runner, data: str, split: str | None, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Score ``runner`` on the labelled set at ``data``: the metrics, ``count`` and ``failed``; under
        ``torch.distributed`` each rank scores its share (:func:`shard`) and the counts are summed."""

    def score_results(self, data: str, results: str, split: str | None = None) -> dict[str, Any]:
        """The metric of a file of results made elsewhere (``eval --results``), against the labelled set at ``data``
        (default: not supported)."""
        raise UsageError(f"--results is not supported for {self.title}")

    def eval_total(self, data: str, split: str | None) -> int | None:
        """How many items :meth:`evaluate` scores (for a progress bar; ``None``: unknown)."""
        return None

    def eval_summary(self, model: str, result: dict[str, Any]) -> str:
        """The text ``eval`` prints for ``result``."""
        return f"{model}: {result}"

    # ---------------------------------------------------------------------------------------------- serving

    @abstractmethod
    def read_parameters(self, params: dict[str, Any]) -> dict[str, Any]:
        """The :meth:`postprocess` options of a request's ``parameters`` (names already checked against
        :attr:`parameters`); raise :class:`~mobilevit.errors.UsageError` for a bad value."""

    @abstractmethod
    def encode(self, result: Any, options: dict[str, Any]) -> Any:
        """The server's JSON answer for one result."""

    @property
    def hf_tasks(self) -> tuple[str, ...]:
        """The Hugging Face tasks the server answers for this task's models, its default (:attr:`hf_task`) first."""
        return (self.hf_task,)

    def serving(self, hf_task: str) -> Task:
        """The task object that answers the server's requests for the Hugging Face task ``hf_task`` (its parameters,
        its answer): this one for its own :attr:`hf_task` (default: no other).

        Raises:
            UsageError: models of this task do not answer ``hf_task``.
        """
        if hf_task != self.hf_task:
            raise UsageError(f"{self.title} models answer {' and '.join(self.hf_tasks)}, not {echo(hf_task)}")
        return self

    def answer(self, runner: Runner, outputs: Tensor, context: Any, options: dict[str, Any]) -> Any:
        """The server's JSON answer for one image's outputs and a request's :meth:`read_parameters` options (default:
        :meth:`postprocess` with those options, then :meth:`encode`)."""
        return self.encode(self.postprocess(runner, outputs, context, **options), options)

    # --------------------------------------------------------------------------------------------- training
    # what the training runner (mobilevit.train, above this layer) reads: it builds the loss named by ``loss`` and
    # runs the validation that computes ``best_metric``

    loss: ClassVar[str] = ""  # the training loss, by its name in mobilevit.train.losses.LOSSES ("": not trainable)
    train_data: ClassVar[str] = ""  # the kind of training data, by its name in mobilevit.train.build.TRAIN_DATA
    val_columns: ClassVar[tuple[str, ...]] = ()  # the validation columns of the training log
    loss_columns: ClassVar[tuple[str, ...]] = ()  # the loss's own terms in the training log (train_<term>)
    best_metric: ClassVar[str] = ""  # the validation metric that picks the best checkpoint (higher is better)
    best_metric_title: ClassVar[str] = ""  # that metric in messages ("top-1")
    mixes_images: ClassVar[bool] = False  # mixup / cutmix apply to its training batches
    labels_from_weights: ClassVar[bool] = False  # final/ keeps the loaded weights' labels when the data names none


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry under its name (the runner, ``eval``, ``serve`` and ``export`` then run its
    models); returns it. A second task of the same name replaces the first."""
    TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove a task added by :func:`register_task` (tests)."""
    TASKS.pop(name, None)


def get_task(name: str) -> Task:
    """The task registered as ``name`` (what a model or an exported file records), or a clear error."""
    try:
        return TASKS[name]
    except KeyError:
        raise UsageError(f"unknown task {name!r}.{suggest(name, list(TASKS))} Tasks: {', '.join(TASKS)}") from None


def task_names() -> tuple[str, ...]:
    """Every registered task's name, in registration order."""
    return tuple(TASKS)


def task_of(model: nn.Module) -> Task:
    """The task a PyTorch model answers: its ``task`` attribute (every model of this package has one)."""
    return get_task(getattr(model, "task", default_task().name))


def default_task() -> Task:
    """The task of a model or file that names none: the first registered (image classification)."""
    return next(iter(TASKS.values()))


# ------------------------------------------------------------------------------------------------ helpers


def check_finite(outputs: Tensor, model: str) -> None:
    """Raise :class:`~mobilevit.errors.NonFiniteOutputError` naming ``model`` when any value of ``outputs`` (one row
    per image) is NaN or infinite: no result is made from such outputs (one NaN logit makes a whole softmax NaN, and
    the argmax of NaNs is an arbitrary class)."""
    finite = torch.isfinite(outputs.reshape(len(outputs), -1)).all(1)  # [B, ...] -> [B]
    if bool(finite.all()):
        return
    images = f" for {int((~finite).sum())} of {len(finite)} images" if len(finite) > 1 else ""
    raise NonFiniteOutputError(f"{model} produced non-finite values (NaN or infinity){images}: check its weights")


def shard(samples: Sequence[Any]) -> tuple[list[Any], int]:
    """This rank's share of ``samples`` (every ``world_size``-th from its rank) and the world size."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    return list(samples[rank::world]), world


def sum_across_ranks(counts: Tensor, failed: list[dict[str, str]], world: int) -> list[dict[str, str]]:
    """Sum ``counts`` over the ranks in place and return every rank's failures (one process: unchanged)."""
    if world == 1:
        return failed
    dist.all_reduce(counts)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, failed)
    return [f for part in gathered for f in part]
