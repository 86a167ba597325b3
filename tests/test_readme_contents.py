"""README.md's table of contents lists its sections, in order, with anchors that resolve."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _headings(text: str) -> list[tuple[int, str]]:
    found, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
            continue
        match = None if fence else re.match(r"^(#{2,3}) (.+)$", line)
        if match and match.group(2) != "Contents":
            found.append((len(match.group(1)), match.group(2)))
    return found


def _anchor(title: str) -> str:
    """GitHub's: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def test_contents_matches_the_sections() -> None:
    text = README.read_text()
    contents = text.split("## Contents\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^( *)- \[(.+)\]\(#(.+)\)$", contents, re.MULTILINE)
    headings = _headings(text)
    assert [(2 + len(indent) // 2, title) for indent, title, _ in listed] == headings
    assert [anchor for _, _, anchor in listed] == [_anchor(title) for _, title in headings]
    titles = [title for _, title in headings]
    assert len(titles) == len(set(titles)), "a section appears twice"


def test_internal_links_point_at_sections() -> None:
    text = README.read_text()
    anchors = {_anchor(title) for _, title in _headings(text)}
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in anchors, target
