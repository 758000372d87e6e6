"""File helpers: atomic file replacement (``<name>.part`` renamed over the target only when
complete, so a crash leaves either the old file or no file, never half of one), a full disk
reported with the file's name, deterministic UUIDs. TIFF reading and writing is the TIFF
layer's (:mod:`cyclesr_deploy.runtime.tiff`); whole images: :mod:`cyclesr_deploy.images`.
"""

from __future__ import annotations

import contextlib
import errno
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

PART_SUFFIX = ".part"  # an output being written: renamed onto the target when complete


def part_path(target: Path) -> Path:
    """Where ``target`` is written before it is complete (``<name>.part`` beside it)."""
    return Path(target).with_name(Path(target).name + PART_SUFFIX)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary ``.part`` path beside ``target``; rename it onto ``target`` on success.

    On any exception the partial file is removed and the target is left untouched.
    ``os.replace`` is atomic on POSIX and on Windows (same volume).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(target)
    try:
        yield part
        part.replace(target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        full = disk_full(exc, target) if isinstance(exc, OSError) else exc
        if full is exc:
            raise
        raise full from exc


def disk_full(exc: OSError, target: Path) -> OSError:
    """``exc`` as an ENOSPC error that says "no space left on device" and names ``target``
    when it is one (errno ENOSPC/EDQUOT, or numpy's and tifffile's short-write message
    "N requested and M written"); else ``exc`` itself."""
    short_write = re.search(r"\d+ requested and \d+ written", str(exc)) is not None
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)) or short_write:
        return OSError(
            errno.ENOSPC, f"no space left on device (or quota exceeded) writing {target}"
        )
    return exc


def deterministic_uuid(*parts: object) -> str:
    """A UUID derived from ``parts`` (uuid5), so that seeded outputs are byte-identical."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "cyclesr-deploy:" + "/".join(map(str, parts))))
