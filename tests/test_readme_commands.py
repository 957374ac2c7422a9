"""The README's shell commands run as written, so that none of them can break unnoticed.

Every line of the README's ```sh and ```bash blocks is one test case (id: the line number and the command):
continuation lines are joined, ``# comments`` dropped, and a command with optional ``[...]`` groups runs twice, without
them and with all of them (``a|b`` alternatives: ``json`` where offered, else the first). Each block runs in its own
sandbox folder, in README order, holding every file the README names, made from small real data (scikit-image's
photos, ``skimage.data``) or random weights in the format the file name says:

- ``cat.png`` / ``cat.jpg`` (chelsea, a tabby), ``photos/`` and ``more/*.jpg``; ImageFolder trees whose folders are
  ImageNet WordNet ids (``imagenet-val/``, ``data/``, ``imagenet/{train,val}``) and ``hymenoptera_data/`` (2 classes);
  ``voc/``, a PASCAL VOC segmentation folder of those photos with hand-drawn masks (VOC classes, 255 borders);
  ``coco-val/``, a COCO-format set of two of them with one box each, and ``detections.json``, a results file for it;
  ``coco/train`` and ``coco/val``, two such sets;
- ``mobileone_s0_unfused.pth.tar`` (ml-mobileone's plain state dict, train-time form), ``s0.pth.tar`` (``{"state_dict":
  ...}``, folded, Apple's key names), ``mobileone_s0_reparam.safetensors`` (Apple's real weights from ``../shared``,
  else random ones with Apple's key names), ``fastvit_t8.pth.tar`` (the ml-fastvit fixture in ``../shared``),
  ``./my-finetune`` (a ``save_pretrained`` folder), ``s0.onnx`` (``mobilevit export --random-weights``) and
  ``maskrcnn_mobilevit_xxs.pt`` (the ml-cvnets Mask R-CNN fixture in ``../shared``);
- weights names (``arch.tag``) resolve offline: timm-format random weights (transformers' for the DeepLabV3 VOC
  entries) in a temporary Hugging Face cache, cvnets' fixtures (MobileViT-XXS, SSDLite-MobileViT-XXS) in a
  temporary torch hub cache, ``HF_HUB_OFFLINE=1``.

The commands run as subprocesses (the ``mobilevit`` and ``torchrun`` scripts beside ``sys.executable``) with progress
bars on, the suite's threads (one, see conftest), ``$TOKEN`` set. What is changed, and only because it must be:

- ``mobilevit train`` gets :data:`TRAIN_OVERRIDES` appended (1 epoch, 64-96 px, batches of 4; a segmentation recipe
  without ``data.val_resize``, which it does not take): seconds, not days;
- ``mobilevit bench`` gets ``--repeats 2``;
- ``mobilevit serve`` gets a free ``--port``; the block's ``curl`` lines then run against each server that has their
  route, at that port, with ``--fail --silent --show-error`` (and the bearer token when the server takes ``--token``),
  and must answer a JSON list of ``{label, score}``;
- torchrun's rendezvous port is a free one (``PET_MASTER_PORT``), so parallel runs cannot collide.

A command passes when it exits 0 and its output is what the README documents (JSON where ``--json`` is given).
``make`` lines and the 8-process distillation run (a timm teacher to download) are skipped with the reason; CoreML,
ExecuTorch and LiteRT export, DeepLabV3 and int8 export (with the commands that run the file they write), ``bench``
(its backends include ``compile``) and the Mask R-CNN commands (1024x1024 inputs) are marked slow (``make
test-slow``), ExecuTorch and LiteRT skipped without their toolchain.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import mobilevit
from conftest import SHARED, randomize_batchnorm

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent
TOKEN = "readme-token"
TIMEOUT = 900  # seconds per command: a hang fails the case instead of the whole run

# appended to every `mobilevit train` line (SamplerConfig: the multi-scale sizes are min..max in num_scales steps)
TRAIN_OVERRIDES = (
    "epochs=1",
    "sampler.base_size=64",
    "sampler.min_size=64",
    "sampler.max_size=96",
    "sampler.num_scales=2",
    "sampler.batch_size=4",
    "data.val_resize=72",
    "data.val_crop=64",
)

# ImageNet-1k WordNet ids (folder names of an ImageNet tree) for the photos used below
TABBY, ESPRESSO, SHUTTLE, MOPED = "n02123045", "n07920052", "n04266014", "n03785016"


# ------------------------------------------------------------------------------------------------ parsing the README
@dataclass(frozen=True)
class Command:
    """One runnable form of one README command line."""

    block: int  # README line of the block's opening fence
    line: int  # README line where the command starts
    argv: tuple[str, ...]
    variant: str = ""  # "" as written without its [...] groups, "all-options" with them

    @property
    def id(self) -> str:
        text = shlex.join(self.argv)
        text = text if len(text) <= 90 else text[:87] + "..."
        return f"L{self.line}{'+' + self.variant if self.variant else ''}: {text}"

    @property
    def program(self) -> str:
        return self.argv[0]

    @property
    def subcommand(self) -> str:
        if self.program == "mobilevit":
            return self.argv[1]
        if self.program == "torchrun" and "mobilevit.cli" in self.argv:
            return self.argv[self.argv.index("mobilevit.cli") + 1]
        return ""


def shell_blocks() -> list[tuple[int, list[tuple[int, str]]]]:
    """(fence line, [(line, logical command line)]) for every ```sh / ```bash block, continuations joined."""
    blocks, current, pending, start = [], None, "", 0
    for number, text in enumerate(README.read_text().splitlines(), start=1):
        if current is None:
            if re.fullmatch(r"```(sh|bash)\s*", text):
                current = (number, [])
            continue
        if text.startswith("```"):
            blocks.append(current)
            current = None
            continue
        if not pending:
            start = number
        stripped = text.rstrip()
        if stripped.endswith("\\") and "#" not in stripped:  # a continuation, unless the backslash is in a comment
            pending += stripped[:-1] + " "
            continue
        pending += text
        if pending.strip():
            current[1].append((start, pending))
        pending = ""
    return blocks


def _option_groups(words: list[str]) -> tuple[list[str], list[list[str]]]:
    """The words outside ``[...]`` and the optional groups, e.g. ``[--format table|json]`` -> ``--format json``."""
    plain, groups, group = [], [], None
    for word in words:
        if group is None and word.startswith("["):
            group, word = [], word[1:]
        if group is None:
            plain.append(word)
            continue
        closing = word.endswith("]")
        word = word.removesuffix("]")
        if "|" in word:
            choices = word.split("|")
            word = "json" if "json" in choices else choices[0]
        if word:
            group.append(word)
        if closing:
            groups.append(group)
            group = None
    assert group is None, f"unclosed [ in {' '.join(words)}"
    return plain, groups


def readme_commands() -> list[Command]:
    commands = []
    for block, lines in shell_blocks():
        for line, text in lines:
            words = [_expand(w) for w in shlex.split(text, comments=True)]
            if not words:
                continue
            plain, groups = _option_groups(words)
            commands.append(Command(block, line, tuple(plain)))
            if groups:
                commands.append(Command(block, line, tuple(plain + [w for g in groups for w in g]), "all-options"))
    return commands


def _expand(word: str) -> str:
    """``$NAME`` / ``${NAME}`` as the shell would expand it in the subprocesses' environment (a README variable this
    file does not set fails at collection)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: SHELL_VARIABLES[m.group(1)], word)


