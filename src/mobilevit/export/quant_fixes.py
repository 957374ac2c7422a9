"""Two graph fixes around onnxruntime's int8 quantization, for networks whose folded kernels quantize badly.

Re-parameterized networks (MobileOne, RepVGG-style blocks) fold several branches and BatchNorms into each kernel.
The folded network amplifies small errors, and its activations differ widely in range between channels: a few
channels reach 100-200 where the median channel peaks near 5, so one int8 scale per tensor leaves most channels a
handful of levels. Two classic post-training fixes address this, both computed from the calibration images:

- :func:`equalize_channels` (activation-aware cross-layer equalization, as SmoothQuant does for transformer linears
  and Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV 2019, for
  convolution pairs): for a ``Conv -> [Relu] -> Conv/Gemm`` pair, output channel ``c`` of the first layer is divided by
  ``s_c`` and input channel ``c`` of the second multiplied by it. ReLU commutes with a positive scale, so the float
  model computes the same logits, while the activation between the two layers gets channel ranges closer to each
  other. ``s_c = max|x_c|^alpha / max|W2[:, c]|^(1 - alpha)`` balances activation ranges (``alpha = 1``) against the
  second layer's weight ranges (``alpha = 0``).
- :func:`correct_bias` (bias correction, same paper): rounding the weights shifts each output channel's mean by
  ``sum(dW * E[x])``; the quantized bias is moved back by that amount, with ``E[x]`` the mean input of the layer over
  the calibration images.

Both work on ONNX files written by :func:`~mobilevit.export.export_model` and prepared by onnxruntime's
``quant_pre_process``; layers they cannot treat exactly (other activations, shared tensors, grouped convolutions
that are not depthwise) are left alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

INT32 = (-(2**31), 2**31 - 1)
POOLS = ("ReduceMean", "GlobalAveragePool", "Flatten")  # per-channel linear ops a scale passes through unchanged


@dataclass(frozen=True)
class Pair:
    """Two layers whose shared channels :func:`equalize_channels` rescales.

    Attributes:
        producer: the ``Conv`` whose output channels are divided.
        activation: the tensor that int8 quantizes between the two: the ReLU's output, else the producer's.
        consumer: the ``Conv`` or ``Gemm`` whose input channels are multiplied.
        kind: how the consumer's weight holds its input channels: ``"conv"`` (``[O, C, kh, kw]``), ``"depthwise"``
            (``[C, 1, kh, kw]``), ``"gemm_t"`` (``[O, C]``, transB) or ``"gemm"`` (``[C, O]``).
    """

    producer: Any
    activation: str
    consumer: Any
    kind: str


def _consumers(graph: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _attr(node: Any, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _only_consumer(name: str, consumers: dict[str, list[Any]], outputs: set[str]) -> Any | None:
    nodes = consumers.get(name, [])
    return nodes[0] if len(nodes) == 1 and name not in outputs else None


def _consumer_kind(node: Any, weights: dict[str, Any], pooled: bool) -> str | None:
    """How ``node`` takes its input channels (see :class:`Pair`), or ``None`` when it cannot absorb a scale."""
    if len(node.input) < 2 or node.input[1] not in weights:
        return None
    dims = list(weights[node.input[1]].dims)
    if node.op_type == "Conv" and not pooled:
        group = _attr(node, "group", 1)
        if group == 1:
            return "conv"
        if dims[1] == 1 and dims[0] == group:
            return "depthwise"
        return None
    if node.op_type == "Gemm" and pooled and not _attr(node, "transA", 0):
        return "gemm_t" if _attr(node, "transB", 0) else "gemm"
    return None


def find_pairs(graph: Any) -> list[Pair]:
    """Every ``Conv -> [Relu] -> [ReduceMean over H, W | GlobalAveragePool | Flatten] -> Conv/Gemm`` chain in which each
    tensor has one consumer and both weights are constants used by no other node."""
    weights = {init.name: init for init in graph.initializer}
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    shared = {name for name, nodes in consumers.items() if name in weights and len(nodes) > 1}
    pairs = []
    for producer in graph.node:
        if producer.op_type != "Conv" or producer.input[1] not in weights or producer.input[1] in shared:
            continue
        if len(producer.input) > 2 and producer.input[2] in shared:
            continue
        activation = producer.output[0]
        node = _only_consumer(activation, consumers, outputs)
        if node is not None and node.op_type == "Relu":
            activation = node.output[0]
            node = _only_consumer(activation, consumers, outputs)
        pooled = False
        while node is not None and node.op_type in POOLS and _pools_spatially(node, weights):
            pooled = True
            node = _only_consumer(node.output[0], consumers, outputs)
        if node is None or node.input[0] in shared or (len(node.input) > 1 and node.input[1] in shared):
            continue
        kind = _consumer_kind(node, weights, pooled)
        if kind is not None:
            pairs.append(Pair(producer, activation, node, kind))
    return pairs


def _pools_spatially(node: Any, weights: dict[str, Any]) -> bool:
    """``node`` keeps the channel axis 1 and mixes no channels (a ReduceMean must reduce exactly axes 2 and 3)."""
    if node.op_type != "ReduceMean":
        return True
    from onnx import numpy_helper

    if len(node.input) > 1:
        axes = numpy_helper.to_array(weights[node.input[1]]).tolist() if node.input[1] in weights else None
    else:
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    return axes is not None and sorted(axes) == [2, 3]


def _session(model: Any, extra_outputs: Sequence[str]) -> Any:
    """A one-thread onnxruntime session of ``model`` (a ModelProto, unchanged) that also returns ``extra_outputs``."""
    import onnx
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in extra_outputs:
        if name not in present:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])


def channel_stats(
    model: Any, tensors: Sequence[str], batches: Sequence[np.ndarray], stat: str
) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) ``"absmax"`` or ``"mean"`` of each of ``tensors`` in ``model`` over ``batches``."""
    names = sorted(set(tensors))
    if not names:
        return {}
    session = _session(model, names)
    input_name = session.get_inputs()[0].name
    total: list[np.ndarray] | None = None
    for batch in batches:
        values = session.run(names, {input_name: batch})
        axes = [(0, *range(2, v.ndim)) for v in values]
        if stat == "absmax":
            found = [np.abs(v).max(axis=a) for v, a in zip(values, axes, strict=True)]
            total = found if total is None else [np.maximum(t, f) for t, f in zip(total, found, strict=True)]
        else:
            found = [v.astype(np.float64).mean(axis=a) for v, a in zip(values, axes, strict=True)]
            total = found if total is None else [t + f for t, f in zip(total, found, strict=True)]
    assert total is not None, "no calibration batches"
    if stat == "mean":
        total = [t / len(batches) for t in total]
    return dict(zip(names, total, strict=True))


