"""EMPIAR as an intake catalog, for intake's reader API (intake 2.x).

intake 2 finds data types and readers as subclasses of its ``BaseData`` and
``BaseReader``; the ``intake.imports`` entry point in setup.cfg makes
``import intake`` import this module, so the types below are known to
``intake.recommend`` and ``.to_reader(...)`` without an explicit import.

Three levels, each a reader whose ``read()`` gives the next::

    cat = EMPIARArchiveReader(options={...}).read()   # Catalog: one entry per accession
    entry = cat["EMPIAR-10002"].read()                 # Catalog: one entry per image set
    movies = entry["Movie stacks of 80S ribosomes"].read()           # dask.array
    first = entry["Movie stacks of 80S ribosomes"].to_reader("numpy").read(frames=slice(0, 4))

``options`` are empiarfs setting names (``api_url``, ``data_url``,
``cache_dir``...), as for the ``empiar://`` fsspec protocol; they are
plain values, so a catalog saved with ``Catalog.to_yaml_file`` opens again
in another process. Image sets are read by :mod:`.arrays` (frames from
headers, one Dask chunk per frame).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from intake.readers import datatypes
from intake.readers.entry import Catalog
from intake.readers.readers import BaseReader

from empiarfs.pyapi import workerfs

_ACCESSION = re.compile(r"^EMPIAR-\d+$")
_SCHEME = "empiar://"


# ------------------------------------------------------------------ data types

class EMPIARArchive(datatypes.CatalogAPI):
    """The EMPIAR archive (or a mirror, by ``options``): a catalog of entries.

    Parameters
    ----------
    url : str
        ``"empiar://"``.
    options : dict, optional
        empiarfs settings (``api_url``, ``data_url``, ``cache_dir``...);
        default: the config file and ``EMPIARFS_*`` environment.
    """

    filepattern = r"^empiar:/*$"

    def __init__(self, url: str = _SCHEME, options: Optional[dict] = None,
                 metadata: Optional[dict] = None):
        super().__init__(url, options=options, metadata=metadata)


class EMPIAREntry(datatypes.CatalogAPI):
    """One EMPIAR entry, ``empiar://EMPIAR-N``: a catalog of its image sets."""

    filepattern = r"^empiar://(empiar-)?\d+/?$"

    def __init__(self, url: str, options: Optional[dict] = None,
                 metadata: Optional[dict] = None):
        super().__init__(url, options=options, metadata=metadata)

    @property
    def accession(self) -> str:
        from empiarfs.remote.accession import normalize

        return normalize(self.url[len(_SCHEME):].strip("/") if self.url.startswith(_SCHEME)
                         else self.url)


class EMPIARImageSet(datatypes.FileData):
    """An image set of an entry: frames of its MRC/TIFF files.

    Parameters
    ----------
    url : str
        The entry, ``empiar://EMPIAR-N``.
    imageset : str or int
        The image set's name (or index in the entry's image sets).
    storage_options : dict, optional
        empiarfs settings, as ``options`` of :class:`EMPIARArchive`.
    pattern : str, optional
        Glob selecting the image set's files (see :func:`~.arrays.to_dask`).
    """

    structure = {"array"}

    def __init__(self, url: str, imageset=0, storage_options: Optional[dict] = None,
                 pattern: Optional[str] = None, metadata: Optional[dict] = None):
        self.imageset = imageset
        self.pattern = pattern
        super().__init__(url, storage_options=storage_options, metadata=metadata)


# --------------------------------------------------------------------- readers

class EMPIARArchiveReader(BaseReader):
    """A Catalog with one entry per accession of the archive (names only:
    each entry's metadata is fetched when that entry is read)."""

    implements = {EMPIARArchive}
    output_instance = "intake.readers.entry:Catalog"

    def _read(self, data=None, accessions=None):
        """
        Parameters
        ----------
        data : EMPIARArchive, optional
            Default: ``EMPIARArchive()`` (settings from the config file and
            environment).
        accessions : list of str or int, optional
            Only these entries (default: every directory of the data tree).

        Raises
        ------
        InvalidInput
            Malformed options or accessions.
        RemoteError
            The archive could not be listed.
        """
        from empiarfs.remote.accession import normalize

        data = data if data is not None else EMPIARArchive()
        fs = workerfs.fs_for(workerfs.settings_from_options(data.options))
        settings = fs.settings
        if accessions is None:
            names = [n.name for n in fs.listdir("") if _ACCESSION.match(n.name)]
        else:
            names = [normalize(a) for a in accessions]
        cat = Catalog(metadata={"description": "EMPIAR entries", "api_url": settings.api_url,
                                "data_url": settings.data_url})
        for acc in names:
            _add(cat, acc, EMPIAREntryReader(data=EMPIAREntry(_SCHEME + acc, options=data.options),
                                             metadata={"accession": acc}))
        return cat


