"""Every ```python block of README.md runs verbatim (offline, on the shipped trio-tiny), from a directory laid
out like the repository root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import trio_edge

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, capsys):
    (tmp_path / "trio_edge").symlink_to(Path(trio_edge.__file__).parent)  # the sample images' relative paths
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip(), "the example prints what it shows"


def test_public_api_is_listed():
    for name in ("export", "load", "Pipeline", "GenerationResult", "select_tokens", "Schedule", "InputError",
                 "ArtifactError", "ExportInfo"):
        assert name in trio_edge.__all__ and getattr(trio_edge, name) is not None
