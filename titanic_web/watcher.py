"""Live model switching: each worker follows the registry's active pointer without a restart.

A thread per worker looks at the pointer file once a second (one ``stat``); when
it changes, the thread loads the named version (sha256 checked before unpickling)
and then swaps the service's predictor in one assignment. Requests never wait:
each takes the predictor once at its start and finishes with it, so a request
in flight when the swap happens is answered, and recorded, by the version it began with.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from titanic_web import registry
from titanic_web.predictor import ModelError, Predictor
from titanic_web.service import PredictionService

log = logging.getLogger(__name__)

#: What identifies one write of the pointer: a replaced file is a new inode.
Signature = tuple[int, int, int]


class ModelWatcher:
    """Follows MODEL_DIR's active pointer and swaps the service's model when it moves."""

    def __init__(
        self,
        service: PredictionService,
        model_dir: Path,
        *,
        interval: float = 1.0,
        load: Callable[[Path], Predictor] = Predictor.from_dir,
    ) -> None:
        self.service = service
        #: Called with the version now served, after each switch (the metrics' model gauge).
        self.on_switch: Callable[[str], None] | None = None
        self.model_dir = model_dir
        self.interval = interval
        self._load = load
        self._seen: Signature | None = None  # the pointer write last acted on
        self._lock = threading.Lock()  # one check at a time (the thread, and an activation request)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def start(self) -> None:
        """Start this process's watcher thread (in each gunicorn worker, after the fork)."""
        if self.interval <= 0 or (self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()):
            return
        self._stop.clear()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread; a load in progress finishes first."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether this process's watcher thread is alive."""
        return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the thread must outlive any surprise; the next tick tries again
                log.exception("model watcher: checking %s failed", registry.pointer_path(self.model_dir))

    def _signature(self) -> Signature | None:
        try:
            st = os.stat(registry.pointer_path(self.model_dir))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def check(self) -> bool:
        """Look at the pointer once; if it names another version, load it and swap. True if swapped.

        A version that cannot be loaded (missing, tampered, another scikit-learn) is
        refused with a log line and the current model keeps serving; it is not tried
        again until the pointer is written again.
        """
        with self._lock:
            signature = self._signature()
            if signature is None or signature == self._seen:
                return False
            self._seen = signature
            try:
                version = registry.read_active(self.model_dir)
            except registry.RegistryError as exc:
                log.error("model switch refused: %s; still serving %s", exc, self._current())
                return False
            current = self.service.predictor
            if version is None or (current is not None and current.version == version):
                return False
            try:
                predictor = self._load(self.model_dir / version)
            except ModelError as exc:
                log.error("model version %s refused: %s; still serving %s", version, exc, self._current())
                return False
            if predictor.version != version:
                log.error(
                    "model version %s refused: its card says %s; still serving %s",
                    version,
                    predictor.version,
                    self._current(),
                )
                return False
            self.adopt(predictor)
            return True

    def activate(self, version: str) -> tuple[str | None, Predictor]:
        """Activate a registered version for every worker, and serve it here at once.

        Returns the version the pointer named before, and the loaded predictor.

        :raise registry.UnknownVersion: no such version.
        :raise registry.RegistryError: it cannot be loaded; nothing changed.
        """
        with self._lock:
            try:
                previous = registry.read_active(self.model_dir)
            except registry.RegistryError:
                previous = None  # a damaged pointer is being replaced
            predictor = registry.activate(self.model_dir, version, load=self._load)
            # The pointer's signature is not recorded as seen: another process may have written
            # it again since this write. The next check reads the name, and loads only if it is
            # not the version adopted here, so every worker ends on what ACTIVE names.
            self.adopt(predictor)
            return previous, predictor

    def adopt(self, predictor: Predictor) -> None:
        """Serve this predictor from now on (one assignment: requests see the old one or the new)."""
        previous = self._current()
        self.service.model_error = None
        self.service.predictor = predictor
        if self.on_switch is not None:
            try:
                self.on_switch(predictor.version)
            except Exception:  # a listener's failure is not the switch's
                log.exception("model watcher: a listener of the switch to %s failed", predictor.version)
        if previous == predictor.version:
            log.info("model %s reloaded (pid %d)", previous, os.getpid())
        else:
            log.info("model switched from %s to %s (pid %d)", previous, predictor.version, os.getpid())

    def _current(self) -> str:
        predictor = self.service.predictor
        return "no model" if predictor is None else predictor.version
