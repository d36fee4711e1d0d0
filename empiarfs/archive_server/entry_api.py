"""The EMPIAR REST API over the JSON files in ``root/api``.

``GET entry/{id}[/]`` (id = ``10002``, ``EMPIAR-10002``, ``empiar-10002``)
answers the stored wrapped record byte for byte; ``POST entry/...`` with a
body like ``10050,10054,10060-10072`` (raw text or a JSON string) answers all
existing ones keyed by accession; ``GET emdb_ref/EMD-N[/]`` answers the
entries whose cross references name that map; ``GET latest_citations[/]``
answers a list of ``{pmid, pub_year, author_string, title}``. Unknown ids
answer 404 ``{"detail": "Not found."}`` as Django REST framework does.
"""

from __future__ import annotations

import json
import os
import re

_ID_RE = re.compile(r"^(?:empiar-)?0*(\d{1,7})$", re.IGNORECASE)
_EMD_RE = re.compile(r"^(?:emd-?)?(\d{4,})$", re.IGNORECASE)
_RANGE_RE = re.compile(r"^(?:empiar-)?(\d+)\s*-\s*(?:empiar-)?(\d+)$", re.IGNORECASE)
MAX_BATCH = 5000
NOT_FOUND = b'{"detail":"Not found."}'

Response = tuple  # (status, content_type, body bytes)


def _json(status: int, obj) -> Response:
    return status, "application/json", json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class Api:
    """Answers API requests from ``root/api/*.json`` (read on each request,
    so tests may edit them while the server runs)."""

    def __init__(self, root: str):
        self.dir = os.path.join(root, "api")

    def _load(self, number: int) -> bytes | None:
        try:
            with open(os.path.join(self.dir, f"EMPIAR-{number}.json"), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def _numbers(self) -> list[int]:
        out = []
        for name in os.listdir(self.dir):
            m = re.match(r"^EMPIAR-(\d+)\.json$", name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def handle(self, method: str, rest: str, body: bytes) -> Response:
        """Answer ``method`` on ``/empiar/api/<rest>``."""
        parts = [p for p in rest.split("/") if p]
        if not parts:
            return _json(404, {"detail": "Not found."})
        head, args = parts[0], parts[1:]
        if head == "entry":
            if method == "POST":
                return self._batch(body)
            if len(args) == 1:
                m = _ID_RE.match(args[0])
                data = self._load(int(m.group(1))) if m else None
                if data is not None:
                    return 200, "application/json", data
            return 404, "application/json", NOT_FOUND
        if head == "emdb_ref" and len(args) == 1 and method in ("GET", "HEAD"):
            return self._emdb(args[0])
        if head == "latest_citations" and not args and method in ("GET", "HEAD"):
            path = os.path.join(self.dir, "latest_citations.json")
            if os.path.exists(path):
                with open(path, "rb") as fh:
                    return 200, "application/json", fh.read()
            return _json(200, [])
        return 404, "application/json", NOT_FOUND

    def _batch(self, body: bytes) -> Response:
        text = body.decode("utf-8", "replace").strip()
        try:
            decoded = json.loads(text)
            if isinstance(decoded, str):
                text = decoded
            elif isinstance(decoded, list):
                text = ",".join(str(x) for x in decoded)
            elif isinstance(decoded, int):
                text = str(decoded)
        except ValueError:
            pass  # raw text body, the common case
        numbers: list[int] = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            rng = _RANGE_RE.match(part)
            single = _ID_RE.match(part)
            if rng:
                low, high = int(rng.group(1)), int(rng.group(2))
                if high < low or high - low >= MAX_BATCH:
                    return _json(400, {"detail": f"Invalid range: {part}"})
                numbers.extend(range(low, high + 1))
            elif single:
                numbers.append(int(single.group(1)))
            else:
                return _json(400, {"detail": f"Invalid accession: {part}"})
            if len(numbers) > MAX_BATCH:
                return _json(400, {"detail": "Too many accessions"})
        existing = set(self._numbers())
        out = {}
        for n in sorted(set(numbers) & existing):
            out.update(json.loads(self._load(n)))
        return _json(200, out)

    def _emdb(self, emd: str) -> Response:
        m = _EMD_RE.match(emd)
        if not m:
            return 404, "application/json", NOT_FOUND
        wanted = f"EMD-{m.group(1)}"
        out = {}
        for n in self._numbers():
            wrapped = json.loads(self._load(n))
            for acc, rec in wrapped.items():
                refs = rec.get("cross_references") or []
                names = {r.get("name") if isinstance(r, dict) else r for r in refs}
                if wanted in names and rec.get("status") != "OBS":
                    out[acc] = rec
        if not out:
            return 404, "application/json", NOT_FOUND
        return _json(200, out)
