"""Our own checks of an EMPIAR deposition document (a dict).

Written from the deposition rules (docs/metadata-export.md), not copied from the
official schema, and stricter where that schema is loose: its code
regexes are anchored on one branch only, so ``"('T2', '')junk"`` passes
there and fails here. Each problem names its JSON path and what to add,
so a user can fix everything in one go.
"""

from __future__ import annotations

import re

from empiarfs.remote import codes

NAME_RE = re.compile(r"^[^0-9!\"£$%^&*()]+$")
AUTHOR_RE = re.compile(r"^\('[^0-9!\"£$%^&*()']+', '[^0-9!\"£$%^&*()']+'\)$")
ORCID_RE = re.compile(r"^([0-9]{4}-){3}[0-9]{3}[0-9X]$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
DOI_RE = re.compile(r"^10\.[0-9]{4,9}/[-._;()/:A-Za-z0-9]+$")
PUBMED_RE = re.compile(r"^[0-9]{1,8}(\.[0-9]+)?$")
REFERENCE_RES = {
    "cross_references": (re.compile(r"^EMD-[0-9]{4,}$"), "EMD-1234"),
    "biostudies_references": (re.compile(r"^S-.+$"), "S-BSST123"),
    "idr_references": (re.compile(r"^idr.+$"), "idr0001"),
    "empiar_references": (re.compile(r"^EMPIAR-\d+$"), "EMPIAR-10002"),
}
PERSON_REQUIRED = ("first_name", "last_name", "organization", "email", "country")
IMAGESET_REQUIRED = ("name", "directory", "category", "header_format", "data_format",
                     "num_images_or_tilt_series", "frames_per_image", "voxel_type")
CITATION_REQUIRED = ("authors", "published", "j_or_nj_citation", "title")

_HINTS = {
    "title": "a title of 10 to 255 characters",
    "release_date": "one of RE, EP, HP, HO",
    "experiment_type": "an experiment type: " + ", ".join(
        f"{k} ({v})" for k, v in sorted(codes.EXPERIMENT_TYPE.items())),
    "authors": "at least one author, e.g. {'name': \"('Smith', 'JW')\", 'order_id': 0}",
    "corresponding_author": "the corresponding author with first_name, last_name, "
                            "organization, email and country (ISO 3166-1 alpha-2)",
    "principal_investigator": "at least one principal investigator (same fields as "
                              "corresponding_author)",
    "citation": "at least one citation; an unpublished one is {'title': ..., 'authors': [...], "
                "'published': False, 'j_or_nj_citation': True}",
    "imagesets": "at least one imageset",
    "first_name": "a first name", "last_name": "a last name",
    "organization": "the organisation (up to 255 characters)",
    "email": "an e-mail address", "country": "an ISO 3166-1 alpha-2 code such as GB or US",
    "name": "a name",
    "directory": "the directory under the entry root, e.g. data/movies",
    "category": "a category: " + ", ".join(f"{k} {v}" for k, v in codes.CATEGORY.items())
                + ", or ('OT', 'text')",
    "header_format": "a header format code such as ('T3', '') for TIFF",
    "data_format": "a data format code such as ('T1', '') for MRC",
    "num_images_or_tilt_series": "the number of images or tilt series (integer)",
    "frames_per_image": "the number of frames per image (integer, 1 for single frames)",
    "voxel_type": "a voxel type: " + ", ".join(f"{k} {v}" for k, v in codes.VOXEL_TYPE.items())
                  + ", or ('OT', 'TEXT')",
    "published": "true or false", "j_or_nj_citation": "true for a journal, false otherwise",
}


def check_deposition(doc: dict) -> list[tuple[str, str]]:
    """Every problem in a deposition document as ``(path, message)`` pairs;
    empty when it satisfies the deposition rules."""
    out: list[tuple[str, str]] = []
    title = doc.get("title")
    if not _present(title):
        _missing(out, "title")
    elif not isinstance(title, str) or not 10 <= len(title) <= 255:
        out.append(("title", f"must be 10-255 characters, is {len(str(title))}"))
    if doc.get("release_date") not in codes.RELEASE_DATE:
        _bad(out, "release_date", doc.get("release_date"))
    kind = doc.get("experiment_type")
    if not _present(kind):
        _missing(out, "experiment_type")
    elif isinstance(kind, bool) or kind not in codes.EXPERIMENT_TYPE:
        _bad(out, "experiment_type", kind)
    scale = doc.get("scale")
    if "scale" in doc and not (isinstance(scale, str) and re.fullmatch(r"[1-5]", scale)):
        out.append(("scale", "must be a digit string '1'..'5' (molecule, virus, cell, "
                             "tissue, organism)"))
    for key, (pattern, example) in REFERENCE_RES.items():
        for i, item in enumerate(doc.get(key) or []):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not pattern.match(name):
                out.append((f"{key}[{i}].name", f"{name!r} is malformed; example {example}"))
    _authors(out, "authors", doc.get("authors"))
    _person(out, "corresponding_author", doc.get("corresponding_author"))
    _list_of(out, "principal_investigator", doc.get("principal_investigator"), _person)
    _list_of(out, "citation", doc.get("citation"), _citation)
    _list_of(out, "imagesets", doc.get("imagesets"), _imageset)
    workflow = doc.get("workflow_file")
    if workflow is not None and not (isinstance(workflow, dict) and "path" in workflow):
        out.append(("workflow_file", "must be {'path': 'data/workflow.json'}"))
    return out


def _present(value) -> bool:
    return value is not None and value != "" and value != [] and value != {}


def _missing(out, path):
    key = path.rsplit(".", 1)[-1].split("[", 1)[0]
    out.append((path, f"missing; add {_HINTS.get(key, 'a value')}"))


def _bad(out, path, value):
    key = path.rsplit(".", 1)[-1].split("[", 1)[0]
    out.append((path, f"{value!r} is not valid; give {_HINTS.get(key, 'a valid value')}"))


def _list_of(out, path, value, check):
    if not isinstance(value, list) or not value:
        _missing(out, path)
        return
    for i, item in enumerate(value):
        check(out, f"{path}[{i}]", item)


def _authors(out, path, value):
    if not isinstance(value, list) or not value:
        _missing(out, path)
        return
    for i, author in enumerate(value):
        here = f"{path}[{i}]"
        if not isinstance(author, dict):
            out.append((here, "must be an object with name and order_id"))
            continue
        name = author.get("name")
        if not _present(name):
            out.append((f"{here}.name", "missing; add \"('Surname', 'INITIALS')\""))
        elif not isinstance(name, str) or not AUTHOR_RE.match(name):
            out.append((f"{here}.name", f"{name!r} is not ('Surname', 'INITIALS'); "
                                        "give e.g. \"('Smith', 'JW')\" or 'Smith JW'"))
        if not isinstance(author.get("order_id"), int) or isinstance(author.get("order_id"), bool):
            out.append((f"{here}.order_id", "missing; add the 0-based position of the author"))
        _orcid(out, here, author.get("author_orcid"))


def _orcid(out, here, orcid):
    if orcid is not None and not (isinstance(orcid, str) and ORCID_RE.match(orcid)):
        out.append((f"{here}.author_orcid", f"{orcid!r} is not an ORCID like 0000-0002-1825-0097"))


def _person(out, path, value):
    if not isinstance(value, dict) or not value:
        _missing(out, path)
        return
    for key in PERSON_REQUIRED:
        if not _present(value.get(key)):
            _missing(out, f"{path}.{key}")
    for key in ("first_name", "last_name", "middle_name"):
        text = value.get(key)
        if _present(text) and (not isinstance(text, str) or len(text) > 60
                               or not NAME_RE.match(text)):
            out.append((f"{path}.{key}", f"{text!r}: up to 60 characters, no digits or "
                                         "!\"£$%^&*()"))
    if _present(value.get("organization")) and len(str(value["organization"])) > 255:
        out.append((f"{path}.organization", "longer than 255 characters"))
    email = value.get("email")
    if _present(email) and not (isinstance(email, str) and EMAIL_RE.match(email)):
        out.append((f"{path}.email", f"{email!r} is not an e-mail address"))
    country = value.get("country")
    if _present(country) and country not in codes.ISO_COUNTRIES:
        out.append((f"{path}.country", f"{country!r} is not an ISO 3166-1 alpha-2 code; "
                                       "give e.g. GB or US"))
    for key in ("street", "town_or_city", "state_or_province", "post_or_zip",
                "telephone", "fax"):
        if key in value and not isinstance(value[key], str):
            out.append((f"{path}.{key}", "must be text (leave it out when unknown)"))
    _orcid(out, path, value.get("author_orcid"))


def _citation(out, path, value):
    if not isinstance(value, dict):
        out.append((path, "must be an object"))
        return
    for key in CITATION_REQUIRED:
        if key != "authors" and value.get(key) is None:
            _missing(out, f"{path}.{key}")
    _authors(out, f"{path}.authors", value.get("authors"))
    for key in ("published", "j_or_nj_citation"):
        if value.get(key) is not None and not isinstance(value[key], bool):
            out.append((f"{path}.{key}", "must be true or false"))
    if value.get("title") is not None and len(str(value["title"])) > 255:
        out.append((f"{path}.title", "longer than 255 characters"))
    year = value.get("year")
    if year is not None and not (isinstance(year, int) and 1000 <= year <= 9999):
        out.append((f"{path}.year", f"{year!r} is not a four-digit year"))
    if value.get("doi") is not None and not DOI_RE.match(str(value["doi"])):
        out.append((f"{path}.doi", f"{value['doi']!r} is not a DOI like 10.1038/xyz"))
    if value.get("pubmedid") is not None and not PUBMED_RE.match(str(value["pubmedid"])):
        out.append((f"{path}.pubmedid", f"{value['pubmedid']!r} is not a PubMed id"))
    for key in ("volume", "first_page", "last_page"):
        if value.get(key) is not None and len(str(value[key])) > 8:
            out.append((f"{path}.{key}", "longer than 8 characters"))


def _imageset(out, path, value):
    if not isinstance(value, dict):
        out.append((path, "must be an object"))
        return
    for key in IMAGESET_REQUIRED:
        if not _present(value.get(key)) and value.get(key) != 0:
            _missing(out, f"{path}.{key}")
    for key in ("name", "directory"):
        if _present(value.get(key)) and len(str(value[key])) > 200:
            out.append((f"{path}.{key}", "longer than 200 characters"))
    for key, allowed in (("category", range(1, 15)), ("header_format", range(1, 15)),
                         ("data_format", range(1, 15)), ("voxel_type", range(1, 10))):
        text = value.get(key)
        if not _present(text):
            continue
        parsed = codes.parse_tuple_string(text)
        ok = parsed is not None and (
            (parsed[0] == "OT" and parsed[1] and
             (key == "category" or codes.OTHER_TEXT_RE.match(parsed[1])))
            or (parsed[0] != "OT" and int(parsed[0][1:]) in allowed))
        if not ok:
            _bad(out, f"{path}.{key}", text)
    for key in ("num_images_or_tilt_series", "frames_per_image", "frame_range_min",
                "frame_range_max", "image_width", "image_height"):
        number = value.get(key)
        if number is not None and (not isinstance(number, int) or isinstance(number, bool)):
            out.append((f"{path}.{key}", f"{number!r} is not an integer"))
    for key in ("pixel_width", "pixel_height"):
        number = value.get(key)
        if number is not None and (not isinstance(number, (int, float))
                                   or isinstance(number, bool)):
            out.append((f"{path}.{key}", f"{number!r} is not a number (Å)"))