def input_channel_max(weight: np.ndarray, kind: str) -> np.ndarray:
    """Largest absolute weight per input channel of a consumer of ``kind`` (see :class:`Pair`)."""
    if kind == "conv":
        return np.abs(weight).max(axis=(0, 2, 3))
    if kind == "depthwise":
        return np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)
    return np.abs(weight).max(axis=0 if kind == "gemm_t" else 1)


def equalization_scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's ``s = act^alpha / w^(1 - alpha)``, normalised to a geometric mean of 1; 1 for dead channels."""
    scales = np.ones_like(act_max, dtype=np.float64)
    live = (act_max > 0) & (weight_max > 0)
    if live.any():
        scales[live] = act_max[live].astype(np.float64) ** alpha / weight_max[live].astype(np.float64) ** (1 - alpha)
        scales[live] /= np.exp(np.log(scales[live]).mean())
    return scales


def scale_channels(
    producer_weight: np.ndarray,
    producer_bias: np.ndarray | None,
    consumer_weight: np.ndarray,
    kind: str,
    scales: np.ndarray,
) -> None:
    """In place: divide the producer's output channels (weight axis 0, bias) by ``scales`` and multiply the
    consumer's input channels (as its ``kind`` holds them, see :class:`Pair`) by them."""
    producer_weight /= scales.reshape(-1, *[1] * (producer_weight.ndim - 1))
    if producer_bias is not None:
        producer_bias /= scales
    shape = {"conv": (1, -1, 1, 1), "depthwise": (-1, 1, 1, 1), "gemm_t": (1, -1), "gemm": (-1, 1)}[kind]
    consumer_weight *= scales.reshape(shape)


