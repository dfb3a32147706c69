"""Artifacts on disk: atomic writes, manifests, content hashes, the run's lock, process ranks.

    write_json_atomic / publish   a file or a finished folder appears whole or not at all
    read_manifest                 a stage's manifest.json, or None while it has not finished
    content_hash                  sha256 of a file, or of a folder's files (names and bytes)
    model_identity                what a model *is* for fingerprints: its content, or its hub id
    RunLock                       one run per output folder; a dead holder's lock is taken over
    ranks                         (rank, world size) of this process, from accelerate's PartialState
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

__all__ = ["hash_obj", "content_hash", "model_identity", "write_text_atomic", "write_json_atomic", "publish",
           "read_manifest", "RunLock", "RunLocked", "ranks", "wait_until"]


def hash_obj(obj) -> str:
    """A short sha256 of a JSON-serialisable object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


_HASHES: dict = {}  # (path, size, mtime_ns) → hash: one read per file and process


def _file_hash(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()[:16]
    return _HASHES[key]


def content_hash(path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes; dot-files left out).

    A folder's hash does not depend on where it lies, so a run copied elsewhere keeps its hashes.
    """
    path = Path(path)
    if path.is_file():
        return _file_hash(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return hash_obj([[p.relative_to(path).as_posix(), _file_hash(p)] for p in files])


def model_identity(name: str) -> str:
    """A model as fingerprints see it: "tiny", a local folder by its content, a hub id by its id."""
    if name == "tiny":
        return name
    if os.path.isdir(name):
        return "content:" + content_hash(name)
    return "hub:" + name


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def publish(tmp_dir: Path, final_dir: Path) -> None:
    """Rename a finished temporary folder into place (replacing an older artifact last)."""
    old = final_dir.with_name(final_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)


def read_manifest(stage_dir) -> dict | None:
    """The stage's manifest, or None when the stage has not finished."""
    path = Path(stage_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def wait_until(condition, poll_s: float = 0.5) -> None:
    """Block until condition() holds (torchrun ends every process if one dies, so no timeout)."""
    while not condition():
        time.sleep(poll_s)


def _process_start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (field 22 of /proc/PID/stat, Linux); None elsewhere."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def ranks() -> tuple[int, int]:
    """(rank, world size) of this process: accelerate's PartialState under torchrun / accelerate launch, (0, 1) alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes


# ---------------------------------------------------------------- the lock

class RunLocked(RuntimeError):
    """Another live process holds this output folder."""


class RunLock:
    """One run per output folder: `OUTPUT_DIR/.lock` names its holder (pid, host, start).

    A second run refuses at once with the holder's name; a lock whose process is gone is taken over:
    on the same host when its pid no longer runs, from another host (a Colab runtime that was recycled,
    with the run on Google Drive) when its heartbeat — the holder touches the file every
    HEARTBEAT_S seconds — is older than STALE_S. Re-entrant within a process (a notebook may call
    run_all twice). Only rank 0 of a launch holds it: the other ranks are the same run. Hand-written:
    a lock file (not flock) also works on the network and FUSE folders that runs are often kept on.
    """

    HEARTBEAT_S = 30.0
    STALE_S = 300.0
    _held: dict = {}  # resolved folder → [depth, stop event], for this process

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / ".lock"

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def _key(self) -> str:
        return str(self.folder.resolve())

    def acquire(self) -> None:
        if ranks()[0] != 0:
            return
        key = self._key()
        if key in RunLock._held:
            RunLock._held[key][0] += 1
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "start_ticks": _process_start_ticks(os.getpid())}  # the same pid with other ticks: a reused pid
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not self._dead(holder):
                    raise RunLocked(
                        f"{self.folder} is in use by process {holder.get('pid')} on {holder.get('host')} "
                        f"(started {holder.get('started')}): wait for it to finish or use another --output-dir; "
                        f"if that process is gone, delete {self.path}") from None
                self.path.unlink(missing_ok=True)  # a dead holder's (or an unreadable) lock: take it over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            RunLock._held[key] = [1, self._start_heartbeat()]
            return
        raise RunLocked(f"could not take the lock {self.path}: another process keeps taking it")

    def release(self) -> None:
        if ranks()[0] != 0:
            return
        key = self._key()
        depth, stop = RunLock._held.get(key, (0, None))
        if depth > 1:
            RunLock._held[key][0] = depth - 1
            return
        RunLock._held.pop(key, None)
        if stop is not None:
            stop.set()
        holder = self._holder()
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            # Being written right now (a few bytes): give the writer a moment.
            time.sleep(0.2)
            try:
                return json.loads(self.path.read_text())
            except (OSError, ValueError):
                return None

    def _start_heartbeat(self):
        """Touch the lock every HEARTBEAT_S seconds until released (a daemon thread: it dies with the process)."""
        import threading

        stop = threading.Event()

        def beat():
            while not stop.wait(self.HEARTBEAT_S):
                try:
                    os.utime(self.path)
                except OSError:
                    pass

        threading.Thread(target=beat, name="sppo-lite-lock-heartbeat", daemon=True).start()
        return stop

    def _dead(self, holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            # Another machine's processes cannot be seen: a silent heartbeat says the holder is gone.
            try:
                return time.time() - self.path.stat().st_mtime > self.STALE_S
            except OSError:
                return True
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return self._reused(holder)
        except (KeyError, TypeError, ValueError, OSError) as err:
            return getattr(err, "errno", None) == errno.ESRCH
        return self._reused(holder)

    @staticmethod
    def _reused(holder: dict) -> bool:
        """The pid runs, but it is another process than the holder (its start time, in clock ticks after boot,
        differs from the one the holder wrote): the holder died and its pid was reused. Ticks since boot do not
        move with the wall clock, so a clock step cannot make a live holder look reused."""
        ticks = _process_start_ticks(int(holder["pid"]))
        written = holder.get("start_ticks")
        return ticks is not None and isinstance(written, int) and not isinstance(written, bool) and ticks != written
