"""Layer 3, the archive as a tree of paths, with no FUSE in sight.

``catalog`` (mount path -> node, lazily from listings and entry records),
``virtual`` (the generated files of an entry, a layer over the remote tree),
``metastore`` (metadata kept across remounts, fetched once, served stale
when the archive is down), ``select`` (glob/regex selection and walks),
``summary`` (README text), and ``filesystem`` (:class:`EmpiarFS`, the one
place where transport, archive client, caches and catalog are assembled,
used alike by the mount, the Python API and the CLI).
"""
