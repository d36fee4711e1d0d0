"""EMPIAR entry -> lambda-ber-schema ``Dataset`` record (a plain dict).

Target: lambda-ber-schema main @ 6d962a15 (v0.1.2-186), the snapshot
studied in docs/metadata-export.md. That schema has no licence, so nothing of it is
copied here: the slot names below are written from its documentation and
the tests validate the output against the snapshot when it is present.

Shape (docs/metadata-export.md):

* ``Dataset`` id = ``https://doi.org/10.6019/<accession>`` (EMPIAR's DOI
  scheme; no ``empiar:`` prefix is declared, so full IRIs, not CURIEs);
  derived ids are fragments: ``#study``, ``#imageset-<k>`` (one
  ``ExperimentRun`` per imageset, k 0-based like deposition paths),
  ``#imageset-<k>-directory`` (one ``DataFile`` per imageset directory),
  ``#imageset-<k>-image`` (an ``Image`` template with the dimensions),
  ``#file/<path>`` (one ``DataFile`` per listed file).
* Facts with no slot travel as ``empiar:<path>=<value>`` keywords
  (:mod:`empiarfs.export.tags`).
"""

from __future__ import annotations

import json
import logging
import posixpath
from urllib.parse import quote

import yaml

from empiarfs.config import DEFAULT_DATA_URL
from empiarfs.errors import InvalidInput
from empiarfs.export import tags
from empiarfs.model import Author, Citation, Entry, FileInfo, ImageSet
from empiarfs.remote import codes

log = logging.getLogger(__name__)

SCHEMA_NAME = "lambda-ber-schema"
SCHEMA_VERSION = "main@6d962a15 (v0.1.2-186)"
DEFAULT = DEFAULT_DATA_URL
ENTRY_PAGE = "https://www.ebi.ac.uk/empiar/{accession}/"

# EMPIAR data_format label -> lambda FileFormatEnum. IMAGIC, DM3, DM4,
# SPIDER, XML, PNG, JPEG, EM and TPX3 have no value (docs/metadata-export.md).
FORMAT_FROM_LABEL = {
    "MRC": "mrc", "MRCS": "mrcs", "TIFF": "tiff", "EER": "eer",
    "BIG DATA VIEWER HDF5": "hdf5", "SMV": "img",
}

# File-name extension -> FileFormatEnum, for listed files and patterns.
FORMAT_FROM_EXTENSION = {
    "mrc": "mrc", "st": "mrc", "ali": "mrc", "rec": "mrc", "mrcs": "mrcs",
    "map": "ccp4", "ccp4": "ccp4", "tif": "tiff", "tiff": "tiff", "eer": "eer",
    "h5": "h5", "hdf5": "hdf5", "hdf": "hdf5", "star": "star", "pdb": "pdb",
    "cif": "mmcif", "mmcif": "mmcif", "mtz": "mtz", "cbf": "cbf", "img": "img",
    "json": "json", "csv": "csv", "cs": "cs", "zip": "zip", "tar": "tar",
    "gz": "gz", "tgz": "gz", "txt": "ascii", "mdoc": "ascii", "log": "ascii",
    "xf": "ascii", "tlt": "ascii", "rawtlt": "ascii", "aln": "ascii", "md": "ascii",
}
_COMPRESSED = {"bz2": "bzip2"}   # no enum value: we name the inner format

# Category code -> (DataTypeEnum, file_role, unit for number_of_images).
CATEGORY_TYPES = {
    "T1": ("micrograph", "raw", "micrographs"),
    "T2": ("movie", "raw", "movies"),
    "T3": ("micrograph", "raw", "micrographs"),
    "T4": ("micrograph", "raw", "micrographs"),
    "T5": ("particles", "intermediate", "particle images"),
    "T6": ("particles", "intermediate", "particle images"),
    "T7": ("particles", "intermediate", "particle images"),
    "T8": ("particles", "intermediate", "particle images"),
    "T9": ("raw_data", "raw", "tilt series"),
    "T10": ("class_averages", "intermediate", "class averages"),
    "T11": ("processed_data", "intermediate", "stitched maps"),
    "T12": ("diffraction", "raw", "diffraction images"),
    "T13": ("volume", "final", "volumes"),
    "T14": ("volume", "intermediate", "subtomograms"),
}
MULTIFRAME = {"T2", "T6", "T8"}
TOMOGRAPHY = {"T9", "T14"}
XRAY_TYPES = {"SXT", "Hard X-ray/X-ray microCT", "CLXM"}
VOLUME_EM_TYPES = {"SBF-SEM", "FIB-SEM", "ATUM-SEM", "ssET", "CLEM"}

_PERSON_FIELDS = ("first_name", "middle_name", "last_name", "organization", "email",
                  "country", "street", "town_or_city", "state_or_province", "post_or_zip")
