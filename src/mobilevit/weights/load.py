"""Read a checkpoint file of any supported format, convert it to our key names, and load it strictly.

Pickled files are read with ``torch.load(weights_only=True)``: an untrusted checkpoint can never run code. Only regular
files are opened: a FIFO or a device would block the reader, or never end.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import stat
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import MobileViTError
from ..reparam import reparameterize_model
from .converters import CONVERTERS
from .converters.from_transformers import deeplabv3_config

logger = logging.getLogger(__name__)

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # a transformers folder holds one of these
LIBRARY = "mobilevit"  # the "library" value of our config.json, which tells our folders from transformers ones
CONFIG_METADATA_KEY = "mobilevit_config"  # the safetensors metadata key holding a copy of our config.json
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
# a MobileOne block of ours / timm's, train-time (``conv_kxk.<i>.``) or folded (``reparam_conv.``)
_MOBILEONE_BLOCK = re.compile(r"\.conv_kxk\.\d+\.|(^|\.)reparam_conv\.")


class CheckpointError(MobileViTError, ValueError):
    """A checkpoint that cannot be read, is of an unknown format, or does not fit the model."""


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file_kind(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists but is not a regular file (``"a FIFO (named pipe)"``, ``"a directory"``...);
    ``None`` for a regular file (symlinks followed) or a path that does not exist. Never opens the path, so a FIFO
    cannot block it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "a special file")


def require_regular_file(path: str | os.PathLike, what: str, error: type[Exception] = CheckpointError) -> None:
    """Raise ``error`` naming ``path`` and what it is when it exists but is not a regular file.

    Args:
        path: the file about to be opened.
        what: what the file is meant to be, starting the message (``"Checkpoint"``, ``"Labels file"``...).
        error: the exception type to raise.
    """
    kind = special_file_kind(path)
    if kind is not None:
        raise error(f"{what} {path} is {kind}, not a regular file")


def check_checkpoint_path(path: str | os.PathLike) -> None:
    """Check, without reading it, that a checkpoint ``path`` (a file, or a folder with ``config.json`` and a weights
    file) names only regular files: what :func:`read_checkpoint` would open."""
    path = Path(path)
    if not path.is_dir():
        require_regular_file(path, "Checkpoint")
        return
    for name in ("config.json", *HF_WEIGHT_FILES):
        require_regular_file(path / name, "Checkpoint file")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a state dict from a file, a transformers folder or a folder written by :func:`mobilevit.save_pretrained`.

    A folder's ``config.json`` tells the two folder kinds apart: ours has ``"library"`` set to :data:`LIBRARY`, a
    transformers one has ``model_type``.

    Returns:
        The tensors, and extra information: ``{"hf_config": ...}`` for a transformers folder, ``{"arch": ...,
        "mobilevit_config": ...}`` for our folder or our safetensors file, the safetensors metadata for any other
        safetensors file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    check_checkpoint_path(path)
    info: dict[str, Any] = {}
    if path.is_dir():
        path, info = _read_folder_config(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path, info)
    return _unwrap(_read_pickle(path), path), info


def _read_folder_config(folder: Path) -> tuple[Path, dict[str, Any]]:
    """``(weights file, info)`` of a checkpoint folder: its ``config.json`` says whether it is ours or transformers'."""
    config_file = folder / "config.json"
    weights = next((folder / f for f in HF_WEIGHT_FILES if (folder / f).exists()), None)
    if not config_file.exists() or weights is None:
        raise CheckpointError(
            f"{folder} is a folder but not a checkpoint folder: it needs config.json and one of "
            f"{', '.join(HF_WEIGHT_FILES)} (a transformers folder, or one written by mobilevit.save_pretrained)"
        )
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"Cannot read {config_file}: {e}") from e
    if is_mobilevit_config(config):
        return weights, {CONFIG_METADATA_KEY: config, "arch": config["arch"]}
    if isinstance(config, dict) and "model_type" in config:
        return weights, {"hf_config": config}
    raise CheckpointError(
        f"{config_file} is neither a transformers config (no 'model_type') nor a mobilevit one "
        f'(no \'"library": "{LIBRARY}"\')'
    )


def _read_safetensors(path: Path, info: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors of a safetensors file, and ``info`` completed by its metadata (our config, when it holds one)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"Cannot read safetensors file {path}: {e}") from e
    if CONFIG_METADATA_KEY in metadata and CONFIG_METADATA_KEY not in info:
        try:
            info[CONFIG_METADATA_KEY] = json.loads(metadata.pop(CONFIG_METADATA_KEY))
        except ValueError as e:
            raise CheckpointError(f"{path}: unreadable {CONFIG_METADATA_KEY!r} metadata: {e}") from e
    metadata.pop(CONFIG_METADATA_KEY, None)
    return _unwrap(state_dict, path), {**metadata, **info}


