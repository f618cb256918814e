"""The one way fom writes a file or a folder: into a hidden temporary beside it, renamed when complete.

A crash, Ctrl-C, SIGTERM or a full disk mid-write therefore never leaves a half-written output, and an
existing file at the path stays intact until the new one is whole and flushed to the disk. Every writer
of fom (images, videos, frame folders, checkpoints, metrics, synth data sets) goes through `AtomicOutput`.

A temporary is named `.NAME.tmp-<pid>-<8 hex digits>`, with the id of the process writing it. Only
SIGKILL or a power cut leaves one behind; the next output fom writes into that folder names it (a note)
while it is young, and removes it once it is a day old and its process is gone
(`tidy_abandoned_temporaries`). Files named otherwise are never touched.
"""

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time

from fom_cli.errors import BadOutput

log = logging.getLogger("fom_cli")

# Temporaries not yet committed or discarded, so a signal handler can remove them (see cli.py).
_live_temporaries = set()
_live_lock = threading.Lock()

# Exactly the names temporary_path_beside gives: ".NAME.tmp-<pid>-<8 lowercase hex digits>".
TEMPORARY_NAME = re.compile(r"\..+\.tmp-(?P<pid>[1-9][0-9]{0,9})-[0-9a-f]{8}")
# A temporary this much older than its last write, whose process is gone, is removed rather than named.
ABANDONED_AFTER_SECONDS = 24 * 3600

# Folders whose abandoned temporaries this process has already looked at: once per folder is enough.
_tidied_folders = set()
_tidied_lock = threading.Lock()


def temporary_path_beside(path) -> str:
    """A hidden, unused name next to `path`, on the same filesystem, so the final rename is atomic. It
    holds this process's id, so a later run can tell a temporary of a killed run from a live one."""
    path = os.path.normpath(os.fspath(path))
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def process_is_running(pid) -> bool:
    """True when process `pid` exists (or when this cannot be told: then it may be writing)."""
    if os.name == "nt":
        return True  # os.kill on Windows terminates the process whatever the signal: never ask it there
    try:
        os.kill(pid, 0)  # signal 0 checks that the process exists, and sends nothing
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: it exists, but belongs to another user
        return True
    return True


def tidy_abandoned_temporaries(directory):
    """Name, or remove, the temporaries that killed runs of fom left in `directory` (once per process).

    A temporary whose process is still running is being written: it is left alone. One whose process is
    gone is named in a note, so the user can delete it, and removed once it has not been written for a
    day (a folder's time changes with each file added to it). Only names of fom's exact pattern count.
    """
    directory = directory or "."
    key = os.path.realpath(directory)
    with _tidied_lock:
        if key in _tidied_folders:
            return
        _tidied_folders.add(key)
    try:
        with os.scandir(directory) as entries:
            temporaries = [(entry, int(match["pid"])) for entry in entries
                           if (match := TEMPORARY_NAME.fullmatch(entry.name))]
    except OSError:
        return  # an unreadable folder: writing there will say what is wrong
    now = time.time()
    for entry, pid in temporaries:
        if process_is_running(pid):
            continue
        path = os.path.join(directory, entry.name)
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue  # removed meanwhile
        if age > ABANDONED_AFTER_SECONDS:
            remove_path(path)
            log.info(f"removed {path}, left from a fom run (pid {pid}) interrupted more than a day ago")
        else:
            log.info(f"{path} is left from an interrupted fom run (pid {pid}); remove it")


