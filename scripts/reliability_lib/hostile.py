"""Every hostile input of tests/test_hostile_input.py, one mount each,
recording what the mount did with it (the table of docs/reliability.md)."""

from __future__ import annotations

import errno
import os
import re
import types
from pathlib import Path

from support.archive import settings_for
from support.faultproxy import FaultProxy, Rule, check_read, read_in_thread
from support.mounting import mounted
from test_hostile_input import BAD_ENTRIES, DATA, GOOD, HOSTILE_HREFS, hostile_listing

_UNSAFE_RE = re.compile(r"skipping unsafe listing entry .*?: (.+)$", re.M)


def _via(proxy):
    return types.SimpleNamespace(api_url=proxy.url + "/empiar/api",
                                 data_url=proxy.url + "/empiar/world_availability", ftp_url="")


def _case(server, work, name, rule, probe) -> dict:
    tmp = Path(work) / f"hostile-{abs(hash(name))}"
    tmp.mkdir()
    with FaultProxy(server.url) as proxy:
        proxy.add(rule)
        settings = settings_for(_via(proxy), tmp, deadline=5.0)
        try:
            with mounted(settings, tmp / "mnt", allow_errors=True) as mnt:
                verdict, escaped = probe(mnt)
                alive = os.path.isdir(os.path.join(mnt, "EMPIAR-11419"))
        except BaseException as exc:  # a mount failure is a result too
            verdict, escaped, alive = f"mount failed: {exc}"[:120], False, False
    text = (tmp / "mnt.log").read_text(errors="replace")
    reason = _UNSAFE_RE.search(text)
    return {"input": name, "verdict": verdict, "reason": reason.group(1).strip() if reason else "",
            "escaped": escaped, "survived": alive and "Traceback" not in text}


def run(server, work) -> list[dict]:
    rows = []
    data_rel = os.path.join("EMPIAR-10002", "data")
    for label, href in HOSTILE_HREFS:
        def probe(mnt):
            names = os.listdir(os.path.join(mnt, data_rel))
            bad = [n for n in names if n != GOOD]
            return ("refused" if not bad else f"listed as {bad!r}"[:80]), bool(bad)
        rule = Rule("canned", path=DATA + "$", method="GET", body=hostile_listing([href, GOOD]),
                    headers=(("Content-Type", "text/html"),))
        rows.append(_case(server, work, f"listing entry: {label}", rule, probe))

    def big(mnt):
        n = len(read_in_thread(os.listdir, os.path.join(mnt, data_rel), limit=60))
        return f"listed {n} rows", False
    rule = Rule("canned", path=DATA + "$", method="GET",
                body=hostile_listing([f"F_{i:07d}.tif" for i in range(100_000)]),
                headers=(("Content-Type", "text/html"),))
    rows.append(_case(server, work, "listing with 100,000 rows", rule, big))

    for label, body in sorted(BAD_ENTRIES.items()):
        def probe(mnt):
            entry = os.path.join(mnt, "EMPIAR-10002")
            try:
                os.listdir(entry)
                with open(os.path.join(entry, "entry.json"), "rb") as fh:
                    fh.read()
                return "entry.json served", False
            except OSError as exc:
                return errno.errorcode.get(exc.errno, str(exc.errno)), False
        rule = Rule("canned", path=r"/empiar/api/entry/EMPIAR-10002/?$", body=body,
                    headers=(("Content-Type", "application/json"),))
        rows.append(_case(server, work, f"entry JSON: {label}", rule, probe))

    truth = (Path(server.data_root) / "10002" / "data" / GOOD).read_bytes()

    def redirect(mnt):
        out = read_in_thread(check_read, os.path.join(mnt, data_rel, GOOD), truth, limit=30)
        return ("read whole" if out.ok else errno.errorcode.get(out.errno, "?")), out.wrong_bytes > 0
    rule = Rule("canned", path=DATA + GOOD + "$", method="GET", status=302,
                headers=(("Location", f"http://evil.example:{server.port}{DATA}{GOOD}"),))
    rows.append(_case(server, work, "redirect to another host", rule, redirect))
    rule = Rule("extra_bytes", path=re.escape(GOOD) + "$", method="GET", count=3)
    rows.append(_case(server, work, "body larger than declared (kept alive)", rule, redirect))
    return rows