def _read_pickle(path: Path) -> Any:
    """What ``torch.load(weights_only=True)`` reads from ``path``; a one-line error when it refuses or fails."""
    try:
        with warnings.catch_warnings():  # torch warns about a pickle protocol its weights-only unpickler may not read
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types here: UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(_unreadable_pickle(path, e)) from None


_ZIP_MAGIC = b"PK"  # a zip archive: torch.save's format since PyTorch 1.6
_PICKLE_PROTOCOLS = range(2, 6)  # a pickle of protocol 2+ starts with PROTO (0x80) and the protocol number


def _unreadable_pickle(path: Path, err: Exception) -> str:
    """The one-line message for a file ``torch.load(weights_only=True)`` refused or could not read.

    torch's own message runs over several lines and advises loading with ``weights_only=False``; here the refusal is
    the point: a pickle that imports a callable or a class (a ``GLOBAL`` outside torch's allowlist) can run code.
    """
    text = str(err)
    with path.open("rb") as f:
        head = f.read(2)
    if not head:
        return f"Cannot read {path} as a PyTorch checkpoint: the file is empty"
    is_pickle = head == _ZIP_MAGIC or (head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS)
    refused = isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text
    if not (refused and is_pickle):
        reason = " ".join(text.split()) or type(err).__name__
        kind = "not a torch.save archive or a pickle" if not is_pickle else f"{type(err).__name__}: {reason[:300]}"
        return f"Cannot read {path} as a PyTorch checkpoint: {kind}"
    converted = path.with_name(path.name.split(".", 1)[0] + "_tensors.pt")
    convert = (
        f'python -c "import torch; c = torch.load({str(path)!r}, weights_only=False); '
        "c = c.state_dict() if hasattr(c, 'state_dict') else c.get('state_dict', c.get('model', c)); "
        f'torch.save({{k: v for k, v in c.items() if torch.is_tensor(v)}}, {str(converted)!r})"'
    )
    found = re.search(r"GLOBAL ([\w.]+)", text)
    what = (
        f"executable pickled objects ({found.group(1)}, which unpickling would import and call)"
        if found
        else "pickled objects other than tensors (unpickling them could run code)"
    )
    return (
        f"Refused {path}: the file holds {what}; checkpoints are read with torch.load(weights_only=True), which "
        f"never runs code. Only if you trust the file, convert it to plain tensors: {convert}, then pass {converted}"
    )


def is_mobilevit_config(config: Any) -> bool:
    """Whether a parsed ``config.json`` is ours (written by :func:`mobilevit.save_pretrained`), not transformers'."""
    return isinstance(config, dict) and config.get("library") == LIBRARY and "model_type" not in config


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """Find the state dict inside a training checkpoint (``{'state_dict': ...}`` and similar), strip ``module.``."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
        if key is None:
            kind = f"dict with keys {sorted(obj)[:8]}" if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{path} holds no state dict of tensors (found a {kind})")
        obj = obj[key]
    if not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def detect_format(state_dict: dict[str, Tensor]) -> str:
    """Name the layout of a state dict: ``native``, ``timm``, ``transformers``, ``cvnets``, ``ml-fastvit`` or
    ``ml-mobileone``."""
    keys = list(state_dict)
    fmt = _upstream_layout(keys) or _timm_or_native_layout(keys)
    if fmt is None:
        raise CheckpointError(f"Unrecognised checkpoint layout ({len(keys)} tensors; first keys: {keys[:5]})")
    return fmt


def _starts(keys: list[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def _upstream_layout(keys: list[str]) -> str | None:
    """The layout of an upstream repository's file, told by its top-level names; ``None`` for none of them."""
    if _starts(keys, "mobilevit.", "mobilevitv2.", "encoder.layer.", "conv_stem."):
        return "transformers"
    if "conv_1.block.conv.weight" in keys or _starts(keys, "layer_1.0.block."):
        return "cvnets"
    if _starts(keys, "seg_head.") and _starts(keys, "encoder.layer_1."):
        return "cvnets"  # a segmentation model: backbone under encoder., head under seg_head.
    if _starts(keys, "ssd_heads.") and _starts(keys, "encoder.layer_1."):
        return "cvnets"  # a detection model: backbone under encoder., heads under extra_layers. and ssd_heads.
    if _starts(keys, "model.backbone.encoder.") and _starts(keys, "model.roi_heads."):
        return "cvnets"  # a Mask R-CNN: torchvision's MaskRCNN under model., the backbone under model.backbone.encoder.
    if _starts(keys, "patch_embed.", "network."):
        return "ml-fastvit"
    if _starts(keys, "stage0."):
        return "ml-mobileone"
    return None


