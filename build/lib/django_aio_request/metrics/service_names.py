"""A bound on calling-service names (the ``request_client`` label) for the whole fleet of processes.

A per-process cap is not a bound when prometheus-client runs in multiprocess mode: the files of
dead workers stay in ``PROMETHEUS_MULTIPROC_DIR`` and are still exported, so every recycled worker
(gunicorn ``--max-requests``) would add its own set of names. So, in multiprocess mode, the names
are admitted into a set shared by every process through that same directory: at most ``limit``
slot files (``aio_request_service_names/slot-NNN``), each created atomically (``os.link``, which
fails if the slot exists) and holding one name. A name that finds every slot taken is ``other``.
The set lives as long as the directory's contents, which operators empty at each start.

Without multiprocess mode every process exports only its own series, which end with it, so the
set is the process's own (the same bound, per process). All file work happens where series are
recorded, off the request path (metrics/deferred.py).
"""

import contextlib
import os
import tempfile
import threading

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SUBDIRECTORY = "aio_request_service_names"


class ServiceNames:
    """At most ``limit`` admitted names, shared through ``directory`` (None: this process only)."""

    def __init__(self, limit: int, directory: str | None) -> None:
        self.limit = limit
        self._directory = None if directory is None else os.path.join(directory, SUBDIRECTORY)
        self._names: set[str] = set()
        self._read: set[str] = set()  # slot files already read
        self._full = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Names known to be admitted (by this process, or by others, as read so far)."""
        return len(self._names)

    def admit(self, name: str) -> bool:
        """Whether ``name`` is (now) one of the admitted names."""
        if name in self._names:
            return True
        with self._lock:
            if self._directory is None:
                if len(self._names) >= self.limit:
                    return False
                self._names.add(name)
                return True
            try:
                return self._admit_shared(name, self._directory)
            except OSError:
                return False  # the directory is unusable: never a new label, never an exception

    def _admit_shared(self, name: str, directory: str) -> bool:
        self._refresh(directory)
        if name in self._names:
            return True
        if self._full:
            return False
        os.makedirs(directory, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=".name-", dir=directory)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(name.encode())
            for slot in range(self.limit):
                path = os.path.join(directory, f"slot-{slot:03d}")
                if os.path.basename(path) in self._read:
                    continue
                try:
                    os.link(temporary, path)  # atomic, and the slot file is complete when it appears
                except FileExistsError:
                    self._read_slot(directory, os.path.basename(path))
                    if name in self._names:  # another process admitted it meanwhile
                        return True
                    continue
                self._read.add(os.path.basename(path))
                self._names.add(name)
                return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        self._full = True
        return False

    def _refresh(self, directory: str) -> None:
        """Read the slots other processes filled since the last look."""
        if self._full:
            return
        try:
            slots = [entry for entry in os.listdir(directory) if entry.startswith("slot-")]
        except FileNotFoundError:
            return
        for slot in slots:
            if slot not in self._read:
                self._read_slot(directory, slot)
        if len(self._read) >= self.limit:
            self._full = True

    def _read_slot(self, directory: str, slot: str) -> None:
        try:
            with open(os.path.join(directory, slot), "rb") as file:
                name = file.read().decode()
        except (OSError, UnicodeDecodeError):
            return
        self._read.add(slot)
        self._names.add(name)
        if len(self._read) >= self.limit:
            self._full = True


def for_this_process(limit: int) -> ServiceNames:
    """The set for this process: shared through ``PROMETHEUS_MULTIPROC_DIR`` when it is set."""
    return ServiceNames(limit, os.environ.get(MULTIPROC_ENV) or None)
