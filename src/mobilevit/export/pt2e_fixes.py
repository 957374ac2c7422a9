"""Channel equalization, bias correction and layers kept in float, for int8 in PyTorch 2 export form (PT2E).

The same fixes that :mod:`mobilevit.export.quant_fixes` applies to ONNX graphs (its docstring says why folded,
re-parameterized networks need them), here applied to the folded PyTorch model before the toolchain's quantizer sees
it, with the same math (:func:`~mobilevit.export.quant_fixes.equalization_scales`,
:func:`~mobilevit.export.quant_fixes.scale_channels`, :func:`~mobilevit.export.quant_fixes.output_shift`). The
layers are found in the ``torch.export`` graph of the model (ATen ops), and the changes written into the model's
parameters, so the graph that is then exported and quantized carries them:

- :func:`equalize_model`: for each ``conv2d -> [relu] -> [spatial mean | flatten | dropout] -> conv2d/linear``
  chain, output channel ``c`` of the first layer divided by ``s_c`` and input channel ``c`` of the second multiplied
  by it; the float model computes the same logits.
- :func:`correct_bias`: each layer whose weight the quantizer makes int8 gets its bias moved back by
  ``E[(W_int8 - W) x]``, with ``W_int8`` rounded exactly as the quantizer's own weight observer rounds it and
  ``E[x]`` the layer's mean input over the calibration images.
- :func:`keep_float`: a quantizer that leaves the ops of named modules in float. Both toolchains' quantizers skip a
  node that already carries a quantization annotation, so the wrapper marks those nodes (with an empty annotation)
  before the wrapped quantizer annotates the rest.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .quant_fixes import equalization_scales, input_channel_max, output_shift, scale_channels
from .quantize import resolve_anchors

logger = logging.getLogger(__name__)

ANNOTATION = "quantization_annotation"  # the node.meta key torchao's quantizers annotate under


def _ops() -> dict[str, tuple[Any, ...]]:
    aten = torch.ops.aten
    return {
        "conv": (aten.conv2d.default,),
        "linear": (aten.linear.default,),
        "relu": (aten.relu.default, aten.relu_.default),
        "pool": (aten.mean.dim, aten.adaptive_avg_pool2d.default, aten.flatten.using_ints),
        "identity": (aten.dropout.default, aten.contiguous.default, aten.clone.default),  # the same values in eval
    }


@dataclasses.dataclass(frozen=True)
class Pair:
    """Two layers of an exported graph whose shared channels :func:`equalize_model` rescales.

    Attributes:
        producer: the ``conv2d`` node whose output channels are divided.
        activation: the node whose output int8 quantizes between the two (the ReLU's, else the producer's).
        consumer: the ``conv2d`` or ``linear`` node whose input channels are multiplied.
        kind: ``"conv"``, ``"depthwise"`` or ``"gemm_t"`` (linear), as in :class:`mobilevit.export.quant_fixes.Pair`.
    """

    producer: torch.fx.Node
    activation: torch.fx.Node
    consumer: torch.fx.Node
    kind: str


def export_graph(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """The ``torch.export`` graph of ``model`` at ``example``'s shape; its parameters are ``get_attr`` nodes named by
    their qualified names in ``model``."""
    return torch.export.export(model, (example,)).module()


def _groups(node: torch.fx.Node) -> int:
    return int(node.args[6]) if len(node.args) > 6 else 1


def _weight_names(graph: torch.fx.GraphModule, params: dict[str, nn.Parameter]) -> dict[torch.fx.Node, str]:
    """``conv2d``/``linear`` node -> the qualified name of its weight, for weights that are parameters of ``params``
    used by exactly one node."""
    ops = _ops()
    layers = [n for n in graph.graph.nodes if n.op == "call_function" and n.target in ops["conv"] + ops["linear"]]
    found = {}
    for node in layers:
        weight = node.args[1]
        if isinstance(weight, torch.fx.Node) and weight.op == "get_attr" and weight.target in params:
            found[node] = str(weight.target)
    counts: dict[str, int] = {}
    for name in found.values():
        counts[name] = counts.get(name, 0) + 1
    return {node: name for node, name in found.items() if counts[name] == 1}


def _bias_name(node: torch.fx.Node, params: dict[str, nn.Parameter]) -> str | None:
    bias = node.args[2] if len(node.args) > 2 else None
    if isinstance(bias, torch.fx.Node) and bias.op == "get_attr" and bias.target in params:
        return str(bias.target)
    return None


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _pools_spatially(node: torch.fx.Node) -> bool:
    """``node`` mixes no channels and keeps them on axis 1: a mean over exactly H and W of a 4-D tensor, an adaptive
    average pool to 1x1 or a flatten from axis 1."""
    aten = torch.ops.aten
    if node.target == aten.mean.dim:
        return sorted(int(d) % 4 for d in node.args[1]) == [2, 3] and node.args[0].meta["val"].ndim == 4
    if node.target == aten.adaptive_avg_pool2d.default:
        return list(node.args[1]) == [1, 1]
    if node.target == aten.flatten.using_ints:
        return len(node.args) > 1 and node.args[1] == 1
    return True


def find_pairs(graph: torch.fx.GraphModule, params: dict[str, nn.Parameter]) -> list[Pair]:
    """Every ``conv2d -> [relu] -> [mean over H, W | adaptive pool 1x1 | flatten | dropout | contiguous] -> conv2d``
    or ``linear`` chain of ``graph`` in which each tensor has one user and both weights are parameters of ``params``
    used by no other layer (a conv2d consumer must be dense or depthwise and follow no pooling; a linear one must
    follow pooling)."""
    ops = _ops()
    weights = _weight_names(graph, params)
    pairs = []
    for producer in weights:
        if producer.target not in ops["conv"]:
            continue
        activation = producer
        node = _only_user(activation)
        if node is not None and node.target in ops["relu"] and node.args[0] is producer:
            activation, node = node, _only_user(node)
        pooled, last = False, activation
        while node is not None and node.args[0] is last and node.target in ops["pool"] + ops["identity"]:
            if node.target in ops["pool"] and not _pools_spatially(node):
                break
            pooled, last, node = pooled or node.target in ops["pool"], node, _only_user(node)
        if node is None or node not in weights or node.args[0] is not last:
            continue
        kind = None
        if node.target in ops["linear"] and pooled:
            kind = "gemm_t"
        elif node.target in ops["conv"] and not pooled:
            shape = params[weights[node]].shape
            groups = _groups(node)
            kind = "conv" if groups == 1 else "depthwise" if shape[1] == 1 and shape[0] == groups else None
        if kind is not None:
            pairs.append(Pair(producer, activation, node, kind))
    return pairs


class _ChannelStats(torch.fx.Interpreter):
    """Runs a graph and keeps, per watched node, the running per-channel ``absmax`` or ``sum`` of its output over
    every axis but ``axis``."""

    def __init__(self, graph: torch.fx.GraphModule, watched: dict[torch.fx.Node, int], stat: str) -> None:
        super().__init__(graph)
        self.watched, self.stat = watched, stat
        self.values: dict[torch.fx.Node, torch.Tensor] = {}
        self.count = 0

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.watched:
            axis = self.watched[n] % out.ndim
            dims = [d for d in range(out.ndim) if d != axis]
            value = out.detach().double()
            if self.stat == "absmax":
                found = value.abs().amax(dim=dims)
                self.values[n] = torch.maximum(self.values[n], found) if n in self.values else found
            else:  # mean per sample, summed; divided by the sample count at the end
                found = value.mean(dim=dims) * out.shape[0]
                self.values[n] = self.values[n] + found if n in self.values else found
        return out


def channel_stats(
    graph: torch.fx.GraphModule, watched: dict[torch.fx.Node, int], batches: Sequence[torch.Tensor], stat: str
) -> dict[torch.fx.Node, np.ndarray]:
    """Per-channel ``"absmax"`` or ``"mean"`` of the output of each watched node of ``graph`` (node -> its channel
    axis) over ``batches``."""
    stats = _ChannelStats(graph, watched, stat)
    samples = 0
    with torch.no_grad():
        for batch in batches:
            stats.run(batch)
            samples += len(batch)
    if stat == "mean":
        return {n: (v / samples).numpy() for n, v in stats.values.items()}
    return {n: v.numpy() for n, v in stats.values.items()}


def equalize_model(model: nn.Module, example: torch.Tensor, batches: Sequence[torch.Tensor], alpha: float) -> int:
    """Rescale, in ``model``'s parameters, the channels between every :func:`find_pairs` pair so that their
    activations quantize evenly (``s_c = max|x_c|^alpha / max|W2[:, c]|^(1 - alpha)``, ranges measured on
    ``batches``). The float logits do not change (up to rounding).

    Returns:
        The number of layer pairs rescaled.
    """
    params = dict(model.named_parameters())
    graph = export_graph(model, example)
    pairs = find_pairs(graph, params)
    act_max = channel_stats(graph, {p.activation: 1 for p in pairs}, batches, "absmax")
    with torch.no_grad():
        for pair in pairs:
            producer = params[str(pair.producer.args[1].target)]
            bias_name = _bias_name(pair.producer, params)
            consumer = params[str(pair.consumer.args[1].target)]
            arrays = [p.detach().double().numpy().copy() for p in (producer, consumer)]
            bias = params[bias_name].detach().double().numpy().copy() if bias_name else None
            weight_max = input_channel_max(arrays[1], pair.kind)
            scales = equalization_scales(act_max[pair.activation], weight_max, alpha)
            scale_channels(arrays[0], bias, arrays[1], pair.kind, scales)
            producer.copy_(torch.from_numpy(arrays[0]))
            consumer.copy_(torch.from_numpy(arrays[1]))
            if bias_name:
                params[bias_name].copy_(torch.from_numpy(bias))
    logger.info("equalized the channels of %d layer pairs (alpha %.2f)", len(pairs), alpha)
    return len(pairs)


def _rounded(weight: torch.Tensor, spec: Any) -> torch.Tensor:
    """``weight`` quantized and dequantized as an observer built from the quantization ``spec`` rounds it."""
    kwargs = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "observer_or_fake_quant_ctr"}
    per_channel = spec.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
    if not per_channel:
        kwargs.pop("ch_axis", None)
    observer = spec.observer_or_fake_quant_ctr.with_args(**kwargs)()
    observer(weight)
    scale, zero = observer.calculate_qparams()
    if per_channel:
        return torch.fake_quantize_per_channel_affine(
            weight, scale.float(), zero.int(), spec.ch_axis or 0, spec.quant_min, spec.quant_max
        )
    return torch.fake_quantize_per_tensor_affine(weight, float(scale), int(zero), spec.quant_min, spec.quant_max)


def quantized_weights(
    model: nn.Module, example: torch.Tensor, quantizer: Any
) -> tuple[torch.fx.GraphModule, dict[torch.fx.Node, Any]]:
    """The annotated graph of ``model`` and its ``conv2d``/``linear`` nodes whose weight ``quantizer`` makes int8,
    each with that weight's quantization spec."""
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    graph = quantizer.transform_for_annotation(export_graph(model, example))
    quantizer.annotate(graph)
    params = dict(model.named_parameters())
    found = {}
    for node in _weight_names(graph, params):
        annotation = node.meta.get(ANNOTATION)
        spec = annotation.input_qspec_map.get(node.args[1]) if annotation is not None else None
        if isinstance(spec, QuantizationSpec) and spec.dtype == torch.int8:
            found[node] = spec
    return graph, found


