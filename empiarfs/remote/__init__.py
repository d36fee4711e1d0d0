"""Layer 1, the archive over the network: everything that crosses a socket.

``transport`` (one pooled HTTP(S) session: timeouts, retry policy, hedging,
the watchdog, and the rule that a reply counts only when it is whole),
``site_route`` (requests to a site cache, failing over to the origin),
``archive`` (the EMPIAR client: entry records, listings, exact sizes),
``listing`` (autoindex pages), ``ftp`` (exact sizes by MLSD), ``metadata``
(tolerant parsing of API records), ``accession`` and ``codes`` (EMPIAR's
names and code tables). Imports only the leaves (errors, config, model,
paths); the facts it relies on are in docs/empiar.md.
"""
