"""Every ```python block of README.md runs.

The blocks run in document order in one namespace, as a reader pasting them
into one session would (a later block may use an earlier one's names). A block
whose first line is ``# not run: <reason>`` is skipped; keep those rare.
"""

from __future__ import annotations

import pathlib
import re
import sys
import types
import warnings

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SKIP = "# not run:"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of each fenced python block."""
    blocks, code, start = [], None, 0
    for i, line in enumerate(text.splitlines(), 1):
        if code is None and re.fullmatch(r"```(python|py)\s*", line):
            code, start = [], i + 1
        elif code is not None and line.strip() == "```":
            blocks.append((start, "\n".join(code) + "\n"))
            code = None
        elif code is not None:
            code.append(line)
    assert code is None, f"README.md: python block at line {start} never closes"
    return blocks


def test_python_blocks_are_found():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```py\ny = x\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = x\n")]


def test_readme_python_blocks_run(monkeypatch: pytest.MonkeyPatch):
    blocks = python_blocks(README.read_text())
    assert blocks, "README.md has no python block"
    # A real module: dataclasses (Flax modules) look their class's module up.
    module = types.ModuleType("readme_snippets")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for line, code in blocks:
        first = code.lstrip().splitlines()[0] if code.strip() else ""
        if first.startswith(SKIP):
            assert first[len(SKIP) :].strip(), f"README.md:{line}: give a reason"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a snippet should run clean
                exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"README.md python block at line {line}: {e!r}") from e
