"""Files that several processes share: written whole or not at all, and locked across processes.

Every state file (learned selection models, verifier audit results, the embedded model) is
written through `atomic_file`, so a reader in another worker or instance sees the old file or
the new one, never half of one. The temporary file sits beside the target (a rename is atomic
only within one file system) under a unique name (`mkstemp`), so two writers, in two processes
or two threads, never write into each other's temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; `FileLock` then always holds
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path to write; on a clean exit it replaces `path`, otherwise it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` (UTF-8) so that readers see the old content or all of the new."""
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


class FileLock:
    """An exclusive advisory lock on a file, held across processes until released.

        with FileLock(path):            # wait for it
        lock = FileLock(path)
        if lock.acquire(blocking=False): ...   # take it only if free; `release()` later

    Closing the descriptor releases the lock, so a process that dies never leaves it held.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self, blocking: bool = True) -> bool:
        if self._handle is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+b")  # noqa: SIM115 - held open for the lock's lifetime
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except OSError:
                handle.close()
                return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