def correct_bias(model: nn.Module, example: torch.Tensor, batches: Sequence[torch.Tensor], quantizer: Any) -> int:
    """Move the bias of each layer whose weight ``quantizer`` makes int8 back by the mean shift the weight's rounding
    causes, ``E[(W_int8 - W) x]`` (``E[x]``: the layer's mean input channel over ``batches``), in ``model``'s
    parameters.

    Returns:
        The number of layers corrected (those with a bias).
    """
    params = dict(model.named_parameters())
    graph, specs = quantized_weights(model, example, quantizer)
    ops = _ops()
    layers = {node: spec for node, spec in specs.items() if _bias_name(node, params)}
    # a conv2d's input channels are axis 1; a linear layer's the last axis
    watched = {node.args[0]: 1 if node.target in ops["conv"] else -1 for node in layers}
    means = channel_stats(graph, watched, batches, "mean")
    with torch.no_grad():
        for node, spec in layers.items():
            weight = params[str(node.args[1].target)].detach()
            error = (_rounded(weight, spec) - weight).double().numpy()
            shift = output_shift(error, means[node.args[0]], _groups(node) if node.target in ops["conv"] else 1)
            bias = params[str(_bias_name(node, params))]
            bias.sub_(torch.from_numpy(shift).to(bias.dtype))
    logger.info("corrected the bias of %d quantized layers", len(layers))
    return len(layers)


