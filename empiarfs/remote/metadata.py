"""Parse the EMPIAR entry API's JSON into :mod:`empiarfs.model` values.

Tolerant by design (see docs/empiar.md §2.1-2.3): numbers may come as
strings, any field may be null or missing, ``directory`` may start with
``/``, cross references may be strings or ``{"name": ...}`` objects and
``imagesets`` may even be a dict. Wrong types never raise; they become
``None`` (or empty), because one odd field must not hide a whole entry.
"""

from __future__ import annotations

import json
import math
import posixpath

from empiarfs.errors import BadResponse
from empiarfs.model import Author, Citation, Entry, Grant, ImageSet


def unwrap(payload, accession: str | None = None) -> tuple[str, dict]:
    """``{"EMPIAR-N": {...}}`` -> ``("EMPIAR-N", {...})``.

    Raises
    ------
    BadResponse
        If the payload is not a one-entry object of objects.
    """
    if isinstance(payload, (bytes, str)):
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise BadResponse(f"entry JSON for {accession or '?'} is malformed: {exc}") from exc
    if not isinstance(payload, dict) or not payload:
        raise BadResponse(f"entry JSON for {accession or '?'} is not an object keyed by accession")
    if accession and accession in payload:
        key = accession
    else:
        key = next(iter(payload))
    inner = payload[key]
    if not isinstance(inner, dict):
        raise BadResponse(f"entry JSON for {key}: the record is not an object")
    return str(key), inner


def parse_entry(accession: str, data: dict) -> Entry:
    """Build an :class:`Entry` from the inner record of an API response."""
    if not isinstance(data, dict):
        raise BadResponse(f"entry {accession}: the record is not an object")
    imagesets_raw = data.get("imagesets")
    if isinstance(imagesets_raw, dict):
        imagesets_raw = list(imagesets_raw.values())
    return Entry(
        accession=str(accession),
        title=_text(data.get("title")) or "",
        status=_text(data.get("status")),
        deposition_date=_text(data.get("deposition_date")),
        release_date=_text(data.get("release_date")),
        update_date=_text(data.get("update_date")),
        obsolete_date=_text(data.get("obsolete_date")),
        authors=tuple(a for a in map(_author, _list(data.get("authors"))) if a),
        corresponding_author=_author(data.get("corresponding_author")),
        principal_investigators=tuple(
            a for a in map(_author, _list(data.get("principal_investigator"))) if a
        ),
        citations=tuple(c for c in map(_citation, _list(data.get("citation"))) if c),
        grants=tuple(
            Grant(_text(g.get("funding_body")), _text(g.get("code")), _text(g.get("country")))
            for g in _list(data.get("grant_references"))
            if isinstance(g, dict)
        ),
        imagesets=tuple(s for s in map(_imageset, _list(imagesets_raw)) if s),
        emdb_refs=_names(data.get("cross_references")),
        biostudies_refs=_names(data.get("biostudies_references")),
        idr_refs=_names(data.get("idr_references")),
        empiar_refs=_names(data.get("empiar_references")),
        related_pdb_entries=_names(data.get("related_pdb_entries")),
        dataset_size=_text(data.get("dataset_size")),
        experiment_type=_text(data.get("experiment_type")),
        scale=_text(data.get("scale")),
        doi=_text(data.get("entry_doi")),
        workflow_file=_workflow(data.get("workflow_file")),
        raw=data,
    )


def clean_directory(directory) -> str:
    """``"/data/x/"`` -> ``"data/x"``; refuses to climb out of the entry."""
    text = _text(directory) or ""
    text = posixpath.normpath("/" + text.strip()).lstrip("/")
    return "" if text == "." else text


def _text(value):
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def _int(value):
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(float(str(value).strip()))
    except (TypeError, ValueError, OverflowError):  # "inf" overflows int()
        return None


def _float(value):
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _bool(value) -> bool:
    """JSON booleans, and the strings a loose serialiser may send."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "y")
    return bool(value)


def _list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _names(value) -> tuple:
    names = []
    for item in _list(value):
        if isinstance(item, dict):
            item = item.get("name")
        text = _text(item)
        if text:
            names.append(text)
    return tuple(names)


def _author(value):
    if isinstance(value, dict) and isinstance(value.get("author"), dict):
        value = value["author"]
    if isinstance(value, str):
        return Author(name=value.strip()) if value.strip() else None
    if not isinstance(value, dict):
        return None
    first, middle, last = (_text(value.get(k)) for k in ("first_name", "middle_name", "last_name"))
    name = _text(value.get("name")) or " ".join(p for p in (first, middle, last) if p)
    if not name:
        return None
    return Author(
        name=name,
        orcid=_text(value.get("author_orcid")),
        first_name=first,
        middle_name=middle,
        last_name=last,
        organization=_text(value.get("organization")),
        email=_text(value.get("email")),
        country=_text(value.get("country")),
        street=_text(value.get("street")),
        town_or_city=_text(value.get("town_or_city")),
        state_or_province=_text(value.get("state_or_province")),
        post_or_zip=_text(value.get("post_or_zip")),
    )


def _citation(value):
    if not isinstance(value, dict):
        return None
    return Citation(
        title=_text(value.get("title")),
        authors=tuple(a for a in map(_author, _list(value.get("authors"))) if a),
        journal=_text(value.get("journal")),
        journal_abbreviation=_text(value.get("journal_abbreviation")),
        year=_int(value.get("year")),
        volume=_text(value.get("volume")),
        issue=_text(value.get("issue")),
        first_page=_text(value.get("first_page")),
        last_page=_text(value.get("last_page")),
        doi=_text(value.get("doi")),
        pubmedid=_text(value.get("pubmedid")),
        published=_bool(value.get("published")),
        preprint=_bool(value.get("preprint")),
        j_or_nj_citation=value.get("j_or_nj_citation") is None or _bool(value.get("j_or_nj_citation")),
        details=_text(value.get("details")),
    )


def _imageset(value):
    if not isinstance(value, dict):
        return None
    name = _text(value.get("name"))
    directory = clean_directory(value.get("directory"))
    if not name and not directory:
        return None
    return ImageSet(
        name=name or directory,
        directory=directory,
        category=_text(value.get("category")),
        header_format=_text(value.get("header_format")),
        data_format=_text(value.get("data_format")),
        num_images=_int(value.get("num_images_or_tilt_series")),
        frames_per_image=_int(value.get("frames_per_image")),
        frame_range_min=_int(value.get("frame_range_min")),
        frame_range_max=_int(value.get("frame_range_max")),
        voxel_type=_text(value.get("voxel_type")),
        pixel_width=_float(value.get("pixel_width")),
        pixel_height=_float(value.get("pixel_height")),
        image_width=_int(value.get("image_width")),
        image_height=_int(value.get("image_height")),
        micrographs_file_pattern=_text(value.get("micrographs_file_pattern")) or "",
        picked_particles_file_pattern=_text(value.get("picked_particles_file_pattern")) or "",
        picked_particles_directory=clean_directory(value.get("picked_particles_directory")),
        details=_text(value.get("details")) or "",
        segmentations=tuple(_list(value.get("segmentations"))),
    )


def _workflow(value):
    if isinstance(value, dict):
        value = value.get("path")
    text = _text(value)
    if text and text.startswith("path="):
        text = text[5:]
    return text
