"""The fenced code blocks of README.md, as the README tests read them.

A block is ```sh, ```python, ```toml or ```text (a diagram or a layout). sh and python blocks are
run by tests/e2e/test_readme_snippets.py, toml is given to `mailstack config --config`; a block
that truly cannot run says why in the line above it:

    <!-- readme-test: not runnable: REASON -->
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LANGUAGES = ("sh", "python", "toml", "text")
_FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.M | re.S)
_NOT_RUNNABLE = re.compile(r"<!-- readme-test: not runnable: (.*?) -->\n\Z")


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # of the opening fence, 1-based
    not_runnable: str  # the reason given, "" when it runs

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language})"


def blocks(text: str | None = None) -> list[Block]:
    text = README.read_text() if text is None else text
    found = []
    for match in _FENCE.finditer(text):
        mark = _NOT_RUNNABLE.search(text[: match.start()])
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(match[1], match[2], line, mark[1].strip() if mark else ""))
    return found