SHELL_VARIABLES = {"TOKEN": TOKEN}  # also set in the subprocesses' environment
COMMANDS = readme_commands()
SERVE = [c for c in COMMANDS if c.subcommand == "serve"]
CURL = [c for c in COMMANDS if c.program == "curl"]
RUN = [c for c in COMMANDS if c not in SERVE and c not in CURL]


def _cannot_run_here(cmd: Command) -> str | None:
    """Why a command is skipped on every machine, or ``None``."""
    if cmd.program == "make":
        return "a make target sets up .venv or runs the whole test suite (this file is part of it); CI runs it"
    if cmd.program == "torchrun":
        nproc = int(cmd.argv[cmd.argv.index("--nproc_per_node") + 1])
        if nproc > 2:
            why = f"{nproc} processes on a 2-core machine"
            if any(w.startswith("distill.teacher=timm:") for w in cmd.argv):
                why += ", and its timm teacher's pretrained weights must be downloaded (tests never go online)"
            return why
    return None


def _value(cmd: Command, option: str) -> str | None:
    return cmd.argv[cmd.argv.index(option) + 1] if option in cmd.argv[:-1] else None


def _slow_export(cmd: Command) -> bool:
    """A DeepLabV3, int8 or ONNX export: 15-30 s here, and tests/test_segmentation_export.py and test_export.py check
    those exports with their parity in the default run."""
    model = _value(cmd, "--model") or ""
    onnx = _value(cmd, "--format") == "onnx"  # test_export.py checks every family's ONNX export with its parity
    return cmd.subcommand == "export" and ("--quantize" in cmd.argv or model.startswith("deeplabv3_") or onnx)


