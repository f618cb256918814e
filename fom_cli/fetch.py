"""A --checkpoint value to a local, checked file: an existing path as it is, else a released model's name
(fom_cli/registry.py), downloaded on first use with a progress bar, checked and slimmed, then read from
the cache ever after.

A download goes to <file>.part and resumes (HTTP Range) after a cut connection or an interrupted run; a
per-model file lock makes two processes fetching one model take turns. Checking: sha256 when the
registry has it; else the size when known, and always a weights_only=True load whose every tensor must
fit the entry's config. A file that fails is deleted and never used.

requests does the HTTP (streaming, Range, proxies from the environment) and filelock the cross-process
lock; they are imported only when a download happens, so animating from the cache stays as fast as before.
"""

import contextlib
import dataclasses
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Callable

from fom_cli.errors import BadCheckpoint, BadInput, BadOutput, FomError
from fom_cli.media.files import os_error_line, remove_path
from fom_cli.progress import progress_bar
from fom_cli.registry import (NAME_PATTERN, checkpoints_dir, full_path, is_offline, load_registry, lookup, part_path, slim_path)

# (connect, read) seconds: a server that accepts nothing, or stops sending, fails the URL instead of hanging.
HTTP_TIMEOUTS = (15, 60)
HASH_CHUNK_BYTES = 1 << 20
# What a cut connection loses: the bytes of the read it interrupts.
DOWNLOAD_CHUNK_BYTES = 64 << 10
# Each retry of a cut connection must have received more bytes than the one before; this bounds the rest.
MAX_ATTEMPTS_PER_URL = 50


class VerificationFailed(Exception):
    """A file is not the model the registry describes; the message says why (a clause, not a sentence)."""


class UrlFailed(Exception):
    """One URL could not deliver the file; the message is a few words (HTTP 404, Connection refused, ...)."""


# --- name or path -----------------------------------------------------------------------------------------

def resolve_checkpoint(name_or_path, quiet=False, full=False):
    """The local file for a --checkpoint value: the path when it exists, else the registry model of that name,
    downloaded and checked on first use. `full`: the whole original (training state included), not the slim
    file animation needs. None stays None (the caller's default applies)."""
    if name_or_path is None:
        return None
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if not NAME_PATTERN.fullmatch(name):
        # A path that does not exist: the caller's reader says so, unless it is a released file's name.
        released = [model for model in load_registry().values() if model.file == path.name]
        if released:
            raise BadInput(f"checkpoint {path} does not exist; `--checkpoint {released[0].name}` downloads "
                           f"{released[0].file} into {checkpoints_dir()}")
        return path
    return ensure_cached(lookup(name), quiet=quiet, full=full)


def checkpoint_or_bundled(name_or_path, quiet=False):
    """--checkpoint's file for animation: resolved as above, or the bundled model when none was given."""
    from fom_cli.checkpoint import default_checkpoint

    return resolve_checkpoint(name_or_path, quiet) or default_checkpoint()


def ensure_cached(model, quiet=False, full=False):
    """The cached file of `model` (the slim one, or with `full` the original), fetching and checking it first
    when needed. The slim file is made whenever the original passes its check."""
    slim, original, part = slim_path(model), full_path(model), part_path(model)
    if not full and slim.is_file():
        return slim
    from fom_cli.config import load_config

    config = load_config(model.config)  # a registry naming a broken config stops before any download
    try:
        checkpoints_dir().mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadOutput(f"cannot create the model cache {checkpoints_dir()} ({os_error_line(error)}); set "
                        "FOM_HOME to a writable folder") from None
    with download_lock(model, quiet):
        # Another process may have fetched it while this one waited for the lock.
        if not full and slim.is_file():
            return slim
        if original.is_file():
            # Kept by --keep-full, or put there by hand and never checked: check it every time it is read
            # whole (training starts), and once for animation (then the slim file serves).
            try:
                checkpoint, digest = verify(original, model, config, quiet)
            except VerificationFailed as failure:
                remove_path(original)
                raise BadCheckpoint(f"{original} is not the '{model.name}' checkpoint: {failure}; deleted it "
                                    f"(`fom download {model.name}` fetches it again)") from None
            fetched_from = None
            if not full and not quiet:
                print(f"note: checked {original} ({check_summary(model)}); kept what animation needs at {slim}",
                      file=sys.stderr)
        elif is_offline():
            missing = f"the whole original of model '{model.name}' (training needs it)" if slim.is_file() else \
                f"model '{model.name}'"
            raise FomError(f"{missing} is not in the cache and FOM_OFFLINE is set; download "
                           f"{' or '.join(model.urls)} and put it at {original} (fom checks it on first use)")
        else:
            checkpoint, digest, fetched_from = download_verified(model, config, part, quiet)
        if not slim.is_file():
            write_slim(model, checkpoint, config, digest, slim)
        del checkpoint
        if fetched_from is not None:
            if full:
                os.replace(part, original)
            else:
                os.remove(part)
            if not quiet:
                kept = f"kept the original at {original}" if full else \
                    f"kept what animation needs at {slim} ({slim.stat().st_size / 2 ** 20:.1f} MiB)"
                print(f"note: downloaded {model.name} from {fetched_from}, checked it ({check_summary(model)}); "
                      f"{kept}", file=sys.stderr)
    return original if full else slim


