"""Layer 4, the Python API: typed lazy loading (``api``), the ``empiar://``
fsspec protocol (``protocol``), frame datasets (``dataset``), Dask arrays
over image sets (``arrays``, ``workerfs``) and an intake catalog of the
archive (``intake_catalog``).

Nothing is imported here: dask and intake are optional (``pip install
'empiarfs[dask]'``, ``'empiarfs[intake]'``), and ``import empiarfs`` must
stay light. ``empiarfs.to_dask`` reaches :func:`.arrays.to_dask` lazily.
"""