def _marks(cmd: Command) -> list[pytest.MarkDecorator]:
    if _cannot_run_here(cmd):
        return [pytest.mark.skip(reason=_cannot_run_here(cmd))]
    slow_files = {_value(c, "--output") for c in readme_commands() if _slow_export(c) and c.block == cmd.block}
    if _slow_export(cmd) or _value(cmd, "--model") in slow_files - {None}:
        return [pytest.mark.slow]  # the export, and the commands of its block that run the file it writes
    if cmd.subcommand == "bench" and any("compile" in w for w in cmd.argv):
        return [pytest.mark.slow]  # torch.compile: tens of seconds per model and batch size
    if cmd.subcommand == "export" and "coreml" in cmd.argv:
        return [pytest.mark.slow]  # coremltools conversion
    if cmd.subcommand == "train" and (_value(cmd, "--recipe") or "").startswith("ssdlite_"):
        return [pytest.mark.slow]  # tests/test_train_detection.py trains a detector through the runner by default
    if cmd.subcommand == "train" and (_value(cmd, "--recipe") or "").startswith("maskrcnn_"):
        return [pytest.mark.slow]  # tests/test_train_maskrcnn.py trains a Mask R-CNN through the runner by default
    if (_value(cmd, "--model") or "").startswith("maskrcnn_"):
        return [pytest.mark.slow]  # a Mask R-CNN at 1024x1024; tests/test_instance_segmentation.py runs the commands
    for fmt, module, extra in (("executorch", "executorch", "executorch"), ("tflite", "litert_torch", "litert")):
        if cmd.subcommand == "export" and fmt in cmd.argv:  # a conversion of tens of seconds, in its own toolchain
            missing = importlib.util.find_spec(module) is None
            return [pytest.mark.slow, pytest.mark.skipif(missing, reason=f"needs pip install 'mobilevit[{extra}]'")]
    return []


def _params(commands: list[Command]) -> list:
    return [pytest.param(c, id=c.id, marks=_marks(c)) for c in commands]


# ------------------------------------------------------------------------------------------------------ the sandbox
def _skimage_data() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"  # the photos ship inside the package (dev dependency)


def _photo(name: str, size: int = 320):
    """A scikit-image sample photo as an RGB PIL image, its long side at most ``size``."""
    from PIL import Image

    image = Image.open(_skimage_data() / name).convert("RGB")
    image.thumbnail((size, size))
    return image


