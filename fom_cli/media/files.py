"""The one way fom writes a file or a folder: into a hidden temporary beside it, renamed when complete.

A crash, Ctrl-C or SIGTERM mid-write therefore never leaves a half-written output, and an existing
file at the path stays intact until the new one is whole. Every writer of fom (images, videos, frame
folders, checkpoints, metrics, synth data sets) goes through `AtomicOutput`.
"""

import json
import os
import secrets
import shutil
import threading

from fom_cli.errors import BadOutput

# Temporaries not yet committed or discarded, so a signal handler can remove them (see cli.py).
_live_temporaries = set()
_live_lock = threading.Lock()


def temporary_path_beside(path) -> str:
    """A hidden, unused name next to `path`, on the same filesystem, so the final rename is atomic."""
    path = os.path.normpath(os.fspath(path))
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp-{secrets.token_hex(4)}")


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
    folder or nothing (callers refuse non-empty ones first); a file replaces a file.
    """

    def __init__(self, path, directory=False):
        self.path = os.fspath(path)
        self.directory = directory
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
        """Give the temporary the permissions a plain open() would, then rename it onto `path`."""
        try:
            if not self.directory:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self.temporary, 0o666 & ~umask)
            if self.directory and os.path.isdir(self.path) and not os.listdir(self.path):
                os.rmdir(self.path)  # an empty folder the user made for us: the rename needs the name
            os.replace(self.temporary, self.path)
        except OSError as error:
            self.discard()
            raise BadOutput(f"could not write {self.path} ({os_error_line(error)}); check the free disk "
                            f"space and permissions") from None
        self._forget()

    def discard(self):
        remove_path(self.temporary)
        self._forget()

    def _forget(self):
        with _live_lock:
            _live_temporaries.discard(self.temporary)


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
            raise BadOutput(f"could not write {path} ({os_error_line(error)}); check the free disk space "
                            f"and permissions") from None


def write_json(path, data):
    """Write `data` as indented JSON, atomically."""
    def write(temporary):
        with open(temporary, "w") as file:
            json.dump(data, file, indent=2)
            file.write("\n")
    write_bytes_with(path, write)