def equalize_channels(
    model: str | os.PathLike, output: str | os.PathLike, batches: Sequence[np.ndarray], alpha: float = 0.75
) -> int:
    """Rescale the channels between every :func:`find_pairs` pair so that their activations quantize evenly.

    Args:
        model: the float ONNX file.
        output: where to write the rescaled float file (the same logits, up to float rounding).
        batches: calibration inputs; the activation ranges are their per-channel maxima.
        alpha: 1 equalizes the activation ranges fully, 0 the consumer's weight ranges instead.

    Returns:
        The number of layer pairs rescaled.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model))
    pairs = find_pairs(proto.graph)
    act_max = channel_stats(proto, [p.activation for p in pairs], batches, "absmax")
    inits = {init.name: init for init in proto.graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    for pair in pairs:
        for node in (pair.producer, pair.consumer):
            for name in node.input[1:3]:
                if name in inits and name not in arrays:
                    arrays[name] = numpy_helper.to_array(inits[name]).astype(np.float64)
        producer, consumer = pair.producer.input, pair.consumer.input
        weight_max = input_channel_max(arrays[consumer[1]], pair.kind)
        bias = arrays[producer[2]] if len(producer) > 2 else None
        scales = equalization_scales(act_max[pair.activation], weight_max, alpha)
        scale_channels(arrays[producer[1]], bias, arrays[consumer[1]], pair.kind, scales)
    for name, array in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    onnx.save(proto, str(output))
    logger.info("equalized the channels of %d layer pairs (alpha %.2f)", len(pairs), alpha)
    return len(pairs)


def _dequantized(name: str, producers: dict[str, Any], inits: dict[str, Any]) -> tuple[Any, np.ndarray] | None:
    """``(DequantizeLinear node, float values)`` when ``name`` is a DequantizeLinear of a constant, else ``None``."""
    from onnx import numpy_helper

    node = producers.get(name)
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in inits:
        return None
    values = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2 else np.zeros(())
    if scale.ndim == 1 and values.ndim > 1:  # per channel along the axis attribute (0 for our weights)
        axis = _attr(node, "axis", 1)
        shape = [1] * values.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.ndim else zero
    return node, (values - zero) * scale


def output_shift(weight_error: np.ndarray, input_mean: np.ndarray, groups: int = 1) -> np.ndarray:
    """``E[dW x]`` per output channel of a layer whose weight is off by ``weight_error``: a convolution's
    ``[O, C / groups, kh, kw]`` or a linear layer's ``[O, C]``, with ``input_mean`` the mean of each input channel."""
    if weight_error.ndim == 2:
        return weight_error @ input_mean
    per_input = weight_error.sum(axis=tuple(range(2, weight_error.ndim)))  # [O, C/g]
    channels = per_input.shape[1]
    group_of = np.arange(per_input.shape[0]) // (per_input.shape[0] // groups)
    means = input_mean.reshape(groups, channels)[group_of]  # [O, C/g]: the input channels each output sees
    return (per_input * means).sum(axis=1)


def correct_bias(float_model: str | os.PathLike, quantized: str | os.PathLike, batches: Sequence[np.ndarray]) -> int:
    """Move each quantized Conv/Gemm bias of ``quantized`` (QDQ, rewritten in place) back by its weights' rounding
    shift, ``E[(W_int8 - W) x]``, with ``E[x]`` the layer's mean input in ``float_model`` over ``batches``.

    Returns:
        The number of layers corrected (those with a quantized weight and bias, matched by node name).
    """
    import onnx
    from onnx import numpy_helper

    reference = onnx.load(str(float_model))
    nodes = {n.name: n for n in reference.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2}
    weights = {i.name: i for i in reference.graph.initializer}
    proto = onnx.load(str(quantized))
    inits = {init.name: init for init in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    todo = []
    for node in proto.graph.node:
        if node.name in nodes and len(node.input) > 2 and nodes[node.name].input[1] in weights:
            weight, bias = _dequantized(node.input[1], producers, inits), _dequantized(node.input[2], producers, inits)
            if weight is not None and bias is not None:
                todo.append((node, weight[1], bias))
    means = channel_stats(reference, [nodes[n.name].input[0] for n, _, _ in todo], batches, "mean")
    for node, weight, (bias_node, bias) in todo:
        original = numpy_helper.to_array(weights[nodes[node.name].input[1]]).astype(np.float64)
        error = weight - original
        if node.op_type == "Gemm" and not _attr(node, "transB", 0):
            error = error.T  # [C, O] -> [O, C]
        shift = output_shift(error, means[nodes[node.name].input[0]], _attr(node, "group", 1))
        scale = numpy_helper.to_array(inits[bias_node.input[1]]).astype(np.float64)
        zero = numpy_helper.to_array(inits[bias_node.input[2]]) if len(bias_node.input) > 2 else 0
        fixed = np.clip(np.round((bias - shift) / scale) + zero, *INT32).astype(np.int32)
        inits[bias_node.input[0]].CopyFrom(numpy_helper.from_array(fixed, bias_node.input[0]))
    onnx.save(proto, str(quantized))
    logger.info("corrected the bias of %d quantized layers", len(todo))
    return len(todo)
