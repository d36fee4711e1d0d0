"""Metadata out: lambda-ber-schema records and EMPIAR deposition JSON.

Imports only :mod:`empiarfs.model`, :mod:`empiarfs.remote.codes`,
:mod:`empiarfs.config` (a default URL) and :mod:`empiarfs.errors`.
"""
