"""lambda-ber ``Dataset`` record -> EMPIAR deposition JSON (a dict).

Reads real slots first (title, ExperimentRun counts and pixel sizes,
DataFile paths and formats) and the ``empiar:<path>=<value>`` keywords
written by :mod:`empiarfs.export.lambda_ber` for what the schema cannot
hold (people, citations, category, voxel type...). A Dataset from another
source without those keywords still converts where the reverse mapping
of docs/metadata-export.md is unambiguous; everything else must come from
``overrides`` and is reported by :class:`IncompleteDeposition`.
"""

from __future__ import annotations

import posixpath
import re

from empiarfs.errors import InvalidInput
from empiarfs.export import checks, tags
from empiarfs.export.lambda_ber import entry_to_lambda_ber
from empiarfs.model import Entry
from empiarfs.remote import codes

DEFAULT_RELEASE = "RE"

# lambda DataTypeEnum -> category code, used only when no category tag.
CATEGORY_FROM_TYPE = {
    "movie": "T2", "micrograph": "T1", "motion_corrected": "T1", "particles": "T7",
    "class_averages": "T10", "volume": "T13", "diffraction": "T12",
    "processed_data": "T11",
}
# lambda FileFormatEnum -> data format code (docs/metadata-export.md reverse).
FORMAT_CODES = {"mrc": "T1", "ccp4": "T1", "mrcs": "T2", "tiff": "T3", "eer": "T9",
                "img": "T12"}
_ANGSTROM_PER = {"å": 1.0, "a": 1.0, "angstrom": 1.0, "angstroms": 1.0, "nm": 10.0,
                 "nanometer": 10.0, "nanometers": 10.0, "pm": 0.01, "µm": 1e4, "um": 1e4}
_IMAGESET_ORDER = ("name", "directory", "category", "header_format", "data_format",
                   "num_images_or_tilt_series", "frames_per_image", "frame_range_min",
                   "frame_range_max", "voxel_type", "pixel_width", "pixel_height",
                   "details", "micrographs_file_pattern", "picked_particles_file_pattern",
                   "picked_particles_directory", "image_width", "image_height")
_PERSON_KEYS = ("author_orcid", "first_name", "middle_name", "last_name", "organization",
                "street", "town_or_city", "state_or_province", "post_or_zip", "telephone",
                "fax", "email", "country")
_CITATION_KEYS = ("published", "j_or_nj_citation", "title", "journal",
                  "journal_abbreviation", "volume", "issue", "first_page", "last_page",
                  "year", "country", "language", "doi", "pubmedid", "details",
                  "book_chapter_title", "publisher", "publication_location")


class IncompleteDeposition(InvalidInput):
    """The deposition lacks required fields or has invalid ones.

    ``problems`` holds ``(path, message)`` pairs, one per field; the
    message of the exception lists them all with what to add.
    """

    def __init__(self, problems):
        self.problems = list(problems)
        lines = [f"  - {path}: {message}" for path, message in self.problems]
        super().__init__(
            f"the deposition is incomplete or invalid ({len(self.problems)} problem"
            f"{'s' if len(self.problems) != 1 else ''}):\n" + "\n".join(lines)
            + "\nSupply the missing values as overrides (a JSON/YAML object shaped like "
              "the deposition, e.g. {\"corresponding_author\": {\"email\": ...}}; list "
              "items merge by position)."
        )

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.problems]


def entry_to_deposition(entry: Entry, *, overrides: dict | None = None) -> dict:
    """EMPIAR entry -> lambda-ber Dataset -> deposition JSON.

    Raises
    ------
    IncompleteDeposition
        When required deposition fields are missing or invalid.
    """
    return deposition_from_lambda_ber(entry_to_lambda_ber(entry), overrides=overrides)


