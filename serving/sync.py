"""Keep a folder in step with a model's version folders in S3, for a server that reads
only local files (TF Serving 2.7 and later read no ``s3://`` paths).

    python -m gpulab.serving.sync s3://BUCKET/PREFIX FOLDER [--interval 1]

Every version under the prefix is copied to ``FOLDER/<version>`` whole: into a hidden
folder first, renamed into place once complete, so a server never sees half a version;
a version whose objects changed is copied again; one removed from the bucket is removed.
Credentials and endpoint come from the environment (the user's ``AWS_*`` variables).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from .servables import S3Source

log = logging.getLogger("gpulab.serving.sync")


def sync_once(source: S3Source, copied: dict[int, float]) -> dict[int, float]:
    """Copy new and changed versions, drop removed ones; the stamps now copied."""
    found = source.versions()
    for version, stamp in sorted(found.items()):
        if copied.get(version) != stamp:
            log.info("Copying version %d", version)
            source.local_path(version)
            copied[version] = stamp
    for version in sorted(set(copied) - set(found)):
        log.info("Version %d left the bucket: removing it", version)
        source.forget(version)
        copied.pop(version)
    return copied


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    p = argparse.ArgumentParser(prog="python -m gpulab.serving.sync", description=__doc__)
    p.add_argument("source", help="s3://BUCKET/PREFIX holding numbered version folders")
    p.add_argument("folder", help="where the versions go")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between looks")
    args = p.parse_args(argv)
    if not args.source.startswith("s3://"):
        p.error(f"not an s3:// URL: {args.source}")
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = S3Source(args.source, str(folder))
    copied = {int(d.name): 0.0 for d in folder.iterdir() if d.name.isdigit()}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while True:
        try:
            copied = sync_once(source, copied)
        except Exception as e:  # noqa: BLE001 -- an unreachable store: try again
            log.warning("Cannot sync %s: %s", args.source, e)
        if stop.wait(args.interval):
            return 0


if __name__ == "__main__":
    sys.exit(main())
