"""Layer 5, features built on the layers below: resumable downloads
(``download``), the entry search index (``search``), pictures of the data
(``preview``) and the nginx site-cache configuration (``site_cache``).
"""