def deposition_from_lambda_ber(dataset: dict, *, overrides: dict | None = None) -> dict:
    """An EMPIAR deposition document from a lambda-ber ``Dataset`` record.

    Parameters
    ----------
    dataset
        A Dataset record (plain dict), e.g. from
        :func:`empiarfs.export.lambda_ber.entry_to_lambda_ber` or a YAML file.
    overrides
        Deposition-shaped values that replace or complete what the Dataset
        gives. Dicts merge key by key, lists of objects item by item; codes
        may be written as labels (``"tilt series"``), bare codes (``"T9"``)
        or tuple-strings, experiment types as labels or ints, author names
        as ``"Smith JW"`` or ``"('Smith', 'JW')"``, countries as names or
        ISO codes.

    Returns
    -------
    dict
        The deposition document, in the deposition's key order.

    Raises
    ------
    InvalidInput
        If ``dataset`` or ``overrides`` is not a mapping.
    IncompleteDeposition
        Listing every missing or invalid field path and what to add.
    """
    if not isinstance(dataset, dict):
        raise InvalidInput("the lambda-ber Dataset must be a mapping")
    if overrides is not None and not isinstance(overrides, dict):
        raise InvalidInput("deposition overrides must be a mapping")
    draft = _draft(dataset)
    doc = _normalise(_merge(draft, overrides or {}))
    problems = checks.check_deposition(doc)
    if problems:
        raise IncompleteDeposition(problems)
    return _prune(doc)


# --- reading the Dataset --------------------------------------------------

def _draft(dataset: dict) -> dict:
    keywords = [k for k in dataset.get("keywords") or [] if isinstance(k, str)]
    carried = tags.parse(keywords)
    runs = [r for r in dataset.get("experiment_runs") or [] if isinstance(r, dict)]
    studies = [s for s in dataset.get("studies") or [] if isinstance(s, dict)]
    title = dataset.get("title") or (studies[0].get("title") if studies else None)
    doc: dict = {
        "title": title,
        "release_date": carried.get("release_date") or DEFAULT_RELEASE,
        "experiment_type": carried.get("experiment_type") or _type_from_runs(runs),
    }
    if carried.get("scale"):
        doc["scale"] = carried["scale"]
    emdb = _items(carried.get("cross_references")) or [
        k for k in keywords if re.fullmatch(r"EMD-\d{4,}", k)]
    for key, values in (("cross_references", emdb),
                        ("biostudies_references", _items(carried.get("biostudies_references"))),
                        ("idr_references", _items(carried.get("idr_references"))),
                        ("empiar_references", _items(carried.get("empiar_references")))):
        if values:
            doc[key] = [{"name": v} for v in values]
    doc["authors"] = _authors(carried.get("authors"))
    doc["corresponding_author"] = _person(carried.get("corresponding_author"))
    doc["principal_investigator"] = [
        p for p in map(_person, _items(carried.get("principal_investigator"))) if p]
    if carried.get("workflow_file"):
        doc["workflow_file"] = {"path": carried["workflow_file"]}
    doc["imagesets"] = _imagesets(dataset, runs, carried)
    doc["citation"] = [c for c in map(_citation, _items(carried.get("citation"))) if c]
    return doc


def _items(value) -> list:
    return [v for v in value if v is not None] if isinstance(value, list) else []


def _type_from_runs(runs):
    techniques = {r.get("technique") for r in runs}
    methods = {r.get("experimental_method") for r in runs}
    if "electron_diffraction" in methods:
        return 9
    if techniques & {"cryo_em", "cryo_et"}:
        return 3
    return None   # xray_tomography and electron_microscopy are ambiguous


def _authors(value) -> list:
    out = []
    for i, author in enumerate(_items(value)):
        if isinstance(author, dict):
            out.append({"name": author.get("name"), "order_id": i,
                        "author_orcid": author.get("orcid")})
    return out


def _person(value) -> dict:
    if not isinstance(value, dict):
        return {}
    person = {k: value.get(k) for k in _PERSON_KEYS if k != "author_orcid" and value.get(k)}
    if value.get("orcid"):
        person["author_orcid"] = value["orcid"]
    # The API's "name" ("Lancey C") is not split into first/last names:
    # that cannot be done reliably, so a missing one is reported instead.
    return person


def _citation(value) -> dict | None:
    if not isinstance(value, dict):
        return None
    out = {"authors": _authors(value.get("authors"))}
    for key in _CITATION_KEYS:
        if value.get(key) is not None:
            out[key] = value[key]
    for key in ("published", "j_or_nj_citation"):
        if isinstance(out.get(key), str):
            out[key] = out[key].lower() == "true"
    out.setdefault("published", False)
    out.setdefault("j_or_nj_citation", True)
    if isinstance(out.get("year"), str) and out["year"].isdigit():
        out["year"] = int(out["year"])
    return out


