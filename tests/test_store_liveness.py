"""Liveness of store claims: a dead writer's claim is taken over at once, never waited on.

A waiting process polls (``Poll.sleep``) only while a claim's writer is alive. Each test
counts those polls and fails after a few, so a claim wrongly judged live fails the test
at once instead of hanging it for the 600 s stale age.
"""

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from sklearn_endo import LayerFeatureTransformer, _claims
from sklearn_endo._claims import Claims, Poll
from sklearn_endo._images import check_images, image_hashes
from sklearn_endo._store import _HOST, FeatureStoreWarning, remove_orphan_temp_files

# a process that takes claims with this very module, loaded from its file (no torch
# import: it starts in a fraction of a second), forks a child that lives on (as a
# DataLoader worker would) or does without locks if asked, reports how many claims it
# got, then sleeps
HOLDER = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("claims", sys.argv[1])
claims = importlib.util.module_from_spec(spec)
spec.loader.exec_module(claims)
if sys.argv[4] == "nolock":  # a filesystem without working locks
    claims._lock = lambda fd, shared=False: None
mine, _ = claims.Claims(sys.argv[2], sys.argv[3]).claim(sys.argv[5:])
child = os.fork() if sys.argv[4] == "fork" else 1
if child == 0:
    time.sleep(600)
    os._exit(0)
print(len(mine), child, flush=True)
time.sleep(600)
"""


@pytest.fixture
def polls(monkeypatch):
    """Counts the waiting process's polls; the sixth fails the test (a claim waited on)."""
    count = []

    def sleep(self):
        count.append(1)
        assert len(count) <= 5, "waited on a claim whose writer is dead"
        time.sleep(0.01)

    monkeypatch.setattr(Poll, "sleep", sleep)
    return count


def _setup(tiny_vit, images, store):
    X, _ = images
    ref = LayerFeatureTransformer(tiny_vit, layer=2, feature_store=None).fit_transform(X)
    t = LayerFeatureTransformer(tiny_vit, layer=2, feature_store=str(store)).fit(X)
    keys = image_hashes(check_images(X))
    return X, ref, t, keys, os.path.join(store, t._namespace(t._get_handle()))


def _claim_file(folder, key):
    return os.path.join(folder, key[:2], key + ".claim")


def _write(path, content, age_s=0.0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content)
    t = time.time() - age_s
    os.utime(path, (t, t))


def _files(root, suffix):
    return sorted(p for p in map(str, root.rglob("*")) if p.endswith(suffix))