class EMPIAREntryReader(BaseReader):
    """A Catalog of one entry's image sets; its metadata is the entry's
    (title, authors, DOI, cross references...)."""

    implements = {EMPIAREntry}
    output_instance = "intake.readers.entry:Catalog"

    def _read(self, data):
        """
        Raises
        ------
        InvalidInput
            Not an accession, or malformed options.
        NotFound
            No such entry.
        RemoteError
            The archive could not be reached.
        """
        from empiarfs.pyapi import api

        fs = workerfs.fs_for(workerfs.settings_from_options(data.options))
        entry = api.entry(data.accession, fs=fs).model
        cat = Catalog(metadata=_plain(entry, skip=("imagesets",)))
        names = [s.name for s in entry.imagesets]
        for index, imageset in enumerate(entry.imagesets):
            # A name shared by two image sets selects the first: use the index.
            which = imageset.name if names.count(imageset.name) == 1 else index
            key = imageset.name if which == imageset.name else f"{imageset.name} ({index})"
            source = EMPIARImageSet(_SCHEME + entry.accession, which,
                                    storage_options=data.options,
                                    metadata=dict(_plain(imageset), accession=entry.accession))
            _add(cat, key, EMPIARImageSetDask(data=source))
        return cat


class EMPIARImageSetDask(BaseReader):
    """An image set as a lazy ``dask.array`` (one chunk per frame)."""

    implements = {EMPIARImageSet}
    imports = {"dask"}
    output_instance = "dask.array:Array"

    def _read(self, data, frames_per_chunk=1):
        """
        Parameters
        ----------
        frames_per_chunk : int or "file"
            As for :func:`empiarfs.to_dask`.

        Raises
        ------
        As :func:`empiarfs.to_dask`.
        """
        from empiarfs.pyapi.arrays import to_dask

        return to_dask(data.url, data.imageset, pattern=data.pattern,
                       frames_per_chunk=frames_per_chunk,
                       settings=workerfs.settings_from_options(data.storage_options))


class EMPIARImageSetNumpy(BaseReader):
    """An image set (or some of its frames) as a numpy array, without dask."""

    implements = {EMPIARImageSet}
    imports = {"numpy"}
    output_instance = "numpy:ndarray"

    def _read(self, data, frames=None):
        """
        Parameters
        ----------
        frames : int, slice or list of int, optional
            Frames of the image set (numbered across its files); all if
            ``None``. Only these frames are read.

        Raises
        ------
        As :func:`empiarfs.to_dask`, and ``IndexError`` for a frame out of range.
        """
        from empiarfs.pyapi.arrays import frame_stack

        stack = frame_stack(data.url, data.imageset, pattern=data.pattern,
                            settings=workerfs.settings_from_options(data.storage_options))
        return stack[slice(None) if frames is None else frames]


def catalog(settings=None, accessions=None) -> Catalog:
    """The archive as an intake Catalog: ``EMPIARArchiveReader(...).read()``.

    Parameters
    ----------
    settings : Settings, optional
        Stored in the catalog as options (the fields that differ from
        :meth:`Settings.load`); default: the config file and environment.
    accessions : list, optional
        Only these entries.

    Raises
    ------
    As :class:`EMPIARArchiveReader`.
    """
    options = workerfs.options_from_settings(settings) if settings is not None else None
    return EMPIARArchiveReader(data=EMPIARArchive(options=options or None)).read(
        accessions=accessions)


def _add(cat: Catalog, name: str, reader: BaseReader) -> None:
    """Add ``reader`` to ``cat`` as ``name``, listed by ``list(cat)``.

    ``cat[name] = reader`` stores it under the key ``name`` but adds no
    alias when the key is the name, and a Catalog lists its aliases only.
    """
    cat[name] = reader
    cat.aliases[name] = name


def _plain(record, skip=()) -> dict:
    """A dataclass record as YAML-safe values (tuples as lists, nested
    records as dicts), for catalog metadata."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)

    return {f.name: plain(getattr(record, f.name)) for f in dataclasses.fields(record)
            if f.name not in skip}