def _imagesets(dataset, runs, carried) -> list:
    files = [f for f in dataset.get("data_files") or [] if isinstance(f, dict)]
    images = {i.get("id"): i for i in dataset.get("images") or [] if isinstance(i, dict)}
    carried_sets = carried.get("imagesets") if isinstance(carried.get("imagesets"), list) else []
    out = []
    for k, run in enumerate(runs):
        extra = carried_sets[k] if k < len(carried_sets) and isinstance(carried_sets[k], dict) \
            else {}
        related = [f for f in files if f.get("related_entity") == run.get("id")]
        out.append(_imageset(run, extra, related, images.get(f"{run.get('id')}-image")))
    return out


def _imageset(run, extra, related, image) -> dict:
    formats = [f.get("file_format") for f in related if f.get("file_format")]
    types = [f.get("data_type") for f in related if f.get("data_type")]
    category = extra.get("category") or _category_from(types, run.get("technique"))
    data_format = extra.get("data_format") or _format_from(formats)
    frames = _number(run.get("frames_per_movie"))
    category_code = codes.code("category", category)[0] if category else None
    if frames is None and category_code and category_code not in ("T2", "T6", "T8"):
        frames = 1    # EMPIAR's convention for single-frame sets
    width = _angstrom(run.get("pixel_size_x"))
    height = _angstrom(run.get("pixel_size_y"))
    if width is None:
        width = height = _angstrom(run.get("calibrated_pixel_size"))
    imageset = {
        "name": run.get("title") or (related[0].get("title") if related else None),
        "directory": extra.get("directory") or _directory_from(related),
        "category": category,
        "header_format": extra.get("header_format") or data_format,
        "data_format": data_format,
        "num_images_or_tilt_series": _int(_number(run.get("number_of_images"))),
        "frames_per_image": _int(frames),
        "frame_range_min": _int(extra.get("frame_range_min")),
        "frame_range_max": _int(extra.get("frame_range_max")),
        "voxel_type": extra.get("voxel_type"),
        "pixel_width": width,
        "pixel_height": height,
        "details": run.get("description"),
        "micrographs_file_pattern": extra.get("micrographs_file_pattern"),
        "picked_particles_file_pattern": extra.get("picked_particles_file_pattern"),
        "picked_particles_directory": extra.get("picked_particles_directory"),
        "image_width": _int(_number((image or {}).get("dimensions_x"))),
        "image_height": _int(_number((image or {}).get("dimensions_y"))),
    }
    return imageset


def _category_from(types, technique):
    if "raw_data" in types and technique == "cryo_et":
        return "T9"
    for data_type in types:
        if data_type in CATEGORY_FROM_TYPE:
            return CATEGORY_FROM_TYPE[data_type]
    return None


def _format_from(formats):
    for fmt in formats:
        if fmt in FORMAT_CODES:
            return FORMAT_CODES[fmt]
    return formats[0].upper() if formats else None   # becomes ('OT', 'HDF5') etc.


def _directory_from(related):
    paths = [f.get("file_path") for f in related if f.get("file_path")]
    if len(paths) == 1:
        return paths[0]
    if paths:
        return posixpath.commonpath([posixpath.dirname(p) for p in paths]) or None
    return None


def _number(quantity):
    if isinstance(quantity, dict):
        quantity = quantity.get("numeric_value")
    if isinstance(quantity, bool):
        return None
    return quantity if isinstance(quantity, (int, float)) else None


def _int(value):
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value            # left for the checker to report
    return int(number) if number.is_integer() else value


def _angstrom(quantity):
    if not isinstance(quantity, dict) or _number(quantity) is None:
        return None
    factor = _ANGSTROM_PER.get(str(quantity.get("unit", "")).strip().lower())
    return None if factor is None else round(_number(quantity) * factor, 6)


# --- overrides and normalisation ----------------------------------------

def _merge(base, extra):
    if isinstance(base, dict) and isinstance(extra, dict):
        merged = dict(base)
        for key, value in extra.items():
            merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(extra, list) and \
            all(isinstance(x, dict) for x in extra):
        merged = list(base)
        for i, value in enumerate(extra):
            if i < len(merged):
                merged[i] = _merge(merged[i], value)
            else:
                merged.append(value)
        return merged
    return extra


