#!/usr/bin/env python3
"""Fetch the built-in verifier-audit pairs once (needs network): `rvr-proxy fetch-audit-data`.

Downloads the pinned `multibbq` and `evals` wheels with pip (hash-checked, no dependencies),
keeps only their data and licence files in `<rvr-proxy cache>/audit-data` (or --dir) and checks
each file's sha256; `rvr-proxy audit` then runs offline. scripts/setup-test-env.sh runs this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.audit.command import fetch_command  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where to keep the files (default: <rvr-proxy cache>/audit-data)")
    sys.exit(fetch_command(parser.parse_args().dir))
