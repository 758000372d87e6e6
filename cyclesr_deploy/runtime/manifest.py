"""The output folder's bookkeeping: ``cyclesr-manifest.json`` and the lock that gives one run
the folder at a time.

:class:`Manifest` records every input of a run (one entry per input, keyed by its absolute
path: status, output, frames, seconds, error, input size and mtime), saved atomically; ``enhance``
records a :class:`FileResult` per file and saves after each, ``watch`` updates entries with extra
keys and saves at most every ``interval`` seconds unless forced.

:class:`OutputLock` makes a second run into the same folder refuse at once, naming the holder:
without it two runs would share ``<name>.part`` files and the manifest, and an output could hold
the pages of both. The lock is an OS-level file lock (``filelock``: ``flock`` on POSIX,
``msvcrt.locking`` on Windows), so the OS releases it when its process dies: a lock left by a
killed run is recovered by the next one without any guessing. The holder's description (command,
pid, host, since) is a small JSON file beside it, written after acquiring.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from cyclesr_deploy import __version__
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.io import atomic_path

__all__ = [
    "LOCK_INFO_NAME",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "FileResult",
    "Manifest",
    "OutputLock",
    "Status",
    "held",
    "manifest_header",
    "utc_now",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "cyclesr-manifest.json"
MANIFEST_SCHEMA = "1"
# Hidden names (leading "."), so that input collection and watch never take them for inputs.
LOCK_NAME = ".cyclesr-output.lock"
LOCK_INFO_NAME = ".cyclesr-output.lock.json"

Status = Literal["done", "failed", "skipped"]


class FileResult(BaseModel):
    """What happened to one input."""

    input: str
    output: str | None = None
    status: Status
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None
    note: str | None = None
    input_size: int | None = None
    input_mtime_ns: int | None = None
    finished: str | None = None
    # per-frame trust under the run's policy (runtime.trust_policy.FileTrust.summary)
    trust: dict[str, Any] | None = None


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the manifest's time stamps)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict[str, Any] | str, what: str) -> None:
    """Write ``data`` (or its JSON text) to ``path`` atomically; a full disk is named as such,
    with the file."""
    text = data if isinstance(data, str) else json.dumps(data, indent=2) + "\n"
    try:
        with atomic_path(path) as part:
            part.write_text(text, encoding="utf-8")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC, f"no space left on device (saving the {what})", str(path)
            ) from exc
        raise


def manifest_header(
    model: str, engine: str, config: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The keys a manifest starts with: schema, tool version, model, engine, run settings and
    ``extra`` (e.g. ``watch=...``, ``stats_estimate=...``)."""
    return {
        "schema_version": MANIFEST_SCHEMA,
        "tool": f"cyclesr-deploy {__version__}",
        "model": model,
        "engine": engine,
        "config": config,
        **extra,
    }


class Manifest:
    """``cyclesr-manifest.json`` in ``out_dir``: ``header`` (see :func:`manifest_header`) and
    one entry per input, keyed by absolute path. The entries of an existing manifest are kept
    (an invalid one raises InputError); the header is this run's.

    :meth:`save` writes when something changed and at least ``interval`` seconds passed since
    the last save (0: every time), or always when ``force``; :meth:`snapshot` and :meth:`write`
    split it, so that a thread sharing the entries under a lock writes the file outside it.
    """

    def __init__(self, out_dir: str | Path, header: dict[str, Any], interval: float = 0.0) -> None:
        self.path = Path(out_dir) / MANIFEST_NAME
        self.header = header
        self.interval = interval
        self.files: dict[str, dict[str, Any]] = {}
        self._saved = -float("inf")
        self._dirty = False
        self._keys: dict[str | Path, str] = {}  # input path -> its key, resolved once
        if self.path.is_file():
            try:
                files = json.loads(self.path.read_text(encoding="utf-8"))["files"]
                if not isinstance(files, dict) or not all(
                    isinstance(v, dict) for v in files.values()
                ):
                    raise TypeError("'files' is not an object of entries")
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(
                    f"{self.path}: not a valid manifest ({exc}); move or delete it"
                ) from exc
            self.files = dict(files)

    def _key(self, path: str | Path) -> str:
        key = self._keys.get(path)
        if key is None:  # resolve() touches the filesystem: once per input
            key = self._keys[path] = str(Path(path).resolve())
        return key

    def entry(self, path: str | Path) -> dict[str, Any] | None:
        """The entry of input ``path`` (any spelling of it), or None."""
        return self.files.get(self._key(path))

    def record(self, result: FileResult) -> None:
        """Set the entry of ``result.input`` to ``result``; a ``skipped`` result keeps the
        entry of the run that made the output (``done``)."""
        key = self._key(result.input)
        previous = self.files.get(key)
        if result.status == "skipped" and previous and previous.get("status") == "done":
            return
        self.files[key] = result.model_dump(mode="json")
        self._dirty = True

    def update(self, path: str | Path, **values: Any) -> None:
        """Merge ``values`` (any keys) into the entry of input ``path`` and stamp ``finished``."""
        entry = self.files.setdefault(self._key(path), {"input": str(path)})
        entry.update(values, finished=utc_now())
        self._dirty = True

    def save(self, force: bool = False) -> None:
        """Write the manifest atomically (see the class); ENOSPC raises OSError saying "no space
        left on device" with the file name."""
        text = self.snapshot(force)
        if text is not None:
            self.write(text)

    def snapshot(self, force: bool = False) -> str | None:
        """The manifest's JSON text when a save is due (see the class; None when not), taken
        as saved: pass it to :meth:`write`."""
        if not force and (not self._dirty or time.monotonic() - self._saved < self.interval):
            return None
        data = {**self.header, "updated": utc_now(), "files": self.files}
        self._saved, self._dirty = time.monotonic(), False
        return json.dumps(data, indent=2) + "\n"

    def write(self, text: str) -> None:
        """Write a :meth:`snapshot` atomically (marked unsaved again when that fails)."""
        try:
            _write_json(self.path, text, "manifest")
        except OSError:
            self._dirty = True
            raise


