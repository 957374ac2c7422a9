"""A LitServe server classifying images with timm's model: the reference that ``bench_serve.py --litserve`` runs
beside ``mobilevit serve``.

It takes the same request body as ``mobilevit serve`` (JSON ``{"inputs": "<base64 image>"}``) and answers as the
Hugging Face Inference API does (the top 5 ``{"label", "score"}``), doing what a LitServe user writes for a timm
model: ``decode_request`` opens the image with PIL and applies timm's own eval transform
(``resolve_data_config`` + ``create_transform``), ``predict`` runs the model under ``torch.inference_mode`` on the
batch LitServe collected, ``encode_response`` takes the softmax top 5 with ImageNet's class names.

    python benchmarks/litserve_timm.py --port 8001 [--model mobileone_s0] [--max-batch-size 16 --batch-timeout-ms 5]

The timm model is put in its inference form (``timm.utils.reparameterize_model``), as ``mobilevit serve`` serves
Apple's folded MobileOne; with random weights: the time does not depend on the values.
"""

from __future__ import annotations

import argparse
import base64
import io

import litserve as ls
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from timm.utils.model import reparameterize_model


class TimmClassifier(ls.LitAPI):
    def __init__(self, model_name: str, threads: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.threads = threads

    def setup(self, device: str) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = reparameterize_model(timm.create_model(self.model_name, pretrained=False).eval())
        self.transform = create_transform(**resolve_data_config(model=self.model))
        self.names = ImageNetInfo().label_descriptions()

    def decode_request(self, request: dict) -> torch.Tensor:
        image = Image.open(io.BytesIO(base64.b64decode(request["inputs"]))).convert("RGB")
        return self.transform(image)

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x if x.dim() == 4 else x[None]).softmax(-1)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, probs: torch.Tensor) -> list[dict]:
        top = probs.reshape(-1).topk(5)
        return [{"label": self.names[i], "score": float(s)} for s, i in zip(top.values, top.indices, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="mobileone_s0")
    parser.add_argument("--max-batch-size", type=int, default=1)
    parser.add_argument("--batch-timeout-ms", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the inference worker (0: torch's)")
    args = parser.parse_args()
    api = TimmClassifier(
        args.model,
        args.threads,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_ms / 1000,
        api_path="/",
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=120)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