def _module_path(node: torch.fx.Node) -> str | None:
    """The qualified name of the innermost module that ``node`` comes from (``None`` for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [path for path, _ in stack.values()]
    return paths[-1] if paths and paths[-1] else None


def resolve_keep_fp32(graph: torch.fx.GraphModule, model: nn.Module, keep_fp32: Iterable[str]) -> tuple[str, ...]:
    """Module names for ``keep_fp32``: ``first``/``last`` become the modules of the graph's first/last ``conv2d`` or
    ``linear`` (e.g. a stem convolution and a classifier), other entries must name submodules of ``model``."""
    ops = _ops()
    layers = [_module_path(n) for n in graph.graph.nodes if n.target in ops["conv"] + ops["linear"]]
    modules = {name for name, _ in model.named_modules() if name}
    return resolve_anchors(keep_fp32, [path for path in layers if path], modules, "module", "conv2d/linear")


def _in_modules(names: Sequence[str]) -> Callable[[torch.fx.Node], bool]:
    def inside(node: torch.fx.Node) -> bool:
        stack = node.meta.get("nn_module_stack") or {}
        return any(path == name or path.startswith(name + ".") for path, _ in stack.values() for name in names)

    return inside


def keep_float(quantizer: Any, modules: Sequence[str]) -> Any:
    """``quantizer`` (a torchao PT2E quantizer) leaving every op of the named ``modules`` in float."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer

    inside = _in_modules(modules)

    class KeepFloat(Quantizer):
        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            return quantizer.transform_for_annotation(model)

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in model.graph.nodes:
                if node.op == "call_function" and inside(node):
                    node.meta[ANNOTATION] = QuantizationAnnotation(_annotated=True)  # nothing quantized
            return quantizer.annotate(model)

        def validate(self, model: torch.fx.GraphModule) -> None:
            quantizer.validate(model)

    return KeepFloat() if modules else quantizer