def _timm_or_native_layout(keys: list[str]) -> str | None:
    """timm's layout or ours, which share most names, told by the names of a few blocks; ``None`` for neither."""
    if any(_MOBILEONE_BLOCK.search(k) for k in keys):
        # FastViT / MobileOne: our names are timm's but for FastViT's ``downsample.proj`` and MobileOne's SE ``attn``;
        # a timm MobileOne S0-S3 has exactly our keys, and either way the timm converter leaves our keys unchanged.
        return "timm" if any(".downsample.proj." in k or ".attn.fc1." in k for k in keys) else "native"
    if any(".conv1_1x1." in k or ".conv_kxk." in k for k in keys):
        return "timm"
    if any(".conv_pwl." in k for k in keys):
        return "native"
    return None


def read_converted(path: str | os.PathLike, arch: str, cfg: Any, fmt: str | None = None) -> dict[str, Tensor]:
    """Read ``path``, detect its format and convert it to our key names for architecture ``arch``.

    Args:
        path: checkpoint file or folder.
        arch: target architecture name.
        cfg: the target's config dataclass.
        fmt: the format the file is known to have (a weights entry's ``format``); it wins over detection.
    """
    state_dict, info = read_checkpoint(path)
    return convert_checkpoint(state_dict, info, arch, cfg, source=str(path), fmt=fmt)


def convert_checkpoint(
    state_dict: dict[str, Tensor],
    info: dict[str, Any],
    arch: str,
    cfg: Any,
    source: str,
    fmt: str | None = None,
) -> dict[str, Tensor]:
    """Convert a state dict read by :func:`read_checkpoint` to our key names for architecture ``arch``.

    Args:
        state_dict: the tensors as stored.
        info: the extra information :func:`read_checkpoint` returned (the stored ``arch`` is checked).
        arch: target architecture name.
        cfg: the target's config dataclass.
        source: where the tensors came from, for error messages.
        fmt: the known format (a weights entry's ``format``). It wins when detection disagrees: detection is a
            heuristic over key names, the entry is a record of the file. A timm file with our exact key names (timm
            MobileOne S0-S3) is detected as ``native`` and needs no conversion either way.
    """
    fmt = _layout_to_convert(state_dict, fmt, source)
    stored_arch = info.get("arch")
    if fmt == "native" and stored_arch and stored_arch != arch:
        raise CheckpointError(f"{source} holds weights for {stored_arch!r}, not {arch!r}")
    family = cfg.__class__.__name__
    if fmt == "native":
        return state_dict
    converter = CONVERTERS.get((fmt, family))
    if converter is None:
        raise CheckpointError(f"{source} is a {fmt} checkpoint, which cannot hold a {arch} model")
    logger.info("Converting %s checkpoint %s for %s", fmt, source, arch)
    try:
        return converter(state_dict, cfg)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{source} ({fmt} layout) cannot be converted for {arch}: {e}") from e


def _layout_to_convert(state_dict: dict[str, Tensor], fmt: str | None, source: str) -> str:
    """The layout to convert ``state_dict`` from: the detected one, unless a weights entry records ``fmt``, which
    wins (with a warning when detection disagrees); a timm file detected as ``native`` is ``native``."""
    try:
        detected = detect_format(state_dict)
    except CheckpointError:
        if fmt is None:
            raise
        detected = None
    if fmt is not None and detected not in (fmt, "native" if fmt == "timm" else None):
        looks = f"look like {detected}" if detected else "match no known layout"
        logger.warning("%s: its key names %s, but its weights entry says %s; converting as %s", source, looks, fmt, fmt)
    return detected if fmt is None or (fmt == "timm" and detected == "native") else fmt


# the DeepLabV3 head in ml-cvnets', transformers' and our own key names, and the SSDLite and Mask R-CNN heads in
# ml-cvnets' and ours
_SEGMENTATION_HEAD_PREFIXES = ("seg_head.", "segmentation_head.", "head.aspp.")
_DETECTION_HEAD_PREFIXES = ("ssd_heads.", "heads.", "model.roi_heads.", "roi_heads.")


def is_segmentation_checkpoint(state_dict: dict[str, Tensor], info: dict[str, Any]) -> bool:
    """Whether a checkpoint read by :func:`read_checkpoint` holds a dense-prediction model of its own (segmentation or
    detection, head included) rather than a classifier or a backbone, which such a model can take as its backbone."""
    saved_arch = str(info.get("arch") or "")
    heads = _SEGMENTATION_HEAD_PREFIXES + _DETECTION_HEAD_PREFIXES
    return saved_arch.startswith(("deeplabv3_", "ssdlite_", "maskrcnn_")) or any(
        k.startswith(heads) for k in state_dict
    )


