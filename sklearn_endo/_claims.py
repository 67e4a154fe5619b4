"""Claims: which process encodes which image of a directory feature store.

Worker processes of one search (``GridSearchCV(n_jobs=4)``, Dask workers, Optuna
workers) that start on a cold directory store all ask for the same images. Before
encoding a chunk of missing images, a process claims each one with a claim file next to
the entry it will write::

    <directory>/<namespace>/<key[:2]>/<key>.claim
        "<host> <pid> <time> <token> <start> <lock>"

``start`` is the process's start time (``/proc/<pid>/stat``, ``-`` where there is no
``/proc``), so a reused pid is told from its first owner; ``lock`` is ``flock`` when the
writer holds an exclusive ``flock`` on the claim file, ``-`` where the filesystem
refused it. The claim is written whole into a temp file
(``.<key>.claim.<host>.<pid>.<random>.tmp``, the store's temp-file naming), locked, and
then linked into place with ``os.link``, which fails if the claim exists: exactly one
process gets each claim, and no reader ever sees an empty or half-written claim from
this version (filesystems without hard links fall back to ``O_CREAT | O_EXCL``, locked
before it is written). The writer keeps the claim file open, hence locked, until it
releases the claim; the kernel releases the lock when the writer dies, however it dies
(SIGKILL, a zombie not yet reaped, OOM). A heartbeat thread refreshes the mtime of the
held claims every ``HEARTBEAT_S`` seconds as long as the holder makes progress (a batch
written within ``claim_stale_s()``). The process encodes what it claimed, writes the
entries (per batch) and removes their claims. Images claimed by another live process
are deferred: after its own chunks, the process waits for their entries and reads them
as they land, polling with a growing sleep (20 ms to 0.5 s), never in a busy loop.

When a claim of another process is dead (taken over at once, silently):

- same host: its lock is free (the writer recorded one), or, without a lock, its pid
  runs no more, is a zombie, or was reused (another start time). The pid is never
  probed for a claim of another host.
- an empty or unparseable claim that nobody locks (a crash between create and write of
  an older version, a full disk): never waited on, and removed by orphan cleanup.

When it is stale (taken over with a ``FeatureStoreWarning``): another host's claim
whose heartbeat is older than ``HEARTBEAT_LOST_S`` (its process or host is gone, or
hung; locks are not trusted across hosts: NFS mounted ``nolock``/``local_lock`` keeps
them local, NFSv3 keeps a crashed host's locks until it reboots); or a claim of this
host whose writer is alive but that was not refreshed for ``claim_stale_s()`` seconds
(600 s: a hung holder stops its heartbeat after that long without progress, so its
claims go after about twice that). Claims of older versions (four fields, no lock, no
heartbeat) keep their rules: the pid on this host, 600 s of age elsewhere. A waiting
process never waits on a dead writer, and never deadlocks: it holds no claim while it
waits.

- a claim removed without its entry (the claimer failed) is claimed again by a waiter.
- after claiming, the entry is looked up once more: it may have landed between the
  lookup and the claim, and is then read, not encoded.
- a takeover renames the old claim aside under a temp name and re-creates it; two
  processes taking over the same claim at once may both encode that image: duplicated
  work, never a wrong entry (entries are checksummed and renamed into place whole).
- a claim that cannot be written (disk full, quota) raises a ``ValueError`` naming the
  store; its temp file is removed and the caller releases the claims it holds, so a
  rerun finds nothing in its way.

Claims cost a few small file operations per encoded image (write, link and unlink of a
temp file, a refresh per batch and per heartbeat, a remove) plus one lookup; a waiting
process re-opens the claim and entry files it waits for at each poll.
``SKLEARN_ENDO_STORE_CLAIMS=0`` turns claims off (every process encodes what it misses,
as before); a ``"memory"`` store has nothing to share across processes and never claims.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid

try:
    import fcntl
except ImportError:  # Windows: no flock; pids and heartbeats only
    fcntl = None

__all__ = ["Claims", "claims_enabled", "claim_stale_s"]

CLAIM_STALE_S = 600.0  # a claim not refreshed for this long is taken over (any host)
HEARTBEAT_S = 5.0  # a holder refreshes its claims' mtime this often
HEARTBEAT_LOST_S = 30.0  # another host's claim not refreshed this long: its writer is gone
POLL_MIN_S = 0.02
POLL_MAX_S = 0.5
# link() refused by the filesystem (FAT, some FUSE and SMB mounts): exclusive create
_NO_LINK = {errno.EPERM, errno.ENOSYS, errno.EXDEV, errno.EMLINK,
            getattr(errno, "ENOTSUP", -1), getattr(errno, "EOPNOTSUPP", -1)}
_OPEN_FDS = set()  # claim files held open (locked) by this process


def _close_in_child():
    # a forked child (a DataLoader worker) must not keep its parent's claims locked
    for fd in list(_OPEN_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _OPEN_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


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

    heartbeat_s = HEARTBEAT_S
    heartbeat_lost_s = HEARTBEAT_LOST_S

    def __init__(self, folder, host, stale_s=None):
        self.folder = folder
        self.host = host
        self.stale_s = claim_stale_s() if stale_s is None else float(stale_s)
        self.pid = os.getpid()
        self.start = _process(self.pid)[1]
        self.token = uuid.uuid4().hex
        self.held = set()
        self.taken_over_stale = []  # (key, owner, limit_s) of claims taken over as stale
        self._fds = {}  # key -> fd of the held claim file (holds its lock)
        self._lock = threading.Lock()
        self._progress = time.monotonic()
        self._stop = None  # the heartbeat's Event while it runs

    def path(self, key):
        return os.path.join(self.folder, key[:2], key + ".claim")

    # ------------------------------------------------------------ claiming
    def claim(self, keys):
        """Try to claim each key; return ``(mine, others)``: keys claimed, keys held."""
        mine, others = [], []
        for key in keys:
            (mine if self._claim_one(key) else others).append(key)
        if mine:
            self._progress = time.monotonic()
            self._start_heartbeat()
        return mine, others

    def _claim_one(self, key):
        path = self.path(key)
        for _ in range(3):
            fd = self._create(path)
            if fd is not None:
                with self._lock:
                    self._fds[key] = fd
                    self.held.add(key)
                return True
            state, owner, content = self._inspect(path)
            if state == "free":
                continue  # released between our create and our look: try again
            if state == "live":
                return False
            if not self._take_over(path, content):
                return False
            if state != "dead":
                limit = self.stale_s if state == "stale" else self.heartbeat_lost_s
                self.taken_over_stale.append((key, owner, limit))
        return False

    def _create(self, path):
        """Create the claim ``path`` whole and locked: its open fd, or None if it exists.

        Raises a ValueError naming the store if it cannot be written (disk full).
        """
        folder = os.path.dirname(path)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{self.host}.{self.pid}."
                                   f"{uuid.uuid4().hex[:8]}.tmp")
        fd = None
        try:
            try:
                fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileNotFoundError:
                os.makedirs(folder, exist_ok=True)
                fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            _write_all(fd, self._content(fd))
            try:
                os.link(tmp, path)
            except FileExistsError:
                os.close(fd)
                fd = None
            except OSError as exc:
                if exc.errno in _NO_LINK:
                    os.close(fd)
                    fd = None
                    fd = self._create_excl(path)
                elif os.fstat(fd).st_nlink != 2:  # NFS: a lost reply to a done link
                    raise
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            raise self._error(path, exc) from None
        finally:
            _remove(tmp)
        if fd is not None:
            _OPEN_FDS.add(fd)
        return fd

    def _create_excl(self, path):
        """``_create`` without hard links: exclusive create, lock, then write."""
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return None
        try:
            _write_all(fd, self._content(fd))
        except OSError:
            _remove(path)
            os.close(fd)
            raise
        return fd

    def _content(self, fd):
        lock = "flock" if _lock(fd) else "-"
        return (f"{self.host} {self.pid} {time.time():.3f} {self.token} {self.start} "
                f"{lock}\n").encode()

    def _error(self, path, exc):
        return ValueError(
            f"feature_store={os.path.dirname(self.folder)!r}: writing the claim {path!r} "
            f"failed ({exc.strerror or exc}). Claims taken so far are released, so a "
            f"rerun starts at once; free space or fix permissions, or pass "
            f"feature_store='memory' or None.")

    def _inspect(self, path):
        """``("free" | "live" | "dead" | "stale", owner, content)`` of a claim file."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return "free", None, None
        except OSError:  # unreadable (another user's): its age alone tells
            try:
                age = time.time() - os.stat(path).st_mtime
            except OSError:
                return "live", None, None
            return ("stale" if age > self.stale_s else "live"), "unreadable claim", None
        try:
            content = os.read(fd, 4096)
            age = time.time() - os.fstat(fd).st_mtime
            free = _lock(fd, shared=True)  # True: nobody holds its lock; None: can't tell
        except OSError:
            return "live", None, None
        finally:
            os.close(fd)
        return (*self._judge(content, age, free), content)

    def _judge(self, content, age, free):
        """``(state, owner)`` of another process's claim; see the module docstring."""
        parts = content.decode("ascii", "replace").split()
        if len(parts) not in (4, 6) or not parts[1].isdigit():
            # empty or half-written: a writer between create and write holds its lock
            if free is not False:
                return "dead", "unknown writer"
            return ("stale" if age > self.stale_s else "live"), "unknown writer"
        host, pid = parts[0], int(parts[1])
        owner = f"{host} {pid}"
        start, locked = (parts[4], parts[5] == "flock") if len(parts) == 6 else ("-", False)
        aged = "stale" if age > self.stale_s else "live"
        if host == self.host:
            if pid == self.pid and start in ("-", self.start):
                return aged, owner  # this process (another call): only its age tells
            if locked and free is not None:
                return ("dead" if free else aged), owner  # the kernel's word
            alive, now = _process(pid)
            if not alive or ("-" not in (start, now) and start != now):
                return "dead", owner  # gone, a zombie, or its pid reused
            return aged, owner
        # another host: its pid means nothing here, and its lock may not be seen here
        # (NFS ``nolock``), or may outlive it (NFSv3 keeps a crashed host's locks)
        if len(parts) == 6 and age > self.heartbeat_lost_s:
            return "heartbeat", owner
        return aged, owner

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
        self._progress = time.monotonic()
        self._refresh(set(keys))

    def _refresh(self, keys=None):
        with self._lock:  # keys None: all held claims
            fds = [fd for k, fd in self._fds.items() if keys is None or k in keys]
        for fd in fds:
            try:
                os.utime(fd)
            except (OSError, NotImplementedError):
                pass

    def _start_heartbeat(self):
        with self._lock:
            if self._stop is not None or not self.held:
                return
            self._stop = threading.Event()
        threading.Thread(target=self._heartbeat, args=(self._stop,), daemon=True,
                         name="sklearn-endo-claims-heartbeat").start()

    def _heartbeat(self, stop):
        while not stop.wait(self.heartbeat_s):
            if time.monotonic() - self._progress <= self.stale_s:  # else: hung, let age
                self._refresh()

    def release(self, keys):
        """Remove our claims on ``keys`` (after their entries landed, or on failure)."""
        for key in list(keys):
            with self._lock:
                if key not in self.held:
                    continue
                self.held.discard(key)
                fd = self._fds.pop(key, None)
                if not self.held and self._stop is not None:
                    self._stop.set()
                    self._stop = None
            if fd is None:
                continue
            path = self.path(key)
            try:  # never remove a claim another process has taken over
                ours = os.path.samestat(os.stat(path), os.fstat(fd))
            except OSError:
                ours = False
            if ours:
                _remove(path)  # removed first, unlocked after: never seen unlocked
            _OPEN_FDS.discard(fd)
            try:
                os.close(fd)
            except OSError:
                pass

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
    return state in ("dead", "stale", "heartbeat") and probe._take_over(path, content)


def _lock(fd, shared=False):
    """Take a non-blocking flock: True if taken, False if another holds it, None where
    the filesystem does not lock (ENOLCK on NFS without lockd, EOPNOTSUPP, ...)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        return False if exc.errno in (errno.EAGAIN, errno.EACCES) else None
    return True


def _process(pid):
    """``(alive, start)`` of process ``pid`` on this host.

    ``alive`` is False for a process that is gone or a zombie (killed, not yet reaped:
    ``os.kill(pid, 0)`` still succeeds on it); ``start`` is its start time in clock
    ticks since boot, ``"-"`` where ``/proc`` cannot tell.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, "-"
    except OSError:
        pass  # exists but belongs to someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after "pid (comm)"
        return fields[0] not in (b"Z", b"X", b"x"), fields[19].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return True, "-"


def _pid_alive(pid):
    return _process(pid)[0]


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


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
