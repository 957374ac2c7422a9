"""The README's Python examples run as written, and the model tables of docs/models.md match the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mobilevit

README = Path(__file__).resolve().parents[1] / "README.md"
MODELS = README.parent / "docs" / "models.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index: int) -> None:
    exec(compile(python_blocks()[index], f"README.md block {index}", "exec"), {})


def test_models_page_lists_every_architecture() -> None:
    rows = re.findall(r"^\| (\w+) +\| (\w+) +\| +([\d.]+) \|", MODELS.read_text(), flags=re.M)
    assert sorted(name for name, _, _ in rows) == mobilevit.list_models()
    for name, _, params in rows:
        model = mobilevit.create_model(name)
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(float(params), rel=5e-3), name
