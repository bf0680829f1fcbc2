"""A read cache for the hot paths (job status polls, API key lookups), kept coherent by Postgres NOTIFY.

Postgres stays the one source of truth: triggers (migration 0002) send ``job:<id>`` or ``key:<sha256>`` on
the ``layercut_changes`` channel when a row changes, and a listener thread in each API process drops those
entries. Entries are only served while the listener is connected; when it is not, the cache is emptied and
every read goes to the database. A read that raced with a change is not stored (a generation counter that
every eviction bumps), and an entry lives at most ``read_cache_seconds`` as a last line of defence.
SQLite (embedded mode) has no NOTIFY, so there the API always reads the database.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger("layercut.api.cache")

CHANNEL = "layercut_changes"
TRIGGER_NAMES = ("layercut_jobs_changed", "layercut_artifacts_changed", "layercut_api_keys_changed")
LIVENESS_PROBE_SECONDS = 5.0


class ReadCache:
    """Bounded LRU of (namespace, id, …) → value; ``job:<id>`` evicts every entry whose first two parts match."""

    def __init__(self, database_url: str, max_entries: int, max_age_seconds: float) -> None:
        self._conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._max_entries = max_entries
        self._max_age = max_age_seconds
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._by_object: dict[tuple[str, str], set[Hashable]] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._live = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen_forever, name="layercut-read-cache", daemon=True)
        self._thread.start()

    # --- reads and writes ----------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        return self._live

    def generation(self) -> int | None:
        """Take this before reading the database; pass it to ``put``. None: nothing may be stored now."""
        return self._generation if self._live else None

    def get(self, key: Hashable) -> Any | None:
        if not self._live:
            return None
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            stored_at, value = found
            if time.monotonic() - stored_at > self._max_age:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return value

    def put(self, key: tuple, value: Any, generation: int | None) -> None:
        """Store ``value`` unless something changed (or the listener dropped) since ``generation`` was taken."""
        if generation is None:
            return
        with self._lock:
            if not self._live or generation != self._generation:
                return
            self._entries[key] = (time.monotonic(), value)
            self._entries.move_to_end(key)
            self._by_object.setdefault((str(key[0]), str(key[1])), set()).add(key)
            while len(self._entries) > self._max_entries:
                self._drop(next(iter(self._entries)))

    def evict(self, namespace: str, object_id: str) -> None:
        """Forget everything cached about one object (also called by this process after its own writes)."""
        with self._lock:
            self._generation += 1
            for key in self._by_object.pop((namespace, object_id), ()):
                self._entries.pop(key, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _drop(self, key: Hashable) -> None:
        self._entries.pop(key, None)
        keys = self._by_object.get((str(key[0]), str(key[1])))  # type: ignore[index]
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_object[(str(key[0]), str(key[1]))]  # type: ignore[index]

    def _set_live(self, live: bool) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._by_object.clear()
            self._live = live

    # --- the listener --------------------------------------------------------------------------------
    def _listen_forever(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                delay = 0.5
            except Exception as exc:  # noqa: BLE001 - any failure: serve from the database until reconnected
                if self._live:
                    log.warning("read cache disabled until the change listener reconnects: %s", exc)
                self._set_live(False)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def _listen(self) -> None:
        import psycopg

        with psycopg.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=5,
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=2,
            application_name=LISTENER_NAME,  # how operators (and the tests) find it in pg_stat_activity
        ) as conn:
            installed = {
                row[0]
                for row in conn.execute("SELECT tgname FROM pg_trigger WHERE tgname = ANY(%s)", (list(TRIGGER_NAMES),))
            }
            if installed != set(TRIGGER_NAMES):
                log.warning("read cache off: the database lacks the change triggers (run `layercut migrate`)")
                self._set_live(False)
                self._stop.wait(60)
                return
            conn.execute(f"LISTEN {CHANNEL}")
            self._set_live(True)  # emptied at the moment we start hearing changes
            quiet_since = time.monotonic()
            while not self._stop.is_set():
                for notice in conn.notifies(timeout=1.0):
                    namespace, _, object_id = notice.payload.partition(":")
                    self.evict(namespace, object_id)
                    quiet_since = time.monotonic()
                if time.monotonic() - quiet_since > LIVENESS_PROBE_SECONDS:
                    conn.execute("SELECT 1")  # a dead connection fails here, not silently
                    quiet_since = time.monotonic()
        self._set_live(False)


LISTENER_NAME = "layercut-read-cache"

_caches: dict[tuple[str, int], ReadCache] = {}
_caches_lock = threading.Lock()


def read_cache_for(database_url: str, enabled: bool, max_entries: int, max_age_seconds: float) -> ReadCache | None:
    """The process's cache for ``database_url`` (Postgres only), started on first use after any fork."""
    if not enabled or not database_url.startswith("postgresql"):
        return None
    key = (database_url, os.getpid())
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = ReadCache(database_url, max_entries, max_age_seconds)
        return cache
