"""Accession numbers as users type them, and batch specifications."""

from __future__ import annotations

import re

from empiarfs.errors import InvalidInput

_ACCESSION_RE = re.compile(r"^\s*(?:empiar[-_ ]?)?0*(\d{1,7})\s*/?\s*$", re.IGNORECASE)
_EMDB_RE = re.compile(r"^\s*(?:emd|emdb)?[-_ ]?(\d{4,})\s*$", re.IGNORECASE)
MAX_BATCH = 5000


def normalize(accession) -> str:
    """``10002``, ``"EMPIAR-10002"``, ``"empiar-10002"`` -> ``"EMPIAR-10002"``.

    Raises
    ------
    InvalidInput
        If the text is not an EMPIAR accession.
    """
    match = _ACCESSION_RE.match(str(accession))
    if not match:
        raise InvalidInput(
            f"not an EMPIAR accession: {accession!r} (examples: EMPIAR-10002, 10002)"
        )
    return f"EMPIAR-{int(match.group(1))}"


def number(accession) -> int:
    """The number of an accession: ``"EMPIAR-10002"`` -> ``10002``."""
    return int(normalize(accession).split("-", 1)[1])


def normalize_emdb(emdb_id) -> str:
    """``"EMD-2275"``, ``"emd_2275"``, ``2275`` -> ``"EMD-2275"``."""
    match = _EMDB_RE.match(str(emdb_id))
    if not match:
        raise InvalidInput(f"not an EMDB accession: {emdb_id!r} (example: EMD-2275)")
    return f"EMD-{match.group(1)}"


def parse_spec(spec) -> list[int]:
    """Expand ``"10050,10054,10060-10072"`` (or an iterable of accessions)
    into sorted unique numbers.

    Raises
    ------
    InvalidInput
        On malformed parts, reversed ranges or more than ``MAX_BATCH`` ids.
    """
    parts = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    numbers: set[int] = set()
    for raw in parts:
        part = raw.strip()
        if not part:
            continue
        pieces = re.split(r"(?<=\d)\s*-\s*(?=(?:empiar-)?\d)", part, flags=re.IGNORECASE)
        if len(pieces) == 2:
            low, high = number(pieces[0]), number(pieces[1])
            if high < low:
                raise InvalidInput(f"reversed range: {part!r}")
            if high - low >= MAX_BATCH:
                raise InvalidInput(f"range too large (over {MAX_BATCH}): {part!r}")
            numbers.update(range(low, high + 1))
        else:
            numbers.add(number(part))
        if len(numbers) > MAX_BATCH:
            raise InvalidInput(f"more than {MAX_BATCH} accessions in one batch")
    return sorted(numbers)
