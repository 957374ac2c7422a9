"""DeepLabV3 segmentation: ours vs transformers on the same weights, fp32 CPU latency at 512x512, interleaved.

For each MobileViT v1 size and v2 width, transformers' ``MobileViTForSemanticSegmentation`` /
``MobileViTV2ForSemanticSegmentation`` is built locally with the published DeepLabV3 configuration (output stride 16,
ASPP 256 for v1 and 512 for v2, 21 classes), random weights and randomized BatchNorm statistics. It is saved with
``save_pretrained`` and loaded into ours by ``create_model(..., pretrained=folder)`` (our converter, as a user loads
Apple's Hub checkpoints), the logits are checked to agree, and then three forms are timed round-robin: transformers'
model, ours as loaded, and ours folded (``mobilevit.reparameterize_model``, what the segmenter runs). ``ours/hf`` is
our folded model's time over transformers' (below 1.0: ours is faster).

transformers' MobileViTV2 leaves the local convolutions of its dilated stages undilated where ml-cvnets (and our
default) dilate them; the v2 models here are built with ``dilate_local_conv=False`` so that both compute the same
function.

    python benchmarks/bench_segmentation.py                                # every v1 size and v2 width, batch 1
    python benchmarks/bench_segmentation.py deeplabv3_mobilevit_xxs --batch-sizes 1,4 --rounds 30 --json out.json
"""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path

import torch
import transformers

import mobilevit
from common import randomize, timing_args
from mobilevit.bench import compare_latency
from mobilevit.bench.report import markdown_table

# transformers' configurations of apple/deeplabv3-mobilevit-{xx-small,x-small,small} (its
# convert_mlcvnets_to_pytorch.py); MobileViTConfig's defaults are the small one
V1_CONFIGS = {
    "deeplabv3_mobilevit_xxs": dict(
        hidden_sizes=[64, 80, 96],
        neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
        expand_ratio=2.0,
        hidden_dropout_prob=0.05,
    ),
    "deeplabv3_mobilevit_xs": dict(hidden_sizes=[96, 120, 144], neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384]),
    "deeplabv3_mobilevit_s": dict(),
}
V2_WIDTHS = {f"deeplabv3_mobilevitv2_{w}": int(w) / 100 for w in ("050", "075", "100", "125", "150", "175", "200")}
COMMON = dict(output_stride=16, num_labels=21, atrous_rates=[6, 12, 18], aspp_dropout_prob=0.1)


def reference(name: str) -> torch.nn.Module:
    """transformers' DeepLabV3 model for ``name``, random weights (seed 0) and randomized BatchNorms, in eval mode."""
    torch.manual_seed(0)
    if name in V1_CONFIGS:
        config = transformers.MobileViTConfig(**V1_CONFIGS[name], aspp_out_channels=256, **COMMON)
        model = transformers.MobileViTForSemanticSegmentation(config)
    else:
        config = transformers.MobileViTV2Config(width_multiplier=V2_WIDTHS[name], aspp_out_channels=512, **COMMON)
        model = transformers.MobileViTV2ForSemanticSegmentation(config)
    return randomize(model).eval()


def same_weights(name: str, workdir: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, transformers') in eval mode with the same weights, ours loaded from the saved transformers folder."""
    ref = reference(name)
    folder = workdir / name
    ref.save_pretrained(folder)
    options = {} if name in V1_CONFIGS else {"dilate_local_conv": False}
    return mobilevit.create_model(name, pretrained=folder, **options).eval(), ref


def rel_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest logit difference relative to the reference's largest logit."""
    return ((out - ref).abs().max() / ref.abs().max()).item()


class Logits(torch.nn.Module):
    """transformers' model as a tensor -> logits function (its forward returns an output object)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def main() -> None:
    # 512x512: the preprocessing's input size, at which the published VOC mIoU was measured
    args = timing_args(__doc__, "default: every deeplabv3_mobilevit_* and deeplabv3_mobilevitv2_*", "1", 512)
    names = args.models or [*V1_CONFIGS, *V2_WIDTHS]
    unknown = [n for n in names if n not in V1_CONFIGS and n not in V2_WIDTHS]
    if unknown:
        raise SystemExit(
            f"no transformers counterpart for {', '.join(unknown)}; choose from {[*V1_CONFIGS, *V2_WIDTHS]}"
        )

    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for name in names:
            ours, ref = same_weights(name, Path(tmp))
            folded, hf = mobilevit.reparameterize_model(ours), Logits(ref)
            for batch in [int(b) for b in args.batch_sizes.split(",")]:
                x = torch.randn(batch, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(0))
                expected = hf(x)
                row: dict = {"model": name, "batch": batch, "logits": "x".join(map(str, expected.shape[1:]))}
                diff = max(rel_diff(ours(x), expected), rel_diff(folded(x), expected))
                if diff > 1e-4:  # not the same function: the timings would compare different models
                    raise SystemExit(f"{name}: ours and transformers' logits differ by {diff:.1e} of their scale")
                row["rel_diff"] = f"{diff:.1e}"
                forms = {"ours": ours, "ours_folded": folded, "hf": hf}
                stats = compare_latency({k: (lambda m=m, x=x: m(x)) for k, m in forms.items()}, rounds=args.rounds)
                row |= {f"{k}_ms": v["median_ms"] for k, v in stats.items()}
                row["ours/hf"] = row["ours_folded_ms"] / row["hf_ms"]
                rows.append(row)
                print(json.dumps(row), flush=True)

    header = (
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}, fp32, {args.resolution}x{args.resolution}, median of {args.rounds} interleaved runs"
    )
    print(f"\n{header}\n")
    columns = ["model", "batch", "logits", "ours_ms", "ours_folded_ms", "hf_ms", "ours/hf", "rel_diff"]
    print(markdown_table(rows, columns))
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