def _normalise(doc: dict) -> dict:
    out = dict(doc)
    kind = out.get("experiment_type")
    if isinstance(kind, str):
        out["experiment_type"] = (int(kind) if kind.strip().isdigit()
                                  else codes.experiment_type_code(kind) or kind)
    scale = out.get("scale")
    if isinstance(scale, int) and not isinstance(scale, bool):
        out["scale"] = str(scale)
    elif isinstance(scale, str) and not scale.strip().isdigit():
        found = codes.scale_code(scale)
        out["scale"] = str(found) if found else scale
    if isinstance(out.get("release_date"), str):
        out["release_date"] = out["release_date"].strip().upper()
    out["authors"] = _author_list(out.get("authors"))
    for person_key in ("corresponding_author",):
        out[person_key] = _person_country(out.get(person_key))
    out["principal_investigator"] = [_person_country(p)
                                     for p in out.get("principal_investigator") or []]
    citations = []
    for citation in out.get("citation") or []:
        if isinstance(citation, dict):
            citation = dict(citation)
            citation["authors"] = _author_list(citation.get("authors"))
        citations.append(citation)
    out["citation"] = citations
    out["imagesets"] = [_imageset_codes(s) for s in out.get("imagesets") or []]
    return out


def _author_list(authors) -> list:
    """Names to tuple-strings; a missing ``order_id`` is the list position
    (the order users write them in is the order they mean)."""
    out = []
    for i, author in enumerate(authors or []):
        author = _author_name(author)
        if isinstance(author, dict) and author.get("order_id") is None:
            author = {**author, "order_id": i}
        out.append(author)
    return out


def _author_name(author):
    if not isinstance(author, dict):
        return author
    author = dict(author)
    name = author.get("name")
    if isinstance(name, str) and codes.parse_tuple_string(name) is None \
            and not checks.AUTHOR_RE.match(name):
        split = split_author_name(name)
        if split:
            author["name"] = f"('{split[0]}', '{split[1]}')"
    return author


def split_author_name(name: str) -> tuple[str, str] | None:
    """``"Lancey C"`` / ``"van der Berg J-P"`` / ``"Smith, J.W."`` ->
    ``(surname, INITIALS)``; None when no initials can be found (a bare
    ``"Test"``), because inventing them would corrupt the record."""
    text = " ".join(name.replace("'", "’").split())
    if "," in text:
        surname, _, initials = text.partition(",")
    else:
        surname, _, initials = text.rpartition(" ")
    initials = initials.replace(".", "").replace(" ", "").strip()
    surname = surname.strip()
    if surname and initials and re.fullmatch(r"[A-Z][A-Z\-]*", initials):
        return surname, initials
    return None


def _person_country(person):
    if not isinstance(person, dict):
        return person
    person = dict(person)
    if person.get("country"):
        person["country"] = codes.country_code(person["country"]) or person["country"]
    return person


def _imageset_codes(imageset):
    if not isinstance(imageset, dict):
        return imageset
    imageset = dict(imageset)
    for key in ("category", "header_format", "data_format", "voxel_type"):
        if imageset.get(key) is not None:
            imageset[key] = codes.deposition_code(key, imageset[key])
    for key in ("num_images_or_tilt_series", "frames_per_image", "frame_range_min",
                "frame_range_max", "image_width", "image_height"):
        if isinstance(imageset.get(key), str):
            imageset[key] = _int(imageset[key])
    return imageset


def _prune(doc: dict) -> dict:
    """Drop optional keys that are None/empty, order imageset keys like
    the deposition does."""
    out = {k: v for k, v in doc.items() if v is not None}
    out["imagesets"] = [
        {k: s[k] for k in (*_IMAGESET_ORDER, *s) if k in s and s[k] not in (None, "")}
        for s in doc["imagesets"]
    ]
    for key in ("corresponding_author",):
        out[key] = {k: v for k, v in doc[key].items() if v is not None or k == "author_orcid"}
    out["principal_investigator"] = [
        {k: v for k, v in p.items() if v is not None or k == "author_orcid"}
        for p in doc["principal_investigator"]
    ]
    return out
