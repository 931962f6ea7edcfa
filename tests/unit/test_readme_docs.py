"""The README and docs as an operator reads them (issue 17): every relative link points at a
file or folder of the repository (and every #anchor at a heading), the README points to the
project's own docs/architecture.md, every code block is of a known kind and a block the tests
do not run says why, and the benchmarks name no path of the machine they were written on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.readme_blocks import LANGUAGES, README, ROOT, blocks

MARKDOWN = sorted([README, *ROOT.glob("docs/**/*.md"), *ROOT.glob("k8s/**/*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m[1]) for m in re.finditer(r"^#+ (.+)$", path.read_text(), re.M)}


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links to nothing: {broken}"


def test_the_link_check_sees_links() -> None:
    assert len(LINK.findall(README.read_text())) >= 10
    assert slug("Where data lives") == "where-data-lives" and slug("A short tour") == "a-short-tour"


def test_readme_points_to_the_architecture_document() -> None:
    assert "](docs/architecture.md)" in README.read_text()
    assert (ROOT / "docs" / "architecture.md").is_file()
    assert "ARCHITECTURE.md" not in README.read_text()  # the design document of another repository


def test_every_block_has_a_kind_and_every_skip_a_reason() -> None:
    found = blocks()
    assert {b.language for b in found} <= set(LANGUAGES), [str(b) for b in found if b.language not in LANGUAGES]
    assert all(b.language == "sh" for b in found if b.not_runnable), "only a command can be not runnable"
    assert all(len(b.not_runnable) > 20 for b in found if b.not_runnable)
    runnable = [b.language for b in found if not b.not_runnable]
    assert runnable.count("python") >= 1 and runnable.count("sh") >= 3 and runnable.count("toml") >= 1


def test_block_parsing() -> None:
    mark = "<!-- readme-test: not runnable: needs a thing we lack -->"
    text = f"x\n{mark}\n```sh\nrm -rf x\n```\n\n```python\nprint(1)\n```\n"
    skipped, runs = blocks(text)
    assert (skipped.language, skipped.code, skipped.not_runnable, skipped.line) == (
        "sh",
        "rm -rf x\n",
        "needs a thing we lack",
        3,
    )
    assert (runs.language, runs.code, runs.not_runnable) == ("python", "print(1)\n", "")


MACHINE_PATH = re.compile(r"(?<![\w.~$-])/(?:work|tmp|home|root|srv|mnt|opt|var|scratch)/")


def test_benchmarks_name_no_machine_paths() -> None:
    """Paths of the development machine mean nothing elsewhere: PEERS_KIT, PEER_DIR, tempfile."""
    offending = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "bench").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    offending += [f"README.md: {m[0]}" for m in re.finditer(r".*/work/.*", README.read_text())]
    assert not offending, "\n".join(offending)
    assert MACHINE_PATH.search('PEERS = Path("/work/shared/peers")') and MACHINE_PATH.search("--peers-dir /tmp/refmail")
    assert not MACHINE_PATH.search("MAILSTACK_CONFIG=/etc/mailstack.toml") and not MACHINE_PATH.search("s3://b/tmp/x")