def remove_path(path):
    """Remove a file or a folder tree fom made; quietly, since this runs while cleaning up."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except OSError:
            pass


def os_error_line(error: OSError) -> str:
    """An OSError in a few words for a one-line message: "No space left on device", ..."""
    return error.strerror or str(error) or type(error).__name__


class AtomicOutput:
    """A temporary beside `path` that becomes `path` on `commit()`, or vanishes on `discard()`.

        with AtomicOutput("model.pth") as output:
            torch.save(state, output.temporary)

    As a context manager it commits when the block ends normally and discards on any exception. With
    `directory=True` the temporary is an empty folder, created at once. A folder replaces only an empty
    folder or nothing (callers refuse non-empty ones first); a file replaces a file. Making one first
    tidies the folder's abandoned temporaries (`tidy_abandoned_temporaries`).
    """

    def __init__(self, path, directory=False):
        self.path = os.fspath(path)
        self.directory = directory
        tidy_abandoned_temporaries(os.path.dirname(os.path.normpath(self.path)))
        self.temporary = temporary_path_beside(self.path)
        with _live_lock:
            _live_temporaries.add(self.temporary)
        if directory:
            try:
                os.mkdir(self.temporary)
            except OSError as error:
                self._forget()
                raise BadOutput(f"cannot create a folder next to {self.path} ({os_error_line(error)}); "
                                f"choose another output path") from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False

    def commit(self):
        """Give the temporary the permissions a plain open() would, flush it to the disk, then rename it
        onto `path` and flush the folder, so a power cut leaves the old output or the new one, whole."""
        try:
            if not self.directory:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self.temporary, 0o666 & ~umask)
            # A full disk or a failing one can surface only now (delayed allocation, network disks).
            flush_to_disk(self.temporary)
            if self.directory and os.path.isdir(self.path) and not os.listdir(self.path):
                os.rmdir(self.path)  # an empty folder the user made for us: the rename needs the name
            os.replace(self.temporary, self.path)
        except OSError as error:
            self.discard()
            raise could_not_write(self.path, os_error_line(error)) from None
        self._forget()
        flush_folder_to_disk(os.path.dirname(os.path.abspath(self.path)))

    def discard(self):
        remove_path(self.temporary)
        self._forget()

    def _forget(self):
        with _live_lock:
            _live_temporaries.discard(self.temporary)


def could_not_write(path, reason) -> BadOutput:
    """The one-line error for an output that could not be written, naming the cause ("File too large")."""
    return BadOutput(f"could not write {path} ({reason}); check the free disk space and permissions")


def flush_to_disk(path):
    """fsync a file, or every file and folder in a folder tree. OSError for a write that failed."""
    if not os.path.isdir(path):
        _fsync(path)
        return
    for folder, _, names in os.walk(path):
        for name in names:
            _fsync(os.path.join(folder, name))
        flush_folder_to_disk(folder)


def flush_folder_to_disk(folder):
    """fsync a folder, so a rename in it survives a power cut; where the OS allows it (Windows does not
    open folders). Quietly: it runs after the rename, when the new output is in place whatever it says."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _fsync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        # Some systems and filesystems cannot fsync a file opened read-only, or at all: nothing to flush.
        if error.errno not in (errno.EBADF, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EINVAL)):
            raise
    finally:
        os.close(descriptor)


def make_directories(directory):
    """Create `directory` and its missing parents and check that fom may write there; returns the
    folders it created (an abandoned output removes them again with `remove_directories`)."""
    missing = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    created = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except OSError as error:
            remove_directories(created)
            reason = "it is a file" if os.path.isfile(folder) else os_error_line(error)
            raise BadOutput(f"cannot create the output folder {folder} ({reason}); "
                            f"choose another output path") from None
        created.append(folder)
    try:
        check_writable(missing[0] if missing else directory)
    except BadOutput:
        remove_directories(created)
        raise
    return created


def remove_directories(created):
    """Remove folders `make_directories` created, deepest first, if they are still empty."""
    for folder in reversed(created):
        try:
            os.rmdir(folder)
        except OSError:
            pass


def check_writable(directory):
    """BadOutput unless a new file can be created in `directory` (permissions, read-only disks)."""
    probe_path = os.path.join(directory or ".", f".fom-write-test-{secrets.token_hex(4)}")
    try:
        with open(probe_path, "xb"):
            pass
        os.remove(probe_path)
    except OSError as error:
        raise BadOutput(f"cannot write to the output folder {directory} ({os_error_line(error)}); "
                        f"choose another output path") from None


def same_path(a, b) -> bool:
    """True when `a` and `b` name one file or folder: the same path after links, or one file under two
    names (a hard link). Neither needs to exist."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): not the same
        return False


def check_parent_writable(path):
    """BadOutput unless the folder that will hold `path` can be made and written: the nearest existing
    ancestor must be a folder fom may write in. Creates nothing that stays, so commands call it for every
    output before slow work."""
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    while not os.path.exists(directory):
        directory = os.path.dirname(directory)
    if not os.path.isdir(directory):
        raise BadOutput(f"cannot write {path}: {directory} is a file; choose another output path")
    check_writable(directory)


def discard_all_temporaries():
    """Remove every temporary still being written (for a signal handler that is about to exit)."""
    with _live_lock:
        pending = list(_live_temporaries)
        _live_temporaries.clear()
    for temporary in pending:
        remove_path(temporary)


def write_bytes_with(path, write):
    """Write a file atomically by calling `write(temporary_path)`; OSError becomes one BadOutput line."""
    with AtomicOutput(path) as output:
        try:
            write(output.temporary)
        except OSError as error:
            raise could_not_write(path, os_error_line(error)) from None


def write_json(path, data):
    """Write `data` as indented JSON, atomically."""
    def write(temporary):
        with open(temporary, "w") as file:
            json.dump(data, file, indent=2)
            file.write("\n")
    write_bytes_with(path, write)


def file_sha256(path, on_block=None):
    """The hex sha256 of a file, read a MiB at a time; on_block(size) after each block (a progress bar)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
            if on_block is not None:
                on_block(len(block))
    return digest.hexdigest()
