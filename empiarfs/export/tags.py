"""The carrier for EMPIAR facts that lambda-ber-schema has no slot for.

The lambda-ber-schema snapshot we target (main @ 6d962a15) has no Person,
Publication or cross-reference class, and no slot for an imageset's
category, header format or voxel type. Every slot is closed (pydantic
``extra="forbid"``), so such facts can only travel in free strings. We put
them in ``Dataset.keywords`` as tags::

    empiar:<path>=<value>

where ``<path>`` is the deposition-JSON path of the fact
(``authors[0].name``, ``imagesets[2].voxel_type``) and ``<value>`` is the
archive's own spelling (the API label, not the deposition code). A
keyword list is the only multivalued free-text slot on ``Dataset``, and a
tag per fact keeps the record valid, greppable and reversible.

Pure functions; imports nothing internal.
"""

from __future__ import annotations

import re

PREFIX = "empiar:"
_SEGMENT_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")
_INDEX_RE = re.compile(r"\[(\d+)\]")


def make(path: str, value) -> str | None:
    """One tag, or None when ``value`` is empty. Whitespace (newlines
    included) is collapsed because a keyword is one line of text."""
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = " ".join(str(value).split())
    if not text:
        return None
    return f"{PREFIX}{path}={text}"


def is_tag(keyword) -> bool:
    return isinstance(keyword, str) and keyword.startswith(PREFIX) and "=" in keyword


def parse(keywords) -> dict:
    """Tags among ``keywords`` -> a nested dict/list structure.

    ``["empiar:authors[1].name=Smith J"]`` -> ``{"authors": [None, {"name":
    "Smith J"}]}``. Values stay strings; malformed tags are ignored (a
    keyword that merely looks like a tag is still a valid keyword).
    """
    root: dict = {}
    for keyword in keywords or ():
        if not is_tag(keyword):
            continue
        path, value = keyword[len(PREFIX):].split("=", 1)
        steps = _steps(path)
        if steps is not None:
            _put(root, steps, value)
    return root


def _steps(path: str):
    steps: list = []
    for segment in path.split("."):
        match = _SEGMENT_RE.match(segment)
        if not match:
            return None
        steps.append(match.group(1))
        steps.extend(int(i) for i in _INDEX_RE.findall(match.group(2)))
    return steps


def _put(node, steps, value):
    for here, after in zip(steps, steps[1:]):
        child = [] if isinstance(after, int) else {}
        node = _child(node, here, child)
        if node is None:
            return
    last = steps[-1]
    if isinstance(last, int):
        if not isinstance(node, list):
            return
        node.extend([None] * (last + 1 - len(node)))
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value


def _child(node, key, empty):
    if isinstance(key, int):
        if not isinstance(node, list):
            return None
        node.extend([None] * (key + 1 - len(node)))
        if node[key] is None:
            node[key] = empty
        current = node[key]
    else:
        if not isinstance(node, dict):
            return None
        current = node.setdefault(key, empty)
    return current if isinstance(current, type(empty)) else None
