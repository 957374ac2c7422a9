"""The README's Python examples run as written, and the model tables of docs/models.md match the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mobilevit
from conftest import REPRESENTATIVES

README = Path(__file__).resolve().parents[1] / "README.md"
MODELS = README.parent / "docs" / "models.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index: int) -> None:
    exec(compile(python_blocks()[index], f"README.md block {index}", "exec"), {})


def models_page_rows() -> dict[str, float]:
    """Architecture -> parameters in millions, as the models page lists them."""
    rows = re.findall(r"^\| (\w+) +\| (\w+) +\| +([\d.]+) \|", MODELS.read_text(), flags=re.M)
    return {name: float(params) for name, _, params in rows}


def test_models_page_lists_every_architecture() -> None:
    assert sorted(models_page_rows()) == mobilevit.list_models()


# the classifier and the DeepLabV3 model of each representative variant by default, all 56 with `-m slow`
@pytest.mark.parametrize(
    "name",
    [
        name if name.removeprefix("deeplabv3_") in REPRESENTATIVES else pytest.param(name, marks=pytest.mark.slow)
        for name in mobilevit.list_models()
    ],
)
def test_models_page_counts_the_parameters(name: str) -> None:
    model = mobilevit.create_model(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(models_page_rows()[name], rel=5e-3), name