_CITATION_FIELDS = ("title", "journal", "journal_abbreviation", "year", "volume", "issue",
                    "first_page", "last_page", "doi", "pubmedid", "published", "preprint",
                    "j_or_nj_citation", "details")
_IMAGESET_TAGS = ("directory", "category", "header_format", "data_format", "voxel_type",
                  "frame_range_min", "frame_range_max", "micrographs_file_pattern",
                  "picked_particles_file_pattern", "picked_particles_directory")


def dataset_id(accession: str) -> str:
    """The IRI used as ``Dataset.id``: the entry's DOI as a URL."""
    return f"https://doi.org/10.6019/{accession}"


def entry_to_lambda_ber(entry: Entry, files: list[FileInfo] | None = None,
                        data_url: str = DEFAULT) -> dict:
    """A lambda-ber-schema ``Dataset`` record for one EMPIAR entry.

    Parameters
    ----------
    entry
        The parsed entry (:func:`empiarfs.remote.metadata.parse_entry`).
    files
        Optional listing of the entry's files (paths relative to the entry
        root). With it, one ``DataFile`` per file in a known format (sizes
        only when exact); without it, one ``DataFile`` per imageset
        directory.
    data_url
        Base of the data tree; ``storage_uri`` values are
        ``<data_url>/<N>/<path>``.

    Returns
    -------
    dict
        Plain values in a fixed key order, ready for :func:`dump`.

    Raises
    ------
    InvalidInput
        If ``entry`` has no accession.
    """
    if not entry.accession:
        raise InvalidInput("cannot export an entry without an accession")
    base = dataset_id(entry.accession)
    root_url = _entry_root_url(entry, data_url)
    technique = _entry_technique(entry)

    record: dict = {"id": base, "title": entry.title or entry.accession}
    record["description"] = _description(entry, data_url)
    record["keywords"] = _keywords(entry)
    study = {"id": f"{base}#study", "title": entry.title or entry.accession}
    record["studies"] = [study]

    runs, data_files, images = [], [], []
    for k, imageset in enumerate(entry.imagesets):
        runs.append(_run(entry, k, imageset, technique, base, root_url))
        if files is None:
            directory_file = _directory_file(k, imageset, base, root_url)
            if directory_file:
                data_files.append(directory_file)
        image = _template_image(k, imageset, base)
        if image:
            images.append(image)
    if files is not None:
        data_files.extend(_listed_files(entry, files, base, root_url))
    if runs:
        record["experiment_runs"] = runs
    if data_files:
        record["data_files"] = data_files
    if images:
        record["images"] = images
    if runs:
        record["study_experiment_associations"] = [
            {"study_id": study["id"], "experiment_id": run["id"]} for run in runs
        ]
    return record


def dump(record: dict, format: str = "yaml") -> str:
    """Serialise a record as YAML or JSON, keys in the record's order.

    Raises
    ------
    InvalidInput
        For a format other than ``"yaml"`` or ``"json"``.
    """
    if format == "yaml":
        return yaml.safe_dump(record, sort_keys=False, allow_unicode=True, width=100)
    if format == "json":
        return json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    raise InvalidInput(f"unknown format {format!r}: use 'yaml' or 'json'")


