"""Claims: which process encodes which image of a directory feature store.

Worker processes of one search (``GridSearchCV(n_jobs=4)``, Dask workers, Optuna
workers) that start on a cold directory store all ask for the same images. Before
encoding a chunk of missing images, a process claims each one with a claim file next to
the entry it will write::

    <directory>/<namespace>/<key[:2]>/<key>.claim      "<host> <pid> <time> <token>"

created with ``O_CREAT | O_EXCL``, so exactly one process gets each claim. It encodes
the images it claimed, writes their entries (per batch, as before) and then removes
their claims. Images claimed by another live process are deferred: after its own
chunks, the process waits for their entries and reads them as they land, polling with
a growing sleep (20 ms to 0.5 s), never in a busy loop. So each image is encoded once
across all processes, and the processes share the work chunk by chunk.

Faults:

- a claim whose writer is gone (same host, pid no longer running) is taken over at
  once; a claim not refreshed for ``claim_stale_s()`` seconds (any host; a claimer
  refreshes its claims' mtime after every batch) is taken over with a
  ``FeatureStoreWarning``. A waiting process therefore never waits longer than that
  without progress, and never deadlocks: it holds no claim while it waits.
- a claim removed without its entry (the claimer failed) is claimed again by a waiter.
- after claiming, the entry is looked up once more: it may have landed between the
  lookup and the claim (its claim removed meanwhile), and is then read, not encoded.
- a takeover renames the old claim aside (``.<key>.claim.<host>.<pid>.<random>.tmp``,
  the store's temp-file naming, so orphan cleanup knows it) and re-creates it with
  ``O_EXCL``; two processes taking over the same claim at once may both encode that
  image: duplicated work, never a wrong entry (entries are checksummed and renamed
  into place whole).

Claims cost three small file operations per encoded image (create, refresh per batch,
remove) plus one lookup; a waiting process re-opens the entry files it waits for at
each poll. ``SKLEARN_ENDO_STORE_CLAIMS=0`` turns claims off (every process encodes
what it misses, as before); a ``"memory"`` store has nothing to share across
processes and never claims.
"""

from __future__ import annotations

import os
import time
import uuid

__all__ = ["Claims", "claims_enabled", "claim_stale_s"]

CLAIM_STALE_S = 600.0  # a claim not refreshed for this long is taken over (any host)
POLL_MIN_S = 0.02
POLL_MAX_S = 0.5


def claims_enabled(environ=None):
    """False when ``SKLEARN_ENDO_STORE_CLAIMS`` is ``0``/``false``/``no``/``off``."""
    environ = os.environ if environ is None else environ
    raw = environ.get("SKLEARN_ENDO_STORE_CLAIMS", "1").strip().lower()
    if raw in ("0", "false", "no", "off"):
        return False
    if raw in ("", "1", "true", "yes", "on"):
        return True
    raise ValueError(f"SKLEARN_ENDO_STORE_CLAIMS={raw!r} is not understood; set it to 1 "
                     f"(claims on, the default) or 0 (every process encodes what it "
                     f"misses).")