def _image_tree(root: Path, classes: dict[str, list[str]], per_class: int) -> None:
    """An ImageFolder tree: ``per_class`` JPEGs of each class, crops and mirror images of its photos."""
    from PIL import ImageOps

    for folder, names in classes.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = _photo(names[i % len(names)])
            if i % 2:
                image = ImageOps.mirror(image)
            w, h = image.size
            crop = image.crop((i * 7 % (w // 4), i * 5 % (h // 4), w - i * 3 % (w // 4), h))
            crop.save(root / folder / f"{folder}_{i}.jpg", quality=90)


def _synthetic_tree(root: Path, classes: list[str], per_class: int, seed: int) -> None:
    """Random-texture JPEGs, a different mean colour per class (hymenoptera stand-in)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 120, size=(96, 128, 3)) + np.array([120, 60, 0]) * (c == 0) + 40
            Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(root / name / f"{name}_{i}.jpg")


_APPLE_MOBILEONE = [  # our MobileOne keys -> apple/ml-mobileone's (the inverse of the converter's renames)
    (r"^stem\.", "stage0."),
    (r"^stages\.(\d)\.", lambda m: f"stage{int(m.group(1)) + 1}."),
    (r"^head\.fc\.", "linear."),
    (r"\.conv_kxk\.", ".rbr_conv."),
    (r"\.conv_scale\.", ".rbr_scale."),
    (r"\.identity\.", ".rbr_skip."),
    (r"\.se\.fc1\.", ".se.reduce."),
    (r"\.se\.fc2\.", ".se.expand."),
]


def apple_mobileone_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under ml-mobileone's key names (train-time or folded, as the model is)."""
    out = {}
    for key, value in model.state_dict().items():
        for pattern, repl in _APPLE_MOBILEONE:
            key = re.sub(pattern, repl, key)
        out[key] = value.clone()
    return out


def _voc_folder(root: Path) -> None:
    """A PASCAL VOC segmentation folder: three photos, each mask a background with one class's box, a 255 border."""
    import numpy as np

    from mobilevit.data.segmentation import mask_image

    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for name, photo, voc_class in (
        ("cat", "chelsea.png", 8),
        ("cup", "coffee.png", 5),
        ("moped", "motorcycle_left.png", 14),
    ):
        image = _photo(photo, 200)
        image.save(root / "JPEGImages" / f"{name}.jpg", quality=90)
        mask = np.zeros((image.height, image.width), np.uint8)
        mask[image.height // 4 : -image.height // 4, image.width // 4 : -image.width // 4] = 255
        mask[image.height // 4 + 2 : -image.height // 4 - 2, image.width // 4 + 2 : -image.width // 4 - 2] = voc_class
        mask_image(mask).save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("cat\ncup\n")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("moped\n")


def _coco_folder(root: Path, results: Path | None = None) -> None:
    """A COCO-format set (``images/`` and ``instances.json``): two photos, each with one box of its COCO category (its
    mask: the box, as a polygon), and (given ``results``) a results file with one detection per photo."""
    (root / "images").mkdir(parents=True)
    images, annotations, detections = [], [], []
    for number, (photo, category) in enumerate((("chelsea.png", 17), ("coffee.png", 47)), start=1):
        image = _photo(photo, 320)
        image.save(root / "images" / f"{number}.jpg", quality=90)
        box = [image.width / 4, image.height / 4, image.width / 2, image.height / 2]  # x, y, width, height
        x, y = box[:2]
        images.append({"id": number, "file_name": f"{number}.jpg", "width": image.width, "height": image.height})
        annotations.append(
            {
                "id": number,
                "image_id": number,
                "category_id": category,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
                "segmentation": [[x, y, x + box[2], y, x + box[2], y + box[3], x, y + box[3]]],  # the box's outline
            }
        )
        detections.append({"image_id": number, "category_id": category, "bbox": box, "score": 0.9})
    categories = [{"id": 17, "name": "cat"}, {"id": 47, "name": "cup"}]
    (root / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    if results is not None:
        results.write_text(json.dumps(detections))


def _transformers_deeplabv3_xxs(folder: Path) -> dict[str, Path]:
    """transformers' MobileViTForSemanticSegmentation with the xx-small DeepLabV3 config, random weights, as the files
    of its Hub repository. BatchNorm statistics are randomised: with transformers' initial ones the activations
    fade to subnormal floats (logits ~1e-43), which the CPU computes some 20 times slower than real weights' ones."""
    transformers = pytest.importorskip("transformers")
    from mobilevit.weights.entries import VOC_LABELS

    torch.manual_seed(0)
    config = transformers.MobileViTConfig(
        num_labels=21,
        id2label=dict(enumerate(VOC_LABELS)),
        label2id={label: i for i, label in enumerate(VOC_LABELS)},
        hidden_sizes=[64, 80, 96],
        neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
        expand_ratio=2.0,
        image_size=512,
        output_stride=16,
    )
    randomize_batchnorm(transformers.MobileViTForSemanticSegmentation(config)).save_pretrained(folder)
    return {"config.json": folder / "config.json", "model.safetensors": folder / "model.safetensors"}


def _timm_safetensors(arch: str, path: Path) -> Path:
    """timm's ``arch`` with random weights, saved as the timm Hub repository's model.safetensors."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in timm.create_model(arch).state_dict().items()}, str(path))
    return path


def _free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (until a server binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Assets:
    files: Path  # every file the README names, copied into each block's sandbox
    env: dict[str, str]  # the subprocesses' environment: caches, offline, TOKEN, threads
    missing: dict[str, str]  # README name -> why it could not be made here


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    from safetensors.torch import load_file, save_file

    from mobilevit.weights import hub
    from mobilevit.weights.entries import get_weights
    from test_hub import put_in_hf_cache

    root = tmp_path_factory.mktemp("readme_assets")
    files, hf, torch_home = root / "files", root / "hf", root / "torch"
    files.mkdir()
    missing: dict[str, str] = {}

    # photos and image folders
    shutil.copy(_skimage_data() / "chelsea.png", files / "cat.png")
    _photo("chelsea.png", 451).save(files / "cat.jpg", quality=92)
    (files / "photos" / "trip").mkdir(parents=True)
    _photo("coffee.png").save(files / "photos" / "coffee.png")
    _photo("astronaut.png").save(files / "photos" / "trip" / "astronaut.jpg")
    (files / "more").mkdir()
    _photo("rocket.jpg").save(files / "more" / "rocket.jpg")
    _photo("motorcycle_left.png").save(files / "more" / "motorcycle.jpg")
    imagenet = {
        TABBY: ["chelsea.png"],
        ESPRESSO: ["coffee.png"],
        SHUTTLE: ["rocket.jpg"],
        MOPED: ["motorcycle_left.png"],
    }
    _image_tree(files / "imagenet-val", imagenet, per_class=2)
    _image_tree(files / "data", imagenet, per_class=2)
    _image_tree(files / "imagenet" / "train", dict(list(imagenet.items())[:2]), per_class=4)
    _image_tree(files / "imagenet" / "val", dict(list(imagenet.items())[:2]), per_class=2)
    _synthetic_tree(files / "hymenoptera_data" / "train", ["ants", "bees"], per_class=4, seed=0)
    _synthetic_tree(files / "hymenoptera_data" / "val", ["ants", "bees"], per_class=2, seed=1)
    _voc_folder(files / "voc")
    _coco_folder(files / "coco-val", files / "detections.json")
    _coco_folder(files / "coco" / "train")
    _coco_folder(files / "coco" / "val")

    # local checkpoints, each in the format its name says
    torch.manual_seed(0)
    s0 = randomize_batchnorm(mobilevit.create_model("mobileone_s0")).eval()
    torch.save(apple_mobileone_state_dict(s0), files / "mobileone_s0_unfused.pth.tar")  # ml-mobileone: plain dict
    real_s0 = SHARED / "weights" / "mobileone_s0_reparam.safetensors"
    if real_s0.is_file():
        shutil.copy(real_s0, files / "mobileone_s0_reparam.safetensors")
        folded = load_file(str(real_s0))
    else:
        folded = apple_mobileone_state_dict(mobilevit.reparameterize_model(s0))
        save_file(folded, str(files / "mobileone_s0_reparam.safetensors"))
    torch.save({"state_dict": folded}, files / "s0.pth.tar")
    fastvit_fixture = SHARED / "fixtures" / "fastvit_t8" / "fastvit_t8.pth.tar"
    if fastvit_fixture.is_file():
        shutil.copy(fastvit_fixture, files / "fastvit_t8.pth.tar")
    else:
        missing["fastvit_t8.pth.tar"] = f"needs ml-fastvit's checkpoint fixture, {fastvit_fixture} (../shared absent)"
    mobilevit.save_pretrained(
        mobilevit.create_model("fastvit_t8", num_classes=2), files / "my-finetune", labels=["ants", "bees"]
    )
    maskrcnn_fixture = SHARED / "fixtures" / "maskrcnn_mobilevit_xxs" / "maskrcnn_mobilevit_xxs.pt"
    if maskrcnn_fixture.is_file():
        shutil.copy(maskrcnn_fixture, files / "maskrcnn_mobilevit_xxs.pt")  # ml-cvnets' checkpoint format
    else:
        missing["maskrcnn_mobilevit_xxs.pt"] = (
            f"needs ml-cvnets' checkpoint fixture, {maskrcnn_fixture} (../shared absent)"
        )

    # weights names: the Hugging Face cache (timm's layout) and the torch hub cache (Apple's URL files)
    for name in (
        "mobilevit_xxs.cvnets_in1k",
        "fastvit_t8.apple_in1k",
        "mobilevitv2_050.cvnets_in1k",
        "mobileone_s0.apple_in1k",
    ):
        entry = get_weights(name)
        file = _timm_safetensors(entry.arch, root / f"{name}.safetensors")
        put_in_hf_cache(hf, entry.hub_repo_id, {entry.filename: file})
    voc_xxs = get_weights("deeplabv3_mobilevit_xxs.hf_voc")
    put_in_hf_cache(hf, voc_xxs.hub_repo_id, _transformers_deeplabv3_xxs(root / "deeplabv3_xxs"))
    # ml-cvnets' checkpoint fixtures, where the torch hub cache keeps each entry's URL file
    for name, case in (
        ("mobilevit_xxs.orig_in1k", "mobilevit_xxs"),
        ("ssdlite_mobilevit_xxs.cvnets_coco", "ssdlite_mobilevit_xxs"),
    ):
        fixture = SHARED / "fixtures" / case / f"{case}.pt"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TORCH_HOME", str(torch_home))
            target = hub.local_weights_path(get_weights(name))
        if fixture.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(fixture, target)
        else:
            missing[name] = f"needs ml-cvnets' checkpoint fixture, {fixture} (../shared absent)"

    env = {
        k: v
        for k, v in os.environ.items()
        if not re.match(r"(?i)(https?|all|no)_proxy$|HF_|HUGGINGFACE|MOBILEVIT_TOKEN", k)
    }
    env.update(
        HF_HUB_CACHE=str(hf),
        TORCH_HOME=str(torch_home),
        HF_HUB_OFFLINE="1",
        HF_ENDPOINT=f"http://127.0.0.1:{_free_port()}",  # an accidental download fails here, at once
        **SHELL_VARIABLES,
        MPLBACKEND="Agg",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    export = [str(BIN / "mobilevit"), "export", "--model", "mobileone_s0", "--random-weights", "--format", "onnx"]
    done = subprocess.run([*export, "--output", "s0.onnx"], cwd=files, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"making s0.onnx failed:\n{done.stderr}"
    return Assets(files, env, missing)


@pytest.fixture(scope="session")
def sandboxes(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """One folder per README block, a copy of the assets, made when the block's first command runs."""

    class Folders(dict):
        def __missing__(self, block: int) -> Path:
            folder = tmp_path_factory.mktemp(f"readme_block_L{block}")
            shutil.copytree(assets.files, folder, dirs_exist_ok=True)
            self[block] = folder
            return folder

    return Folders()


# ----------------------------------------------------------------------------------------------------- running them
def _skip_reason(cmd: Command, assets: Assets) -> str | None:
    """Why a command cannot run without ``../shared``, or ``None``."""
    for name, why in assets.missing.items():
        if any(w == name or w.startswith(name + "=") or w.endswith("=" + name) for w in cmd.argv):
            return why
    return None


def _argv(cmd: Command) -> list[str]:
    """The command with the documented shortenings, its program resolved beside sys.executable."""
    argv = list(cmd.argv)
    if argv[0] in ("mobilevit", "torchrun"):
        argv[0] = str(BIN / argv[0])
    if cmd.subcommand == "train":
        argv += _train_overrides(cmd)
    if cmd.subcommand == "bench":
        argv[argv.index("--repeats") + 1] = "2"
    return argv


def _train_overrides(cmd: Command) -> tuple[str, ...]:
    """:data:`TRAIN_OVERRIDES`, without ``data.val_resize`` for a segmentation or detection recipe (whose validation
    resizes the whole image to ``data.val_crop``)."""
    from mobilevit.train import load_recipe

    recipe = cmd.argv[cmd.argv.index("--recipe") + 1] if "--recipe" in cmd.argv else None
    dense = [mobilevit.list_models(task=task) for task in ("segmentation", "detection", "instance-segmentation")]
    dense = [name for names in dense for name in names]
    if recipe is None or load_recipe(recipe).model.name not in dense:
        return TRAIN_OVERRIDES
    return tuple(o for o in TRAIN_OVERRIDES if not o.startswith("data.val_resize="))


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _describe(done: subprocess.CompletedProcess[str]) -> str:
    head = f"$ {shlex.join(done.args)}\nexit {done.returncode}"
    return f"{head}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-6000:]}"


def _output(cmd: Command) -> str | None:
    return cmd.argv[cmd.argv.index("--output") + 1] if "--output" in cmd.argv else None


def _check_output(cmd: Command, done: subprocess.CompletedProcess[str], folder: Path) -> None:
    """What the README documents each command prints or writes."""
    out = done.stdout
    if cmd.subcommand == "predict":
        lines = [line for line in out.splitlines() if line.strip()]
        assert lines, "predict printed nothing"
        if "--json" in cmd.argv:
            for line in lines:
                record = json.loads(line)
                assert set(record) == {"file", "predictions"}, record
                assert record["predictions"] and all({"label", "score"} <= set(p) for p in record["predictions"])
        else:
            assert all(re.match(r".+: .+ \(\d\.\d{3}\)", line) for line in lines), out
    elif cmd.subcommand == "segment":
        _check_segment(cmd, out, folder)
    elif cmd.subcommand == "detect":
        lines = [line for line in out.splitlines() if line.strip()]
        assert lines, "detect printed nothing"
        for line in lines:
            drawn = json.loads(line)["boxes"] if "--json" in cmd.argv else line.rsplit(" -> ", 1)[1]
            assert (folder / drawn).is_file(), line
    elif cmd.subcommand == "eval" and "detection" in cmd.argv:
        if "--json" in cmd.argv:
            result = json.loads(out.strip().splitlines()[-1])
            assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"} <= set(result), result
        else:
            assert re.search(r"AP \d\.\d{4}, AP50 \d\.\d{4}", out), out
    elif cmd.subcommand == "eval" and "segmentation" in cmd.argv:
        if "--json" in cmd.argv:
            result = json.loads(out.strip().splitlines()[-1])
            assert {"miou", "pixel_accuracy", "per_class_iou", "count", "weights"} <= set(result), result
            assert result["count"] > 0 and 0 <= result["miou"] <= 1 and 0 <= result["pixel_accuracy"] <= 1, result
        else:
            assert re.search(r"mIoU \d\.\d{4} over \d+ classes, pixel accuracy \d\.\d{4}", out), out
    elif cmd.subcommand == "eval":
        if "--json" in cmd.argv:
            result = json.loads(out.strip().splitlines()[-1])
            assert {"top1", "top5", "count", "weights"} <= set(result), result
            assert result["count"] > 0 and 0 <= result["top1"] <= result["top5"] <= 1, result
        else:
            assert re.search(r"top-1 \d\.\d{4} \(\d+/\d+\), top-5", out), out
    elif cmd.subcommand == "list":
        assert "mobilevitv2_050.cvnets_in1k" in out, out
    elif cmd.subcommand == "export":
        assert (folder / _output(cmd)).exists(), f"{_output(cmd)} not written"
    elif cmd.subcommand == "train":
        run = folder / _output(cmd)
        assert (run / "last.pt").is_file() and (run / "final").is_dir(), sorted(p.name for p in run.iterdir())
    elif cmd.subcommand == "bench":
        report = (folder / _output(cmd)).read_text() if "--output" in cmd.argv else out
        if "json" in cmd.argv:
            assert json.loads(report)["rows"]


def _check_segment(cmd: Command, out: str, folder: Path) -> None:
    """One line per image naming its mask and overlay, both written at the image's size."""
    from PIL import Image

    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, "segment printed nothing"
    for line in lines:
        if "--json" in cmd.argv:
            record = json.loads(line)
            assert {"file", "mask", "overlay", "height", "width", "classes"} <= set(record), record
            files, size = (record["mask"], record["overlay"]), (record["width"], record["height"])
        else:
            found = re.fullmatch(r"(.+): .+% -> (.+_mask\.png), (.+_overlay\.jpg)", line)
            assert found, line
            files, size = found.group(2, 3), Image.open(folder / found.group(1)).size
        assert all(Image.open(folder / f).size == size for f in files), (files, size)


@pytest.mark.parametrize("cmd", _params(RUN))
def test_readme_command(cmd: Command, assets: Assets, sandboxes: dict[int, Path]) -> None:
    if cmd.program not in ("mobilevit", "torchrun"):
        pytest.fail(f"README line {cmd.line} runs {cmd.program!r}: teach {Path(__file__).name} to run it or skip it")
    reason = _skip_reason(cmd, assets)
    if reason:
        pytest.skip(reason)
    folder = sandboxes[cmd.block]
    if cmd.subcommand == "train" and "--resume" in cmd.argv and not (folder / _output(cmd) / "last.pt").exists():
        # run alone (-k): first the block's run that --resume continues
        first = next(c for c in RUN if c.block == cmd.block and c.subcommand == "train" and _output(c) == _output(cmd))
        done = _run(_argv(first), folder, assets.env)
        assert done.returncode == 0, _describe(done)
    env = assets.env
    if cmd.program == "torchrun":
        env = {**env, "PET_MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    done = _run(_argv(cmd), folder, env)
    assert done.returncode == 0, _describe(done)
    _check_output(cmd, done, folder)


# ---------------------------------------------------------------------------------------------------- serve and curl
def _routes(cmd: Command) -> set[str]:
    """The route names a serve line gives its models: NAME of NAME=FILE, a file's stem, else the name."""
    names = set()
    for i, word in enumerate(cmd.argv[:-1]):
        if word == "--model":
            value = cmd.argv[i + 1]
            names.add(
                value.split("=", 1)[0] if "=" in value else Path(value).stem if value.endswith(".onnx") else value
            )
    return names


def _curl_route(cmd: Command) -> str | None:
    """``None`` for ``POST /`` (every server has it), else the model name of ``/models/NAME``."""
    url = next(w for w in cmd.argv if w.startswith("http"))
    path = urllib.parse.urlsplit(url).path
    return None if path in ("", "/") else path.removeprefix("/models/")


def _curls_for(serve: Command) -> list[Command]:
    return [c for c in CURL if c.block == serve.block and (_curl_route(c) is None or _curl_route(c) in _routes(serve))]


def test_every_curl_line_runs_against_a_serve_line() -> None:
    assert CURL and SERVE
    for curl in CURL:
        assert any(curl in _curls_for(s) for s in SERVE), f"README line {curl.line}: no serve line has its route"


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


@pytest.mark.parametrize("cmd", _params(SERVE))
def test_readme_serve_and_curl(cmd: Command, assets: Assets, sandboxes: dict[int, Path]) -> None:
    reason = _skip_reason(cmd, assets)
    if reason:
        pytest.skip(reason)
    assert shutil.which("curl"), "curl is not installed"
    folder = sandboxes[cmd.block]
    port = _free_port()
    argv = _argv(cmd)
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    else:
        argv += ["--port", str(port)]
    log = folder / f"serve_L{cmd.line}.log"
    with log.open("w") as sink:
        server = subprocess.Popen(argv, cwd=folder, env=assets.env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while _get(f"http://127.0.0.1:{port}/health") != 200:
            assert server.poll() is None, f"$ {shlex.join(argv)}\nserver exited {server.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"server not ready in 180 s:\n{log.read_text()}"
            time.sleep(0.3)
        assert _get(f"http://127.0.0.1:{port}/health/live") == 200
        curls = _curls_for(cmd)
        assert curls, "no curl line of this block fits this server"
        for curl in curls:
            words = []
            for word in curl.argv:
                if word.startswith("http"):
                    word = urllib.parse.urlsplit(word)._replace(netloc=f"127.0.0.1:{port}").geturl()
                words.append(word)
            words[1:1] = ["--fail", "--silent", "--show-error"]
            if "--token" in cmd.argv:
                words[1:1] = ["-H", f"Authorization: Bearer {cmd.argv[cmd.argv.index('--token') + 1]}"]
            done = _run(words, folder, assets.env)
            assert done.returncode == 0, f"README line {curl.line}:\n{_describe(done)}\n--- server\n{log.read_text()}"
            answer = json.loads(done.stdout)
            assert isinstance(answer, list) and answer, answer
            assert all(set(a) == {"label", "score"} and isinstance(a["score"], float) for a in answer), answer
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
