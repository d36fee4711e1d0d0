"""EMPIAR's code tables: deposition T-codes and the labels the API returns.

Written from EMPIAR's documentation (deposition schema enumerations); the
API and XML headers use the labels, deposition JSON uses the codes.
Pure data and lookups; imports nothing internal.
"""

from __future__ import annotations

CATEGORY = {
    "T1": "micrographs - single frame",
    "T2": "micrographs - multiframe",
    "T3": "micrographs - focal pairs - unprocessed",
    "T4": "micrographs - focal pairs - contrast inverted",
    "T5": "picked particles - single frame - unprocessed",
    "T6": "picked particles - multiframe - unprocessed",
    "T7": "picked particles - single frame - processed",
    "T8": "picked particles - multiframe - processed",
    "T9": "tilt series",
    "T10": "class averages",
    "T11": "stitched maps",
    "T12": "diffraction images",
    "T13": "reconstructed volumes",
    "T14": "subtomograms",
}

HEADER_FORMAT = {
    "T1": "MRC", "T2": "MRCS", "T3": "TIFF", "T4": "IMAGIC", "T5": "DM3",
    "T6": "DM4", "T7": "SPIDER", "T8": "XML", "T9": "EER", "T10": "PNG",
    "T11": "JPEG", "T12": "SMV", "T13": "EM", "T14": "TPX3",
}

DATA_FORMAT = dict(HEADER_FORMAT, T8="BIG DATA VIEWER HDF5")

VOXEL_TYPE = {
    "T1": "UNSIGNED BYTE",
    "T2": "SIGNED BYTE",
    "T3": "UNSIGNED 16 BIT INTEGER",
    "T4": "SIGNED 16 BIT INTEGER",
    "T5": "UNSIGNED 32 BIT INTEGER",
    "T6": "SIGNED 32 BIT INTEGER",
    "T7": "32 BIT FLOAT",
    "T8": "BIT",
    "T9": "4 BIT INTEGER",
}

EXPERIMENT_TYPE = {
    1: "SXT",
    2: "INSILICO",
    3: "EMDB",
    4: "SBF-SEM",
    5: "FIB-SEM",
    6: "IHM",
    7: "CLEM",
    8: "CLXM",
    9: "MicroED",
    11: "ATUM-SEM",
    12: "Hard X-ray/X-ray microCT",
    13: "ssET",
}

SCALE = {1: "molecule", 2: "virus", 3: "cell", 4: "tissue", 5: "organism"}

STATUS = {
    "REL": "released",
    "EMDBPUB": "released with its EMDB entry",
    "HPUB": "on hold until publication",
    "HPRE": "on hold until pre-release",
    "HOLD": "on hold",
    "PROC": "processing",
    "WAIT": "waiting",
    "OBS": "obsolete",
    "WDRN": "withdrawn",
    "UNARCH": "unarchived",
}

TABLES = {
    "category": CATEGORY,
    "header_format": HEADER_FORMAT,
    "data_format": DATA_FORMAT,
    "voxel_type": VOXEL_TYPE,
}


def label(table: str, code: str) -> str | None:
    """The label of ``code`` in ``table`` (``"category"``, ``"data_format"`` ...)."""
    return TABLES[table].get(code)


def code(table: str, label_text: str | None) -> tuple[str, str]:
    """The deposition code of a label: ``("T2", "")``, or ``("OT", text)``
    for a label the table does not know. Matching ignores case and spacing."""
    if label_text is None:
        return ("OT", "")
    wanted = " ".join(str(label_text).split()).lower()
    for key, value in TABLES[table].items():
        if value.lower() == wanted:
            return (key, "")
    return ("OT", str(label_text).strip())


def experiment_type_code(label_text: str | None) -> int | None:
    if label_text is None:
        return None
    wanted = str(label_text).strip().lower()
    for key, value in EXPERIMENT_TYPE.items():
        if value.lower() == wanted:
            return key
    return None


def scale_code(label_text: str | None) -> int | None:
    if label_text is None:
        return None
    wanted = str(label_text).strip().lower()
    for key, value in SCALE.items():
        if value == wanted:
            return key
    return None