def claim_stale_s(environ=None):
    """Age (s) after which an unrefreshed claim is taken over.

    ``SKLEARN_ENDO_CLAIM_STALE_S`` if set, else ``CLAIM_STALE_S`` (600 s).
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("SKLEARN_ENDO_CLAIM_STALE_S", "").strip()
    if not raw:
        return CLAIM_STALE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValueError(f"SKLEARN_ENDO_CLAIM_STALE_S={raw!r} must be a positive number "
                         f"of seconds (default {CLAIM_STALE_S:.0f}).")
    return value


class Claims:
    """The claims one call holds in ``<directory>/<namespace>``.

    Parameters
    ----------
    folder : str
        The namespace folder of a directory store.
    host : str
        This host's name as used in temp-file names.
    stale_s : float or None
        Age after which an unrefreshed claim is taken over; ``claim_stale_s()`` if None.
    """

    def __init__(self, folder, host, stale_s=None):
        self.folder = folder
        self.host = host
        self.stale_s = claim_stale_s() if stale_s is None else float(stale_s)
        self.pid = os.getpid()
        self.token = uuid.uuid4().hex
        self.held = set()
        self.taken_over_stale = []  # (key, owner) of claims taken over for their age

    def path(self, key):
        return os.path.join(self.folder, key[:2], key + ".claim")

    # ------------------------------------------------------------ claiming
    def claim(self, keys):
        """Try to claim each key; return ``(mine, others)``: keys claimed, keys held."""
        mine, others = [], []
        for key in keys:
            (mine if self._claim_one(key) else others).append(key)
        return mine, others

    def _claim_one(self, key):
        path = self.path(key)
        for _ in range(3):
            if self._create(path):
                self.held.add(key)
                return True
            state, owner, content = self._inspect(path)
            if state == "free":
                continue  # released between our create and our look: try again
            if state == "live":
                return False
            if not self._take_over(path, content):
                return False
            if state == "stale":
                self.taken_over_stale.append((key, owner))
        return False

    def _create(self, path):
        text = f"{self.host} {self.pid} {time.time():.3f} {self.token}\n".encode()
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return self._create(path)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
        return True

    def _inspect(self, path):
        """``("free" | "live" | "dead" | "stale", owner, content)`` of a claim file."""
        try:
            with open(path, "rb") as f:
                content = f.read()
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return "free", None, None
        except OSError:
            return "live", None, None  # unreadable: leave it to its age (next look)
        parts = content.decode("ascii", "replace").split()
        owner = " ".join(parts[:2]) if len(parts) >= 2 else "unknown writer"
        if len(parts) != 4 or not parts[1].isdigit():
            # half-written (its writer is between open and write) or foreign: age only
            return ("stale" if age > max(self.stale_s, 1.0) else "live"), owner, content
        host, pid = parts[0], int(parts[1])
        if host == self.host and pid != self.pid and not _pid_alive(pid):
            return "dead", owner, content
        if age > self.stale_s:
            return "stale", owner, content
        return "live", owner, content

    def _take_over(self, path, content):
        """Move a dead or stale claim aside if it is still the one judged; True if so."""
        aside = os.path.join(os.path.dirname(path),
                             f".{os.path.basename(path)}.{self.host}.{self.pid}."
                             f"{uuid.uuid4().hex[:8]}.tmp")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return True  # gone already: the caller tries to create it
        except OSError:
            return False
        try:
            with open(aside, "rb") as f:
                moved = f.read()
        except OSError:
            moved = None
        if moved != content:
            # someone re-claimed it between our look and our rename: give it back
            try:
                os.link(aside, path)
            except OSError:
                pass
            _remove(aside)
            return False
        _remove(aside)
        return True

    # ------------------------------------------------------------ holding, releasing
    def touch(self, keys):
        """Refresh the mtime of held claims: their writer is alive and working."""
        for key in keys:
            if key in self.held:
                try:
                    os.utime(self.path(key))
                except OSError:
                    pass

    def release(self, keys):
        """Remove our claims on ``keys`` (after their entries landed, or on failure)."""
        for key in list(keys):
            if key not in self.held:
                continue
            self.held.discard(key)
            path = self.path(key)
            try:
                with open(path, "rb") as f:
                    ours = self.token.encode() in f.read()
            except OSError:
                continue
            if ours:  # never remove a claim another process has taken over
                _remove(path)

    def release_all(self):
        self.release(list(self.held))

    def held_by_live_other(self, key):
        """True if another live process holds a fresh claim on ``key``."""
        return self._inspect(self.path(key))[0] == "live"


def remove_orphan_claim(path, probe):
    """Delete the claim file ``path`` if its writer is gone or it is stale; True if so.

    ``probe`` is a ``Claims`` of the folder (for this host's name and the stale age).
    """
    state, _, content = probe._inspect(path)
    return state in ("dead", "stale") and probe._take_over(path, content)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


class Poll:
    """Growing sleeps between looks at entries other processes are writing."""

    def __init__(self):
        self.delay = POLL_MIN_S

    def progressed(self):
        self.delay = POLL_MIN_S

    def sleep(self):
        time.sleep(self.delay)
        self.delay = min(self.delay * 1.5, POLL_MAX_S)