def check_summary(model):
    """How a file of `model` is checked, in a few words for the note after a download."""
    published = ("sha256, " if model.sha256 else "") + ("size, " if model.size else "")
    return f"{published}every tensor against the config" + ("" if model.sha256 else "; no sha256 is published")


@contextlib.contextmanager
def download_lock(model, quiet):
    """Hold the model's lock file: two processes fetching one model (two `fom batch --shard` runs) take turns,
    and the second finds the first one's file."""
    from filelock import FileLock, Timeout

    locks = checkpoints_dir() / ".locks"
    locks.mkdir(exist_ok=True)
    lock = FileLock(str(locks / f"{model.file}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not quiet:
            print(f"note: another fom process is fetching {model.name}; waiting for it", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# --- checking ---------------------------------------------------------------------------------------------

def load_fomm_checked(path, config):
    """A FOMM checkpoint whose every tensor fits `config` (generator, keypoint detector, and the discriminator
    when both have one), loaded with weights_only=True."""
    from fom_cli.checkpoint import expected_shapes, read_checkpoint, shape_mismatches

    try:
        checkpoint = read_checkpoint(path)
    except FomError as error:
        raise VerificationFailed(f"it does not load as a FOMM checkpoint ({error})") from None
    if "generator" not in checkpoint:
        raise VerificationFailed("it is a TPSMM checkpoint, not a FOMM one")
    networks = ("generator", "kp_detector")
    if "discriminator" in checkpoint and "discriminator_params" in config["model_params"]:
        networks += ("discriminator",)
    problems = shape_mismatches(checkpoint, expected_shapes(config, networks))
    if problems:
        raise VerificationFailed(f"its tensors do not fit config {config.get('_name', 'config')} ({problems[0]})")
    return checkpoint


def load_tpsmm_checked(path, config):
    """A TPSMM checkpoint whose every tensor fits `config`: inpainting, dense motion and keypoint networks,
    the AVD network when the file has one, the background predictor when the file and the config have one
    (the file may keep it where the config has none: animation never uses it). weights_only=True."""
    from fom_cli.checkpoint import checkpoint_family, expected_shapes, read_checkpoint, shape_mismatches

    try:
        checkpoint = read_checkpoint(path)
    except FomError as error:
        raise VerificationFailed(f"it does not load as a TPSMM checkpoint ({error})") from None
    if checkpoint_family(checkpoint) != "tpsmm":
        raise VerificationFailed("it is a FOMM checkpoint, not a TPSMM one")
    networks = ["inpainting_network", "dense_motion_network", "kp_detector"]
    networks += [name for name in ("avd_network", "bg_predictor")
                 if name in checkpoint and (name != "bg_predictor" or config["model_params"]["common_params"].get("bg"))]
    problems = shape_mismatches(checkpoint, expected_shapes(config, networks))
    if problems:
        raise VerificationFailed(f"its tensors do not fit config {config.get('_name', 'config')} ({problems[0]})")
    return checkpoint


@dataclasses.dataclass(frozen=True)
class Family:
    """What fom needs to know of a model family to check and slim its checkpoints."""
    load_checked: Callable          # (path, config) -> checkpoint dict; raises VerificationFailed
    animation_networks: tuple       # what the slim file keeps


# A new family adds its loader here and its name to registry.FAMILY_NAMES. Networks a checkpoint lacks (a
# TPSMM file without avd_network) are left out of its slim file.
FAMILIES = {"fomm": Family(load_checked=load_fomm_checked, animation_networks=("generator", "kp_detector")),
            "tpsmm": Family(load_checked=load_tpsmm_checked,
                            animation_networks=("inpainting_network", "dense_motion_network", "kp_detector",
                                                "avd_network"))}


def sha256_of(path, quiet, label):
    digest = hashlib.sha256()
    with open(path, "rb") as file, progress_bar(total=os.path.getsize(path), unit="B", unit_scale=True,
                                                 unit_divisor=1024, desc=label, disable=quiet,
                                                 leave=False) as progress:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            progress.update(len(chunk))
    return digest.hexdigest()


def verify(path, model, config, quiet):
    """(checkpoint, sha256) of a file that is `model`; VerificationFailed says why it is not."""
    size = os.path.getsize(path)
    if model.size is not None and size != model.size:
        raise VerificationFailed(f"it has {size:,} bytes where the registry says {model.size:,}")
    digest = sha256_of(path, quiet, f"checking {model.name}")
    if model.sha256 and digest != model.sha256:
        raise VerificationFailed(f"its sha256 is {digest} where the registry says {model.sha256}")
    # Also with a matching sha256: a user registry may pair a file with the wrong config.
    return FAMILIES[model.family].load_checked(path, config), digest


def write_slim(model, checkpoint, config, digest, path):
    from fom_cli.checkpoint import save_checkpoint, slim_checkpoint

    networks = [network for network in FAMILIES[model.family].animation_networks if network in checkpoint]
    slim = slim_checkpoint(checkpoint, config, networks, registry_name=model.name, exported_from=model.file,
                           original_sha256=digest)
    try:
        save_checkpoint(path, slim)  # names the OS's reason where torch.save says "unexpected pos ..."
    except BadOutput as error:
        raise BadOutput(f"{error}, or set FOM_HOME to keep the models elsewhere") from None


# --- downloading ------------------------------------------------------------------------------------------

def download_verified(model, config, part, quiet):
    """Fetch the model into `part`, URL after URL, until one delivers a file that passes the check.
    Returns (checkpoint, sha256, url). A file that fails is deleted; a cut download stays for the next run."""
    failures = []
    for url in model.urls:
        try:
            download(url, part, model, quiet)
        except UrlFailed as failure:
            failures.append(f"{url}: {failure}")
            continue
        try:
            return (*verify(part, model, config, quiet), url)
        except VerificationFailed as failure:
            remove_path(part)
            failures.append(f"{url} served a file that failed the check: {failure}; deleted it")
    resume = f"; the partial download {part} resumes next time" if part.exists() else ""
    raise FomError(f"could not download model '{model.name}' ({'; '.join(failures)}){resume}; or download it by "
                   f"hand and put it at {full_path(model)}")


def download(url, part, model, quiet):
    """Download `url` into `part`, continuing from what `part` already holds (HTTP Range). A connection cut
    mid-way is resumed at once as long as each attempt gets further than the last."""
    import requests

    progress = None  # made at the first answer, so that a URL that never answers prints no empty bar
    try:
        for _ in range(MAX_ATTEMPTS_PER_URL):
            have = part.stat().st_size if part.exists() else 0
            if model.size is not None and have >= model.size:
                if have == model.size:
                    return  # complete: an earlier run was stopped between download and check
                remove_path(part)
                have = 0
            try:
                response = requests.get(url, headers={"Range": f"bytes={have}-"} if have else {}, stream=True,
                                        timeout=HTTP_TIMEOUTS)
            except requests.RequestException as error:
                raise UrlFailed(network_reason(error)) from None
            with response:
                if response.status_code == 416 and have:
                    # Nothing left to send from `have` on: the part is whole, or longer than the file.
                    if content_range_total(response) == have:
                        return
                    remove_path(part)
                    continue
                if response.status_code not in (200, 206):
                    raise UrlFailed(f"HTTP {response.status_code} {response.reason or ''}".strip())
                if response.status_code == 200 or content_range_start(response) != have:
                    have = 0  # the server sends the whole file (it ignored the Range): start again
                total = response_total(response, have)
                if model.size is not None and total is not None and total != model.size:
                    raise UrlFailed(f"it serves {total:,} bytes where the registry says {model.size:,}")
                if progress is None:
                    progress = progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                            desc=f"downloading {model.name}", disable=quiet)
                progress.reset(total=total)
                progress.update(have)
                try:
                    received = write_body(response, part, have, progress)
                except (requests.RequestException, ConnectionError, TimeoutError) as error:
                    cut = network_reason(error)
                else:
                    cut = None if total is None or have + received == total else "the connection closed early"
            if cut is None:
                return
            now = part.stat().st_size if part.exists() else 0
            if now <= have:
                raise UrlFailed(cut)
            # It got further: ask for the rest.
        raise UrlFailed(f"still incomplete after {MAX_ATTEMPTS_PER_URL} attempts")
    finally:
        if progress is not None:
            progress.close()


def write_body(response, part, have, progress):
    """Append the response body to `part` (or start it when `have` is 0); returns the bytes received."""
    import requests

    received = 0
    try:
        with open(part, "ab" if have else "wb") as file:
            for chunk in response.iter_content(DOWNLOAD_CHUNK_BYTES):
                file.write(chunk)
                received += len(chunk)
                progress.update(len(chunk))
            file.flush()
            os.fsync(file.fileno())
    except (requests.RequestException, ConnectionError, TimeoutError):
        raise  # the network's fault (requests' errors are OSErrors too): the caller resumes or gives up
    except OSError as error:
        raise BadOutput(f"could not write {part} ({os_error_line(error)}); check the free disk space or set "
                        "FOM_HOME") from None
    return received


def content_range_start(response):
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def content_range_total(response):
    match = re.search(r"/(\d+)$", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def response_total(response, have):
    """The whole file's size from a 200 or 206 response, or None when the server does not say."""
    total = content_range_total(response) if response.status_code == 206 else None
    if total is None and response.headers.get("Content-Length", "").isdigit():
        total = have + int(response.headers["Content-Length"])
    return total


def network_reason(error):
    """A few words for a requests error, whose text nests several exceptions: the innermost [Errno] text."""
    import requests

    if isinstance(error, requests.Timeout):
        return "timed out"
    text = str(error)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if match:
        return match.group(1).strip()
    if "IncompleteRead" in text or "Connection broken" in text:
        return "the connection closed early"
    return text.splitlines()[0][:120] if text else type(error).__name__
