"""The int8 fixes of the ExecuTorch and LiteRT paths (PT2E): channel equalization, bias correction, layers kept in
float, and their options through ``export_model`` and the CLI.

References: the float model's own logits (equalization must not change them), the per-channel activation ranges
measured with forward hooks (alpha 1 makes them equal), the textbook symmetric per-channel int8 rounding of a weight
(``scale = max|W_c| / 127``) for the mean shift that bias correction cancels, and the graph torchao converts.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

import mobilevit
from conftest import random_model
from mobilevit.cli import main
from mobilevit.export import Int8Options
from mobilevit.export.pt2e import quantize_pt2e, with_observer
from mobilevit.export.pt2e_fixes import correct_bias, equalize_model, export_graph, keep_float, resolve_keep_fp32

SIZE = 64


def batches(count: int = 3, size: int = SIZE) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, size, size, generator=g) for _ in range(count)]


def xnnpack_quantizer(observer: str = "histogram") -> object:
    if importlib.util.find_spec("executorch") is None:
        pytest.skip("executorch is not installed (pip install 'mobilevit[executorch]')")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=True)
    return XNNPACKQuantizer().set_global(with_observer(config, observer))


def folded(name: str) -> nn.Module:
    return mobilevit.reparameterize_model(random_model(name)).eval()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", ["mobileone_s0", "fastvit_t8", "mobilevitv2_050", "mobilevit_xxs"])
def test_equalization_keeps_the_float_logits(name: str) -> None:
    model = folded(name)
    x = batches()
    with torch.no_grad():
        before = torch.cat([model(b) for b in x])
    equalized = copy.deepcopy(model)
    pairs = equalize_model(equalized, x[0], x, alpha=0.6)
    with torch.no_grad():
        after = torch.cat([equalized(b) for b in x])
    assert rel_diff(after, before) < 1e-4
    if name == "mobileone_s0":  # every ReLU block feeds the next convolution, the last one the classifier
        assert pairs == sum(isinstance(m, nn.ReLU) for m in equalized.modules())
        assert any(not torch.equal(a, b) for a, b in zip(equalized.parameters(), model.parameters(), strict=True))


def test_equalization_at_alpha_1_gives_every_channel_the_same_range() -> None:
    model = folded("mobileone_s0")
    x = batches()
    equalize_model(model, x[0], x, alpha=1.0)
    ranges: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            found = output.detach().abs().amax(dim=(0, 2, 3))
            ranges[name] = torch.maximum(ranges[name], found) if name in ranges else found

        return record

    for name, module in model.named_modules():
        if isinstance(module, nn.ReLU):
            module.register_forward_hook(hook(name))
    with torch.no_grad():
        for b in x:
            model(b)
    assert len(ranges) == 43  # the stem and the 42 blocks of S0
    for name, found in ranges.items():
        live = found[found > 0]
        assert float(live.max() / live.min()) < 1.01, name  # float32 rounding of ~1e5 activations


class Small(nn.Module):
    """1x1 convolutions (dense, depthwise) and a linear classifier: the mean shift of each layer's output is exactly
    ``dW @ E[x]``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.depthwise = nn.Conv2d(8, 8, 1, groups=8)
        self.pointwise = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.depthwise(x))
        x = torch.relu(self.pointwise(x))
        return self.fc(x.mean(dim=(2, 3)))


def textbook_int8(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 in [-127, 127]: ``scale = max|W_c| / 127``, at least 2^-12 (the XNNPACK
    quantizer's ``eps``)."""
    scale = weight.abs().reshape(len(weight), -1).amax(dim=1).reshape(-1, *[1] * (weight.ndim - 1)) / 127
    scale = torch.clamp(scale, min=2**-12)
    return torch.clamp(torch.round(weight / scale), -127, 127) * scale


def test_bias_correction_cancels_the_mean_shift_of_the_rounded_weights() -> None:
    torch.manual_seed(3)
    model = Small().eval()
    x = batches(4, 8)
    inputs: dict[str, list[torch.Tensor]] = {}
    layers = {"stem": model.stem, "depthwise": model.depthwise, "pointwise": model.pointwise, "fc": model.fc}
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: inputs.setdefault(name, []).append(i[0]))
        for name, module in layers.items()
    ]
    with torch.no_grad():
        for b in x:
            model(b)
    for handle in handles:
        handle.remove()
    corrected = copy.deepcopy(model)
    count = correct_bias(corrected, x[0], x, keep_float(xnnpack_quantizer(), ["stem"]))
    assert count == 3
    assert torch.equal(corrected.stem.bias, model.stem.bias)  # kept in float: nothing rounded, nothing corrected
    for name in ("depthwise", "pointwise", "fc"):
        before, after = layers[name], getattr(corrected, name)
        for a, b in zip(after.parameters(), before.parameters(), strict=True):
            assert a.shape == b.shape
        rounded = copy.deepcopy(after)
        rounded.weight.data = textbook_int8(before.weight.data)
        with torch.no_grad():
            error = torch.cat([rounded(i) - before(i) for i in inputs[name]])
            scale = torch.cat([before(i) for i in inputs[name]]).abs().max()
        dims = [d for d in range(error.ndim) if d != 1]
        assert float(error.mean(dim=dims).abs().max() / scale) < 1e-5, name
        assert not torch.equal(after.bias, before.bias), name


