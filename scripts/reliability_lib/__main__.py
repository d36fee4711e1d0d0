"""``python -m reliability_lib [--minutes M] [--kind-seconds S] [--files N] [--readers R] [--out PATH]``."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time

from empiarfs.archive_server import ArchiveServer
from empiarfs.archive_server.sample import make_sample

from . import hostile, load, report

log = logging.getLogger("soak")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/soak", description="Load with faults through real mounts, then hostile inputs; "
        "writes docs/reliability.md from that run.")
    parser.add_argument("--minutes", type=float, default=4.0,
                        help="length of the load: the mixed phase plus one phase per fault kind "
                             "(default 4; --minutes 1 is a one-minute check)")
    parser.add_argument("--kind-seconds", type=float, default=None,
                        help="seconds of load per fault kind (default: half of --minutes shared "
                             f"among the {len(load.KINDS)} kinds, at least 3 s each)")
    parser.add_argument("--kinds", default=None,
                        help="only these fault kinds, comma-separated (default: all: "
                             + ", ".join(load.KINDS) + ")")
    parser.add_argument("--files", type=int, default=1000, help="small files in the sample")
    parser.add_argument("--readers", type=int, default=64)
    parser.add_argument("--no-hostile", action="store_true", help="skip the hostile inputs")
    parser.add_argument("--out", default="docs/reliability.md")
    args = parser.parse_args(argv)
    only = None
    if args.kinds:
        only = {k.strip() for k in args.kinds.split(",") if k.strip()}
        unknown = only - set(load.KINDS)
        if unknown:
            parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    if args.minutes <= 0 or (args.kind_seconds is not None and args.kind_seconds <= 0):
        parser.error("--minutes and --kind-seconds must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = tempfile.mkdtemp(prefix="empiarfs-soak-")
    os.chmod(work, 0o755)
    began = time.time()
    try:
        root = os.path.join(work, "sample")
        manifest = make_sample(root, seed=0, many_files=args.files)
        with ArchiveServer(root, ftp=True) as server:
            figures = load.run(server, root, manifest, work, minutes=args.minutes, readers=args.readers,
                               kind_seconds=args.kind_seconds, only=only)
            table = None
            if not args.no_hostile:
                log.info("hostile inputs")
                table = hostile.run(server, work)
        text = report.render(figures, table, minutes=args.minutes, files=args.files,
                             readers=args.readers, took=time.time() - began)
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
        log.info("wrote %s", args.out)
        return 0 if report.passed(figures, table) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
