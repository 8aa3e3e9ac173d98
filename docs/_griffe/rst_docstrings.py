"""A Griffe extension that renders the package's reStructuredText docstring markup as Markdown.

The docstrings follow Lightning's style (Google sections, reST roles and literal blocks), which
reads well in ``help()`` and IDEs; mkdocstrings renders Markdown. This converts, per docstring:
``:class:`~pkg.Name``` and the other roles into code spans, ```text <url>`_`` into links,
``Example::`` and ``.. code-block::``/``.. math::`` literal blocks into fenced blocks, and drops
reST's ``\\ `` escapes.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|func|meth|data|attr|mod|obj|exc):`(~?)([^`]+)`")
_LINK = re.compile(r"`([^`<]+?)\s*<([^>]+)>`_")
_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)"
    r"(?:\.\. (?P<directive>code-block|math)::[ \t]*(?P<lang>\S*)|(?P<label>[^\n]*?)::)[ \t]*$"
)


def _role(match: re.Match[str]) -> str:
    kind, short, target = match.groups()
    name = target.rsplit(".", 1)[-1] if short else target
    return f"`{name}()`" if kind in ("func", "meth") else f"`{name}`"


def _blocks(text: str) -> str:
    """Turn each literal block (an indented block after ``::`` or a directive) into a fence."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _BLOCK.match(lines[i])
        if match is None or (match["label"] is not None and match["label"].strip() == ""):
            out.append(lines[i])
            i += 1
            continue
        indent = len(match["indent"])
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        end = j
        while end < len(lines) and (
            not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
        ):
            end += 1
        while end > j and not lines[end - 1].strip():
            end -= 1
        if end == j:  # no indented block follows: leave the line alone
            out.append(lines[i])
            i += 1
            continue
        body = textwrap.dedent("\n".join(lines[j:end]))
        if match["directive"] == "math":
            lang = "text"
        elif match["directive"]:
            lang = match["lang"] or "text"
        else:
            lang = "python"
            out.append(f"{match['indent']}{match['label'].rstrip()}:")
            out.append("")
        pad = match["indent"]
        out += [
            f"{pad}```{lang}",
            *(f"{pad}{line}" if line else "" for line in body.split("\n")),
            f"{pad}```",
            "",
        ]
        i = end
    return "\n".join(out)


def to_markdown(text: str) -> str:
    """The docstring ``text`` with its reST markup as Markdown."""
    text = _ROLE.sub(_role, text)
    text = _LINK.sub(r"[\1](\2)", text)
    text = text.replace("\\ ", "")
    return _blocks(text)


class RstDocstrings(griffe.Extension):
    """Convert every docstring of the loaded package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._convert(pkg, set())

    def _convert(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._convert(member, seen)  # type: ignore[arg-type]
