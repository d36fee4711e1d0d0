"""The Python API layer beyond single files: Dask arrays over image sets
(:mod:`.arrays`) and an intake catalog of the archive (:mod:`.intake_catalog`).

Nothing is imported here: dask and intake are optional (``pip install
'empiarfs[dask]'``, ``'empiarfs[intake]'``), and ``import empiarfs`` must
stay light. ``empiarfs.to_dask`` reaches :func:`.arrays.to_dask` lazily.
"""