class OutputLock:
    """Exclusive use of the output folder ``out_dir`` by one run (a context manager).

    :meth:`acquire` never waits: when another run (another process, or another lock object in
    this one) holds the folder it raises InputError naming the folder and the holder (``command``,
    pid, host, since when). A lock whose process died is free again (the OS released it); its
    stale description is replaced and logged. The lock file stays (hidden); the description is
    removed on release.
    """

    def __init__(self, out_dir: str | Path, *, command: str) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.info_path = self.out_dir / LOCK_INFO_NAME
        self.command = command
        self._lock: Any = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def holder(self) -> dict[str, Any] | None:
        """The description written by the run that holds (or last held) the folder, or None."""
        try:
            data = json.loads(self.info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @staticmethod
    def describe(holder: dict[str, Any] | None) -> str:
        if not holder:
            return "a run that has not described itself yet (it may be starting)"
        return (
            f"{holder.get('command', '?')} (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, since {holder.get('since', '?')})"
        )

    def acquire(self) -> None:
        from filelock import FileLock, Timeout

        if self.held:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise InputError(
                f"output folder {self.out_dir} is in use by {self.describe(self.holder())}; "
                "wait for that run to end or choose another output folder"
            ) from None
        except OSError as exc:  # filelock itself falls back to a lock file where the file
            raise InputError(  # system has no flock; anything else: say which folder
                f"output folder {self.out_dir}: cannot lock it ({exc}); choose an output folder "
                "on a local disk"
            ) from exc
        self._lock = lock
        stale = self.holder()
        if stale is not None:
            log.warning(
                "%s: taking over the lock of %s, which ended without releasing it",
                self.out_dir,
                self.describe(stale),
            )
        info = {
            "command": self.command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": utc_now(),
            "argv": sys.argv,
        }
        try:  # the description only helps a refused run's message; the lock is what counts
            _write_json(self.info_path, info, "output folder's lock description")
        except OSError as exc:
            log.warning(
                "%s: could not describe this run in %s: %s", self.out_dir, LOCK_INFO_NAME, exc
            )

    def release(self) -> None:
        if self._lock is None:
            return
        lock, self._lock = self._lock, None
        try:
            with contextlib.suppress(OSError):  # e.g. being read by a refused run (Windows)
                self.info_path.unlink(missing_ok=True)
        finally:
            lock.release()

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def held(out_dir: Path, lock: OutputLock | None, command: str) -> Iterator[None]:
    """Hold ``out_dir``'s lock for a run: the caller's ``lock`` (already held, e.g. taken
    before a slow engine loads, so that a second run is refused at once; it must be that
    folder's) or a new one, named ``command``, released at the end."""
    if lock is None:
        with OutputLock(out_dir, command=command):
            yield
        return
    if not lock.held or lock.out_dir.resolve() != Path(out_dir).resolve():
        raise ValueError(f"lock: not held, or not the lock of {out_dir}")
    yield