def weight_is_float(node: torch.fx.Node) -> bool:
    return isinstance(node.args[1], torch.fx.Node) and node.args[1].op == "get_attr"


@pytest.mark.slow  # default-suite budget: `make test-slow` runs it
def test_the_first_and_last_layers_stay_float_and_the_rest_int8() -> None:
    model = folded("mobileone_s0")
    x = batches(2)
    quantized = quantize_pt2e(model, x[0], xnnpack_quantizer(), x)
    layers = [
        n
        for n in quantized.module.graph.nodes
        if n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)
    ]
    assert [weight_is_float(n) for n in layers] == [True] + [False] * (len(layers) - 2) + [True]
    assert quantized.details["keep_fp32"] == ["stem.reparam_conv", "head.fc"]
    assert quantized.details["equalized_pairs"] == 43 and quantized.details["bias_corrected_layers"] == 42
    everything = quantize_pt2e(
        model, x[0], xnnpack_quantizer(), x, Int8Options(keep_fp32=(), equalize=None, bias_correction=False)
    )
    layers = [n for n in everything.module.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert not any(weight_is_float(n) for n in layers)
    assert everything.details["equalized_pairs"] == 0


@pytest.mark.slow  # 15 s of FastViT calibration
def test_fastvit_quantizes_with_the_fixes() -> None:
    model = folded("fastvit_t8")
    x = batches(2)
    quantized = quantize_pt2e(model, x[0], xnnpack_quantizer("moving_average"), x)
    with torch.no_grad():
        out, ref = quantized.module(x[1]), model(x[1])
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert quantized.details["equalized_pairs"] > 0 and quantized.details["bias_corrected_layers"] > 0


def test_keep_fp32_names_modules() -> None:
    model = folded("mobileone_s0")
    graph = export_graph(model, batches(1)[0])
    assert resolve_keep_fp32(graph, model, ("last", "stem", "first")) == ("head.fc", "stem", "stem.reparam_conv")
    with pytest.raises(ValueError, match=r"no module named 'stem\.conv'.*named like stem\.reparam_conv"):
        resolve_keep_fp32(graph, model, ("stem.conv",))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"keep_fp32": "first"}, "keep_fp32 takes a tuple of module names"),
        ({"equalize": 1.5}, "equalize must be None"),
        ({"equalize": True}, "equalize must be None"),
        ({"bias_correction": "yes"}, "bias_correction must be True or False"),
        ({"observer": "percentile"}, "observer must be one of histogram, minmax, moving_average"),
    ],
)
def test_int8_options_are_checked(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Int8Options(**options)


def test_int8_options_need_quantize(tmp_path) -> None:
    with pytest.raises(ValueError, match="int8= options are for quantize='int8'"):
        mobilevit.export.export_model(
            mobilevit.create_model("mobileone_s0"), "executorch", tmp_path / "m.pte", int8=Int8Options()
        )


def test_export_cli_passes_the_int8_options(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_export(model: nn.Module, fmt: str, output: str, **kwargs: object) -> str:
        seen.update(kwargs, format=fmt)
        return output

    monkeypatch.setattr(mobilevit.export, "export_model", fake_export)
    flags = ["--keep-fp32", "none", "--equalize", "off", "--no-bias-correction", "--quantize-method", "minmax"]
    argv = ["export", "--model", "mobileone_s0", "--random-weights", "--format", "tflite", "--quantize", "int8"]
    assert main([*argv, "--calibration", str(tmp_path), *flags, "--output", str(tmp_path / "m.tflite")]) == 0
    assert seen["int8"] == Int8Options(keep_fp32=(), equalize=None, bias_correction=False, observer="minmax")
    assert main([*argv, "--calibration", str(tmp_path), "--output", str(tmp_path / "m.tflite")]) == 0
    assert seen["int8"] == Int8Options()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--quantize-weights", "per-tensor"], "--format executorch: --quantize-weights is for --format onnx"),
        (["--quantize-method", "entropy"], "--quantize-method entropy is for --format onnx"),
    ],
)
def test_export_cli_int8_option_errors(flags: list[str], message: str, tmp_path, capsys: pytest.CaptureFixture) -> None:
    argv = ["export", "--model", "mobileone_s0", "--random-weights", "--format", "executorch", "--quantize", "int8"]
    out = ["--calibration", str(tmp_path), "--output", str(tmp_path / "m.pte")]
    assert main([*argv, *flags, *out]) == 2
    assert message in capsys.readouterr().err