def load(text: str) -> dict:
    """Parse a Dataset record written as YAML or JSON (JSON is YAML).

    Raises
    ------
    InvalidInput
        If the text is not a YAML/JSON mapping.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"not YAML or JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput("a lambda-ber Dataset must be a mapping (an object) at top level")
    return data


# --- entry level --------------------------------------------------------

def _entry_root_url(entry: Entry, data_url: str) -> str:
    folder = entry.number if entry.number is not None else entry.accession
    return f"{data_url.rstrip('/')}/{folder}"


def _entry_technique(entry: Entry) -> tuple[str, str | None]:
    """(TechniqueEnum, ExperimentalMethodEnum or None) for the entry's runs
    (docs/metadata-export.md). EMPIAR is an electron-microscopy archive, so
    ``electron_microscopy`` is the honest fallback when nothing narrower
    applies (IHM, INSILICO, unknown)."""
    kind = entry.experiment_type or ""
    categories = {codes.code("category", s.category)[0] for s in entry.imagesets}
    if kind in XRAY_TYPES:
        return "xray_tomography", None
    if kind == "MicroED":
        return "electron_microscopy", "electron_diffraction"
    if kind in VOLUME_EM_TYPES:
        return "electron_microscopy", None
    if categories & TOMOGRAPHY:
        return "cryo_et", None
    if kind == "EMDB":
        return "cryo_em", None
    return "electron_microscopy", None


def _description(entry: Entry, data_url: str = DEFAULT) -> str:
    # Named after where the record really came from: a mirror's records
    # point at the mirror, and so must this line.
    if data_url.rstrip("/") == DEFAULT.rstrip("/"):
        source = ENTRY_PAGE.format(accession=entry.accession)
    else:
        source = f"the EMPIAR mirror at {_entry_root_url(entry, data_url)}"
    parts = [f"EMPIAR entry {entry.accession}, exported by empiarfs from {source}."]
    if entry.authors:
        parts.append("Authors: " + ", ".join(a.name for a in entry.authors) + ".")
    for citation in entry.citations[:1]:
        text = _citation_text(citation)
        if text:
            parts.append("Primary citation: " + text)
    if entry.emdb_refs:
        parts.append("Related EMDB entries: " + ", ".join(entry.emdb_refs) + ".")
    if entry.dataset_size:
        parts.append(f"Dataset size: {entry.dataset_size}.")
    parts.append("Keywords of the form 'empiar:<path>=<value>' carry EMPIAR fields "
                 "that lambda-ber-schema has no slot for.")
    return " ".join(parts)


def _citation_text(citation: Citation) -> str:
    bits = [citation.title or ""]
    if citation.journal:
        bits.append(citation.journal + (f" ({citation.year})" if citation.year else ""))
    if citation.doi:
        bits.append(f"doi:{citation.doi}")
    if citation.pubmedid:
        bits.append(f"PMID {citation.pubmedid}")
    return ". ".join(b for b in bits if b)


def _keywords(entry: Entry) -> list[str]:
    words = [entry.accession, *entry.emdb_refs]
    if entry.experiment_type:
        words.append(entry.experiment_type)
    found = [
        tags.make("experiment_type", entry.experiment_type),
        tags.make("scale", entry.scale),
        tags.make("workflow_file", entry.workflow_file),
    ]
    for name, values in (("cross_references", entry.emdb_refs),
                         ("empiar_references", entry.empiar_refs),
                         ("biostudies_references", entry.biostudies_refs),
                         ("idr_references", entry.idr_refs)):
        found += [tags.make(f"{name}[{i}]", v) for i, v in enumerate(values)]
    for i, author in enumerate(entry.authors):
        found += _person_tags(f"authors[{i}]", author, detailed=False)
    if entry.corresponding_author:
        found += _person_tags("corresponding_author", entry.corresponding_author, detailed=True)
    for i, person in enumerate(entry.principal_investigators):
        found += _person_tags(f"principal_investigator[{i}]", person, detailed=True)
    for i, citation in enumerate(entry.citations):
        found += [tags.make(f"citation[{i}].{f}", getattr(citation, f)) for f in _CITATION_FIELDS]
        for j, author in enumerate(citation.authors):
            found += _person_tags(f"citation[{i}].authors[{j}]", author, detailed=False)
    for k, imageset in enumerate(entry.imagesets):
        found += [tags.make(f"imagesets[{k}].{f}", getattr(imageset, f)) for f in _IMAGESET_TAGS]
    # De-duplicate while keeping order: a keyword list is read as a set.
    seen, out = set(), []
    for word in words + [t for t in found if t]:
        if word and word not in seen:
            seen.add(word)
            out.append(word)
    return out


def _person_tags(path: str, person: Author, detailed: bool) -> list:
    out = [tags.make(f"{path}.name", person.name), tags.make(f"{path}.orcid", person.orcid)]
    if detailed:
        out += [tags.make(f"{path}.{f}", getattr(person, f)) for f in _PERSON_FIELDS]
    return out


# --- imageset level -------------------------------------------------------

def _category(imageset: ImageSet) -> str:
    return codes.code("category", imageset.category)[0]


def _run(entry, k, imageset: ImageSet, technique, base, root_url) -> dict:
    kind, method = technique
    category = _category(imageset)
    run: dict = {
        "id": f"{base}#imageset-{k}",
        "title": imageset.name,
    }
    if imageset.details:
        run["description"] = imageset.details
    run["experiment_code"] = f"{entry.accession}/imageset-{k}"
    run["technique"] = kind
    if method:
        run["experimental_method"] = method
    if imageset.directory:
        run["raw_data_location"] = _url(root_url, imageset.directory)
    if imageset.num_images is not None:
        unit = CATEGORY_TYPES.get(category, (None, None, "images"))[2]
        run["number_of_images"] = _quantity(imageset.num_images, unit)
    frames = imageset.frames_per_image
    if frames is not None and (frames != 1 or category in MULTIFRAME):
        run["frames_per_movie"] = _quantity(frames, "frames")
    width, height = imageset.pixel_width, imageset.pixel_height
    if width is not None and (height is None or height == width):
        run["calibrated_pixel_size"] = _quantity(width, "Å")
    if width is not None:
        run["pixel_size_x"] = _quantity(width, "Å")
    if height is not None:
        run["pixel_size_y"] = _quantity(height, "Å")
    return run


def _directory_file(k, imageset: ImageSet, base, root_url) -> dict | None:
    """One DataFile standing for the imageset directory, or None when
    neither the data format nor the file pattern maps to FileFormatEnum
    (``file_format`` is required, and guessing would be wrong)."""
    fmt = FORMAT_FROM_LABEL.get((imageset.data_format or "").upper())
    if fmt is None and imageset.micrographs_file_pattern:
        fmt, _ = _format_of(imageset.micrographs_file_pattern)
    if fmt is None:
        log.debug("imageset %d: data format %r has no FileFormatEnum value; "
                  "no directory DataFile", k, imageset.data_format)
        return None
    category = _category(imageset)
    data_type, role, _ = CATEGORY_TYPES.get(category, ("raw_data", None, None))
    directory = imageset.directory or "."
    record = {
        "id": f"{base}#imageset-{k}-directory",
        "title": imageset.name,
        "description": f"Directory of imageset {k} ({imageset.category or 'uncategorised'}).",
        "file_name": posixpath.basename(directory) or directory,
        "file_path": imageset.directory,
        "file_format": fmt,
        "data_type": data_type,
        "storage_uri": _url(root_url, imageset.directory) + "/",
        "related_entity": f"{base}#imageset-{k}",
    }
    if role:
        record["file_role"] = role
    return record


def _template_image(k, imageset: ImageSet, base) -> dict | None:
    """An ``Image`` standing for every image of the set (base slots only:
    ``Dataset.images`` accepts no subclass slots)."""
    if imageset.image_width is None and imageset.image_height is None:
        return None
    pattern = imageset.micrographs_file_pattern or posixpath.join(imageset.directory or ".", "*")
    image: dict = {
        "id": f"{base}#imageset-{k}-image",
        "title": f"Any image of imageset {k}: {imageset.name}",
        "file_name": pattern,
    }
    if imageset.pixel_width is not None:
        image["pixel_size"] = _quantity(imageset.pixel_width, "Å")
    if imageset.image_width is not None:
        image["dimensions_x"] = _quantity(imageset.image_width, "pixels")
    if imageset.image_height is not None:
        image["dimensions_y"] = _quantity(imageset.image_height, "pixels")
    return image


def _listed_files(entry: Entry, files, base, root_url) -> list[dict]:
    directories = sorted(
        ((s.directory, k, s) for k, s in enumerate(entry.imagesets) if s.directory),
        key=lambda item: -len(item[0]),
    )
    out, seen = [], set()
    for info in sorted(files, key=lambda f: f.path):
        if info.is_dir or info.path in seen:
            continue
        seen.add(info.path)
        fmt, compression = _format_of(info.name or info.path)
        if fmt is None:
            log.debug("%s: no FileFormatEnum value for this extension; skipped", info.path)
            continue
        owner = next(((k, s) for d, k, s in directories
                      if info.path == d or info.path.startswith(d + "/")), None)
        record: dict = {
            "id": f"{base}#file/{quote(info.path, safe='/')}",
            "file_name": info.name or posixpath.basename(info.path),
            "file_path": info.path,
            "file_format": fmt,
        }
        if compression:
            record["description"] = f"{compression}-compressed {fmt} file"
        if info.size_exact:
            record["file_size_bytes"] = _quantity(info.size, "bytes")
        data_type = _file_data_type(fmt, owner)
        if data_type:
            record["data_type"] = data_type
        record["storage_uri"] = info.url or _url(root_url, info.path)
        if owner:
            record["related_entity"] = f"{base}#imageset-{owner[0]}"
        out.append(record)
    return out


def _file_data_type(fmt, owner):
    if owner is not None:
        imageset = owner[1]
        set_fmt = FORMAT_FROM_LABEL.get((imageset.data_format or "").upper())
        if set_fmt == fmt:
            return CATEGORY_TYPES.get(_category(imageset), ("raw_data",))[0]
    if fmt in ("star", "json", "csv", "ascii", "cs"):
        return "metadata"
    return None


def _format_of(name: str):
    """(FileFormatEnum, compression) from a file name or pattern."""
    parts = posixpath.basename(name).lower().split(".")
    if len(parts) < 2:
        return None, None
    ext, compression = parts[-1], None
    if ext in _COMPRESSED and len(parts) > 2:
        compression, ext = _COMPRESSED[ext], parts[-2]
    return FORMAT_FROM_EXTENSION.get(ext), compression


def _quantity(value, unit: str) -> dict:
    return {"numeric_value": float(value), "unit": unit}


def _url(root_url: str, relpath: str) -> str:
    clean = (relpath or "").strip("/")
    return f"{root_url}/{quote(clean, safe='/')}" if clean else root_url
