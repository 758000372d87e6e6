"""Integrity of a model folder's artifacts: sha256 against ``export.json``, digests cached.

``export.json`` (written by ``cyclesr export``) records each artifact's size and sha256.
Before an engine opens an artifact (every ONNX graph it may run, the torch weights, a TensorRT
engine's source ONNX; the engine bytes themselves are checked against their sidecar) it calls
:meth:`cyclesr_deploy.model.ModelFolder.verify`, which lands here:

* recorded and equal: the file is used;
* recorded and different (replaced by another network, modified, truncated): InputError naming
  the file and the command that re-exports it;
* not recorded (no ``export.json``, or the file absent from it: a hand-made folder): one
  warning per folder and process, then the file is used.

Hashing a large file on every run would cost more than loading it, so digests are cached by
(size, mtime_ns): in memory for the process, and persistently in ``.cyclesr-digests.json`` in
the model folder when it is writable, else in the user cache folder
(``cyclesr-deploy/digests``). The cache is written atomically; a cache that cannot be read or
written never fails a run (it is only slower). Torch-free and onnx-free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyclesr_deploy.errors import InputError

if TYPE_CHECKING:
    from cyclesr_deploy.model import ModelFolder

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_WARNED: set[Path] = set()  # folders already warned about (once per process)
_MEMORY: dict[Path, tuple[int, int, str]] = {}  # resolved file -> (size, mtime_ns, sha256)


def file_digest(path: str | Path, chunk: int = 1 << 20) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def user_cache_dir(
    *, platform: str | None = None, env: Mapping[str, str] | None = None, home: Path | None = None
) -> Path:
    """Per-user cache folder of this package: ``%LOCALAPPDATA%/cyclesr-deploy`` on Windows
    (``~/AppData/Local`` if unset), ``$XDG_CACHE_HOME/cyclesr-deploy`` or
    ``~/.cache/cyclesr-deploy`` elsewhere. The arguments exist for tests; by default they are
    ``sys.platform``, ``os.environ`` and ``Path.home()``."""
    platform = sys.platform if platform is None else platform
    env = os.environ if env is None else env
    home = Path.home() if home is None else Path(home)
    if platform.startswith("win"):
        base = Path(env["LOCALAPPDATA"]) if env.get("LOCALAPPDATA") else home / "AppData" / "Local"
    else:
        base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else home / ".cache"
    return base / "cyclesr-deploy"


def _records(folder: ModelFolder) -> dict[str, str] | None:
    """{path relative to the folder (POSIX): sha256} from ``export.json``; None without one.
    An unreadable export.json is an InputError (the folder's records cannot be trusted)."""
    path = folder.export_json
    if not path.is_file():
        return None
    try:
        artifacts = json.loads(path.read_text(encoding="utf-8"))["artifacts"]
        return {str(a["path"]): str(a["sha256"]).lower() for a in artifacts.values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            f"{path} is unreadable ({exc}); re-export the model "
            f"({folder.reexport_command(folder.model_json.name)})"
        ) from exc


class DigestCache:
    """sha256 of a folder's files by (size, mtime_ns), kept in a small JSON file."""

    def __init__(self, folder: Path, own: Path) -> None:
        """``folder``: the model folder; ``own``: the cache file inside it (used when
        writable, else one in :func:`user_cache_dir`)."""
        self.folder = folder
        self.path = self._location(own)
        self.entries: dict[str, Any] = self._read()
        self.dirty = False

    def _location(self, own: Path) -> Path:
        if os.access(self.folder, os.W_OK) and (not own.exists() or os.access(own, os.W_OK)):
            return own
        return self._user_location()

    def _user_location(self) -> Path:
        key = hashlib.sha256(str(self.folder.resolve()).encode("utf-8")).hexdigest()[:20]
        return user_cache_dir() / "digests" / f"{key}.json"

    def _read(self) -> dict[str, Any]:
        """Entries of the cache file, and of the user cache's when :meth:`save` had to fall
        back to it (entries are checked by size and mtime_ns before use)."""
        entries: dict[str, Any] = {}
        for path in dict.fromkeys([self._user_location(), self.path]):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            entries.update(data if isinstance(data, dict) else {})
        return entries

    def digest(self, path: Path) -> str:
        """sha256 of ``path`` (inside the folder), from the cache when its size and mtime_ns
        are unchanged, else hashed and cached."""
        st = path.stat()
        resolved = path.resolve()
        known = _MEMORY.get(resolved)
        if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
            return known[2]
        rel = path.relative_to(self.folder).as_posix()
        entry = self.entries.get(rel)
        if (
            isinstance(entry, dict)
            and entry.get("size") == st.st_size
            and entry.get("mtime_ns") == st.st_mtime_ns
            and isinstance(entry.get("sha256"), str)
        ):
            sha = entry["sha256"]
        else:
            size, sha = file_digest(path)
            if size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns:  # not changing
                self.entries[rel] = {"size": size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
                self.dirty = True
        _MEMORY[resolved] = (st.st_size, st.st_mtime_ns, sha)
        return sha

    def save(self) -> None:
        """Write the cache atomically when it changed: in the model folder, else (read-only
        media, where ``os.access`` could not tell) in the user cache folder; failures are
        logged, never raised."""
        if not self.dirty:
            return
        from cyclesr_deploy.io import atomic_path

        text = json.dumps(self.entries, indent=1, sort_keys=True) + "\n"
        for path in dict.fromkeys([self.path, self._user_location()]):
            try:
                with atomic_path(path) as part:
                    part.write_text(text, encoding="utf-8")
            except Exception as exc:  # read-only, a race with another run: only slower
                log.debug("digest cache %s not written (%s)", path, exc)
            else:
                self.dirty = False
                return


def cached_digest(folder: ModelFolder, path: Path) -> str:
    """sha256 of ``path`` inside ``folder``, through the digest cache (hashed once per change)."""
    with _LOCK:
        cache = DigestCache(folder.path, folder.digest_cache)
        try:
            return cache.digest(path)
        finally:
            cache.save()


def verify_artifacts(folder: ModelFolder, files: Iterable[str | Path]) -> None:
    """Check ``files`` of model folder ``folder`` against ``export.json`` (see the module
    docstring): InputError for a file whose sha256 differs from its record; one warning per
    folder and process for files without a record."""
    root = folder.path
    files = [Path(f) for f in files]
    with _LOCK:
        records = _records(folder)
        unrecorded: list[str] = []
        cache: DigestCache | None = None
        try:
            for path in files:
                try:
                    rel = path.resolve().relative_to(root.resolve()).as_posix()
                except ValueError:
                    rel = path.name
                if records is None or rel not in records:
                    unrecorded.append(rel)
                    continue
                if not path.is_file():
                    continue  # the engine reports a missing file itself
                cache = cache or DigestCache(root, folder.digest_cache)
                if cache.digest(path) != records[rel]:
                    raise InputError(
                        f"{path}: its sha256 differs from the one export.json records: the file "
                        "was replaced or modified after export (another network?); refusing "
                        f"to run it. Re-export it with: {folder.reexport_command(path.name)}"
                    )
        finally:
            if cache is not None:
                cache.save()
        key = root.resolve()
        if unrecorded and key not in _WARNED:
            _WARNED.add(key)
            why = "there is no export.json" if records is None else "export.json has no record"
            log.warning(
                "%s: integrity of %s not checked: %s (a hand-made folder? "
                "`cyclesr export onnx %s --overwrite` records the exported files)",
                root,
                ", ".join(unrecorded),
                why,
                root,
            )
