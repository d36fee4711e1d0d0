"""EMPIAR's code tables: deposition T-codes and the labels the API returns.

Written from EMPIAR's documentation (deposition schema enumerations); the
API and XML headers use the labels, deposition JSON uses the codes.
Pure data and lookups; imports nothing internal.
"""

from __future__ import annotations

import re

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


# --- Deposition JSON spellings ------------------------------------------
# Deposition JSON writes codes as Python-tuple strings: "('T2', '')" or
# "('OT', 'free text')". The official schema's regexes are loosely anchored
# (``^(A)|B$``), so we parse with our own strict pattern.

_TUPLE_RE = re.compile(r"^\('(T(?:1[0-4]|[1-9])|OT)', '([^'\\]*)'\)$")

RELEASE_DATE = {
    "RE": "release after processing",
    "EP": "release after the related EMDB entry",
    "HP": "hold until the primary citation is published",
    "HO": "hold for one year",
}

# "Other" text in header/data/voxel codes must match this (deposition rule).
OTHER_TEXT_RE = re.compile(r"^[A-Z0-9 ]+$")


def tuple_string(code_value: str, text: str = "") -> str:
    """``("T2", "")`` -> ``"('T2', '')"``; quotes in ``text`` are dropped
    because the deposition format has no escape for them."""
    clean = str(text).replace("'", "").replace("\\", "")
    return f"('{code_value}', '{clean}')"


def parse_tuple_string(value) -> tuple[str, str] | None:
    """``"('T2', '')"`` -> ``("T2", "")``; None if ``value`` is not exactly
    one tuple-string (strict, unlike the deposition schema's regex)."""
    if not isinstance(value, str):
        return None
    match = _TUPLE_RE.match(value.strip())
    return (match.group(1), match.group(2)) if match else None


def deposition_code(table: str, value) -> str | None:
    """Any spelling of an imageset code -> its deposition tuple-string.

    Accepts a tuple-string (``"('T2', '')"``), a bare code (``"T2"``) or an
    API label (``"micrographs - multiframe"``); unknown labels become
    ``('OT', label)``. None for empty input.
    """
    if value is None or not str(value).strip():
        return None
    parsed = parse_tuple_string(value)
    if parsed:
        return tuple_string(*parsed)
    text = str(value).strip()
    if text.upper() in TABLES[table]:
        return tuple_string(text.upper())
    key, other = code(table, text)
    if key == "OT" and table != "category":
        other = other.upper()   # header/data/voxel "other" text is capitals only
    return tuple_string(key, other)


def deposition_label(table: str, value) -> str | None:
    """The API label of a deposition tuple-string (``"('T2', '')"`` ->
    ``"micrographs - multiframe"``; ``"('OT', 'x')"`` -> ``"x"``)."""
    parsed = parse_tuple_string(value)
    if parsed is None:
        return None
    key, text = parsed
    return text if key == "OT" else label(table, key)


# ISO 3166-1 alpha-2 codes (deposition wants these for countries), and the
# English short names the API and XML headers print for common ones.
ISO_COUNTRIES = frozenset("""
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL
BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV
CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD
GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM
IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK
LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW
MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR
PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS
ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY
UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
""".split())

COUNTRY_NAMES = {
    "argentina": "AR", "australia": "AU", "austria": "AT", "belgium": "BE",
    "brazil": "BR", "canada": "CA", "chile": "CL", "china": "CN",
    "czech republic": "CZ", "czechia": "CZ", "denmark": "DK", "estonia": "EE",
    "finland": "FI", "france": "FR", "germany": "DE", "greece": "GR",
    "hong kong": "HK", "hungary": "HU", "india": "IN", "ireland": "IE",
    "israel": "IL", "italy": "IT", "japan": "JP", "korea, republic of": "KR",
    "south korea": "KR", "republic of korea": "KR", "lithuania": "LT",
    "luxembourg": "LU", "mexico": "MX", "netherlands": "NL",
    "the netherlands": "NL", "new zealand": "NZ", "norway": "NO",
    "poland": "PL", "portugal": "PT", "russia": "RU",
    "russian federation": "RU", "saudi arabia": "SA", "singapore": "SG",
    "slovakia": "SK", "slovenia": "SI", "south africa": "ZA", "spain": "ES",
    "sweden": "SE", "switzerland": "CH", "taiwan": "TW", "turkey": "TR",
    "ukraine": "UA", "united kingdom": "GB", "uk": "GB", "great britain": "GB",
    "united states": "US", "united states of america": "US", "usa": "US",
}


def country_code(value) -> str | None:
    """``"United Kingdom"`` or ``"gb"`` -> ``"GB"``; None when unknown."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    if text.upper() in ISO_COUNTRIES:
        return text.upper()
    return COUNTRY_NAMES.get(text.lower())