def checkpoint_config(info: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """The config fields a foreign checkpoint states about itself, as overrides of ``cfg``: for a transformers
    segmentation folder, its output stride and ASPP (the weights alone do not show them). Empty otherwise."""
    hf_config = info.get("hf_config")
    if hf_config is None or type(cfg).__name__ != "DeepLabV3Config":
        return {}
    return deeplabv3_config(hf_config)


def is_folded_checkpoint(model: nn.Module, state_dict: dict[str, Tensor]) -> bool:
    """Whether ``state_dict`` has the layout of ``reparameterize_model(model)`` rather than of ``model`` itself.

    The classifier is ignored (it may be replaced), so is anything a ``features_only`` model does not hold.
    """

    def mismatch(m: nn.Module) -> int:
        expected = {k for k in m.state_dict() if not k.startswith("head.")}
        given = {k for k in state_dict if not k.startswith(("head.", "final_conv."))}
        if not getattr(m, "features_only", False):
            given |= {k for k in state_dict if k.startswith("final_conv.")}
        return len(expected ^ given)

    # only a checkpoint that fits the folded layout exactly is folded; one that fits neither layout is reported
    # against the train-time model, whose key names the user knows
    return mismatch(model) > 0 and mismatch(reparameterize_model(model)) == 0


def load_into(model: nn.Module, state_dict: dict[str, Tensor], source: str, keep_head: bool = True) -> None:
    """Load converted weights into ``model`` all-or-nothing, naming every missing, unexpected or misshaped key.

    Args:
        model: the target model.
        state_dict: weights in our key names.
        source: where the weights came from, for error messages.
        keep_head: load the classifier too; ``False`` leaves the model's fresh classifier in place.
    """
    expected = model.state_dict()
    features_only = getattr(model, "features_only", False)
    # the parameters a new number of classes replaces: the classifier, and any other per-class layer the model names
    classes = getattr(model, "class_layers", (getattr(model, "classifier_name", "head.fc"),))
    classifier = tuple(f"{name}." for name in classes)
    state_dict = _tensors_to_load(state_dict, expected, classifier, keep_head, features_only)
    problems = _misfits(state_dict, expected, fresh=None if keep_head else classifier)
    if problems:
        raise CheckpointError(
            f"Checkpoint {source} does not fit {type(model).__name__} ({len(state_dict)} tensors vs "
            f"{len(expected)} expected). " + " | ".join(problems)
        )
    model.load_state_dict(state_dict, strict=keep_head and not features_only)


def _tensors_to_load(
    state_dict: dict[str, Tensor],
    expected: dict[str, Tensor],
    classifier: tuple[str, ...],
    keep_head: bool,
    features_only: bool,
) -> dict[str, Tensor]:
    """The checkpoint's tensors that go into the model: without the ``classifier`` when the head is not kept, without
    the head and the final 1x1 expansion for a ``features_only`` model, and with the model's own BatchNorm step
    counters where the checkpoint has none (they are optional, as in torch's own strict loading)."""
    if not keep_head or features_only:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(classifier)}
    if features_only:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(("head.", "final_conv."))}
    counters = {k: v for k, v in expected.items() if k.endswith("num_batches_tracked") and k not in state_dict}
    return {**counters, **state_dict}


def _misfits(state_dict: dict[str, Tensor], expected: dict[str, Tensor], fresh: tuple[str, ...] | None) -> list[str]:
    """What keeps ``state_dict`` from loading into a model whose own tensors are ``expected``, one part per kind of
    misfit (missing, unexpected, wrong shape); empty when it fits. Missing keys under the prefixes ``fresh`` (a
    classifier that starts fresh) are not misfits."""
    missing = [k for k in expected if k not in state_dict and not (fresh and k.startswith(fresh))]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    kinds = (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped))
    parts = [f"{title}: {_first_few(items)}" for title, items in kinds if items]
    if _only_head_missing(missing, unexpected, misshaped):
        parts.append(
            "the checkpoint holds a backbone only (a segmentation or feature model?): load it with features_only=True"
        )
    return parts


def _only_head_missing(missing: list[str], unexpected: list[str], misshaped: list[str]) -> bool:
    """Whether the only misfit is a missing head (and final 1x1 expansion): the checkpoint of a backbone."""
    if unexpected or misshaped or not missing:
        return False
    return all(k.startswith(("final_conv.", "head.")) for k in missing)


def _first_few(items: list[str], shown: int = 6) -> str:
    """``items`` joined, the first ``shown`` of them and their count when there are more."""
    return "; ".join(items[:shown]) + (f"; ... ({len(items)} in all)" if len(items) > shown else "")