def _stat(pid):
    """Fields of /proc/<pid>/stat after the command: [state, ppid, ...]."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _state(pid):
    return _stat(pid)[0]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
@pytest.mark.parametrize("fork", ["no", "fork", "nolock"])
def test_claims_of_a_killed_peer_not_yet_reaped_are_taken_over_at_once(
        images, tiny_vit, counter, tmp_path, polls, fork, monkeypatch):
    X, ref, t, keys, folder = _setup(tiny_vit, images, tmp_path)
    if fork == "nolock":  # no lock to test: the pid, its state and start time tell
        monkeypatch.setattr(_claims, "_lock", lambda fd, shared=False: None, raising=False)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, _claims.__file__, folder, _HOST,
                             fork, *keys[:8]], stdout=subprocess.PIPE)
    child = 1
    try:
        got, child = map(int, proc.stdout.readline().split())
        assert got == 8
        probe = Claims(folder, _HOST)
        assert probe.held_by_live_other(keys[0])  # alive: its claims are respected
        os.kill(proc.pid, signal.SIGKILL)  # and no wait(): a zombie, os.kill(pid, 0) works
        for _ in range(500):
            if _state(proc.pid) == "Z":
                break
            time.sleep(0.01)
        assert _state(proc.pid) == "Z"
        os.kill(proc.pid, 0)  # what liveness used to rest on: it says "running"
        c = counter(tiny_vit)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FeatureStoreWarning)  # dead, not stale: silent
            np.testing.assert_array_equal(t.transform(X), ref)
    finally:
        proc.kill()
        proc.wait()
        if child > 1:  # the forked child lived on, holding copies of the claim files
            os.kill(child, signal.SIGKILL)
    assert polls == []  # not one wait for the dead peer's 8 claims
    assert c.images == len(X)
    assert _files(tmp_path, ".claim") == [] and _files(tmp_path, ".tmp") == []


def test_empty_claim_files_are_never_waited_on_and_cleanup_removes_them(
        images, tiny_vit, counter, tmp_path, polls):
    X, ref, t, keys, folder = _setup(tiny_vit, images, tmp_path)
    for key in keys[:6]:  # a crash between create and write, or a full disk: fresh
        _write(_claim_file(folder, key), "")
    c = counter(tiny_vit)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureStoreWarning)
        np.testing.assert_array_equal(t.transform(X), ref)
    assert polls == [] and c.images == len(X)
    assert _files(tmp_path, ".claim") == []

    # orphan cleanup removes an empty claim at once, and keeps one a writer has locked
    # (the exclusive-create fallback locks its claim before writing it)
    empty, locked = tmp_path / "ns" / "ab" / "abempty.claim", tmp_path / "ns" / "ab" / "ablk.claim"
    _write(str(empty), "")
    _write(str(locked), "")
    with open(locked, "rb+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert remove_orphan_temp_files(str(tmp_path / "ns")) == 1
        assert not empty.exists() and locked.exists()


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs Linux /proc")
def test_disk_full_while_claiming_is_a_clear_error_and_the_rerun_proceeds_at_once(
        images, tiny_vit, counter, tmp_path, monkeypatch, polls):
    X, ref, t, keys, folder = _setup(tiny_vit, images, tmp_path)
    real_write = os.write

    def write(fd, data):  # the disk is full for claim files
        if ".claim" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(ValueError, match=f"feature_store='{tmp_path}'.*No space left"):
        t.transform(X)
    # nothing that could block a rerun: no claim, empty or not, and no temp file
    assert _files(tmp_path, ".claim") == [] and _files(tmp_path, ".tmp") == []
    monkeypatch.setattr(os, "write", real_write)  # space freed
    c = counter(tiny_vit)
    np.testing.assert_array_equal(t.transform(X), ref)
    assert polls == [] and c.images == len(X)


def test_a_claim_whose_pid_was_reused_is_taken_over(images, tiny_vit, counter, tmp_path,
                                                    polls):
    X, ref, t, keys, folder = _setup(tiny_vit, images, tmp_path)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        pid, start = live.pid, _stat(live.pid)[19] if os.path.exists("/proc") else "-"
        # written by an earlier process that had this pid (another start time)
        for key in keys[:4]:
            _write(_claim_file(folder, key), f"{_HOST} {pid} {time.time():.3f} t 1 -\n")
        if start != "-":
            _write(_claim_file(folder, keys[4]),
                   f"{_HOST} {pid} {time.time():.3f} t {start} -\n")
            assert Claims(folder, _HOST).held_by_live_other(keys[4])  # its own: live
            os.remove(_claim_file(folder, keys[4]))
        c = counter(tiny_vit)
        np.testing.assert_array_equal(t.transform(X), ref)
    finally:
        live.kill()
        live.wait()
    assert polls == [] and c.images == len(X)


def test_another_hosts_claim_with_a_stopped_heartbeat_is_taken_over(
        images, tiny_vit, counter, tmp_path, polls):
    X, ref, t, keys, folder = _setup(tiny_vit, images, tmp_path)
    probe = Claims(folder, _HOST)
    age = 300  # > HEARTBEAT_LOST_S (30 s), < the 600 s stale age
    fresh = f"other-host 1 {time.time():.3f} t 99 flock\n"
    _write(_claim_file(folder, keys[0]), fresh)
    assert probe.held_by_live_other(keys[0])  # heartbeat fresh: live, its pid not probed
    for key in keys[:5]:  # that host's process or the host is gone: heartbeat stopped
        _write(_claim_file(folder, key), fresh, age_s=age)
    c = counter(tiny_vit)
    with pytest.warns(FeatureStoreWarning, match="took over 5 claim.*for 30 s"):
        np.testing.assert_array_equal(t.transform(X), ref)
    assert polls == [] and c.images == len(X)
    assert _files(tmp_path, ".claim") == []


def test_a_holder_heartbeats_its_claims_and_holds_a_lock_until_release(tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(Claims, "heartbeat_s", 0.02, raising=False)
    holder, other = Claims(str(tmp_path), _HOST), Claims(str(tmp_path), "other-host")
    assert holder.claim(["aa1", "aa2"]) == (["aa1", "aa2"], [])
    path = holder.path("aa1")
    content = open(path).read().split()
    assert content[:2] == [_HOST, str(os.getpid())] and content[5] == "flock"
    with open(path, "rb") as f:  # the kernel's lock, held by the writer
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    old = time.time() - 3600
    os.utime(path, (old, old))
    for _ in range(500):  # the heartbeat thread refreshes it
        if os.stat(path).st_mtime > old + 1:
            break
        time.sleep(0.01)
    assert os.stat(path).st_mtime > old + 1
    assert other.held_by_live_other("aa1")
    holder.release(["aa1", "aa2"])
    assert not os.path.exists(path) and os.listdir(tmp_path / "aa") == []
    assert _claims._OPEN_FDS == set()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_temp_files_and_claims_of_a_zombie_writer_are_orphans(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; not reaped yet
    try:
        for _ in range(1000):
            if _state(proc.pid) == "Z":
                break
            time.sleep(0.01)
        assert _state(proc.pid) == "Z"
        folder = tmp_path / "ns" / "ab"
        folder.mkdir(parents=True)
        # killed between writing its claim's temp file and linking it, and an entry's
        (folder / f".abc.claim.{_HOST}.{proc.pid}.1234abcd.tmp").write_text("x")
        (folder / f".abc.npy.{_HOST}.{proc.pid}.5678abcd.tmp").write_text("x")
        (folder / "abc.claim").write_text(f"{_HOST} {proc.pid} {time.time():.3f} t\n")
        assert remove_orphan_temp_files(str(tmp_path / "ns")) == 3
        assert list(folder.iterdir()) == []
    finally:
        proc.wait()
