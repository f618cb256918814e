"""A --checkpoint value to a local, checked file: an existing path as it is, else a released model's name
(fom_cli/registry.py), downloaded on first use with a progress bar, checked and slimmed, then read from
the cache ever after.

Downloads that cannot be corrupted:
- each URL has its own partial file (cache/.parts/), resumed only with `If-Range` on the ETag or
  Last-Modified date of the reply that started it: a server whose file changed sends the whole new file,
  and a partial file is never continued with another file's bytes;
- a `206` that starts elsewhere than asked, or a `200` to a range request, starts the file again;
- redirects are followed by hand, so that one from https to plain http is refused;
- a per-model lock makes two processes take turns; a waiting one gives up, naming the lock and the
  process holding it, when that process makes no progress for FOM_LOCK_TIMEOUT seconds (default 300).
Checking: `registry.verification` ("sha256", "structure" or "digest unknown: <hex>", the last with a
warning). A download that fails its check is deleted (it is fom's own); a file the user put in the cache
that fails is moved aside to NAME.rejected, never deleted.

requests does the HTTP (streaming, Range, proxies from the environment) and filelock the cross-process
lock; they are imported only when a download happens, so animating from the cache stays as fast as before.
"""

import contextlib
import dataclasses
import glob
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin, urlsplit

from fom_cli.errors import BadCheckpoint, BadInput, BadOutput, FomError
from fom_cli.media.files import file_sha256, os_error_line, remove_path, write_json
from fom_cli.progress import progress_bar
from fom_cli.registry import (NAME_PATTERN, checkpoints_dir, full_path, is_offline, legacy_part_path, load_registry,
                              lookup, origin_path, part_path, parts_dir, rejected_path, slim_path, url_allowed,
                              verification)

log = logging.getLogger("fom_cli")

# (connect, read) seconds: a server that accepts nothing, or stops sending, fails the URL instead of hanging.
HTTP_TIMEOUTS = (15, 60)
# What a cut connection loses: the bytes of the read it interrupts.
DOWNLOAD_CHUNK_BYTES = 64 << 10
# Each retry of a cut connection must have received more bytes than the one before; this bounds the rest.
MAX_ATTEMPTS_PER_URL = 50
# A server that cannot say which file it sends (no ETag, no Last-Modified) cannot be resumed safely: a cut
# download starts again from the first byte, this many times at most.
MAX_RESTARTS_WITHOUT_VALIDATOR = 2
MAX_REDIRECTS = 10
LOCK_TIMEOUT_SECONDS = 300


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
    name = str(name_or_path)
    is_name = bool(NAME_PATTERN.fullmatch(name))
    if path.exists():
        models = load_registry() if is_name else {}
        if name not in models:
            return path
        # A file or folder here spelled like a released model: say which one is taken.
        from fom_cli.checkpoint import why_not_a_checkpoint

        if path.is_file() and why_not_a_checkpoint(path) is None:
            note(quiet, f"using the file {path.resolve()}, not the released model '{name}' (`fom download {name}` "
                     "prints the cached model's path, to pass instead)")
            return path
        kind = "a folder" if path.is_dir() else "a file that is not a checkpoint"
        note(quiet, f"./{name} is {kind}, so --checkpoint {name} means the released model '{name}'")
        return ensure_cached(models[name], quiet=quiet, full=full)
    if not is_name:
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
    slim, original = slim_path(model), full_path(model)
    if not full and slim.is_file():
        return slim
    from fom_cli.config import load_config

    config = load_config(model.config)  # a registry naming a broken config stops before any download
    try:
        parts_dir().mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadOutput(f"cannot create the model cache {checkpoints_dir()} ({os_error_line(error)}); set "
                        "FOM_HOME to a writable folder") from None
    with download_lock(model, quiet):
        # Another process may have fetched it while this one waited for the lock.
        if not full and slim.is_file():
            return slim
        downloaded = None
        if original.is_file():
            # Kept by --keep-full, or put there by hand and never checked: check it every time it is read
            # whole (training starts), and once for animation (then the slim file serves).
            try:
                checkpoint, digest = verify(original, model, config, quiet)
            except VerificationFailed as failure:
                aside = move_aside(original, model)
                raise BadCheckpoint(f"{original} is not the '{model.name}' checkpoint: {failure}; moved it to "
                                    f"{aside} (`fom download {model.name}` fetches the released file)") from None
            source = "the cache (put there by hand or kept by --keep-full)"
        elif is_offline():
            missing = f"the whole original of model '{model.name}' (training needs it)" if slim.is_file() else \
                f"model '{model.name}'"
            raise FomError(f"{missing} is not in the cache and FOM_OFFLINE is set; download "
                           f"{' or '.join(model.urls)} and put it at {original} (fom checks it on first use)")
        else:
            checkpoint, digest, downloaded, source = download_verified(model, config, quiet)
        warn_if_digest_unknown(model, digest, f"the file from {source}" if downloaded else str(original))
        if not slim.is_file():
            write_slim(model, checkpoint, config, digest, slim)
            write_json(origin_path(model), {"file": model.file, "sha256": digest,
                                            "size": (downloaded or original).stat().st_size, "source": source,
                                            "checked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        del checkpoint
        if downloaded is not None:
            if full:
                commit_download(downloaded, original)
            else:
                discard_download(downloaded)
            kept = f"kept the original at {original}" if full else \
                f"kept what animation needs at {slim} ({slim.stat().st_size / 2 ** 20:.1f} MiB)"
            note(quiet, f"downloaded {model.name} from {source}, checked it ({verification(model, digest)}); {kept}")
        elif not full:
            note(quiet, f"checked {original} ({verification(model, digest)}); kept what animation needs at {slim}")
    return original if full else slim


def note(quiet, message):
    """A note on stderr through the CLI's handler (none with --quiet; the Python API shows notes only if asked)."""
    if not quiet:
        log.info(message)


def warn_if_digest_unknown(model, digest, what):
    """Digests are published and this file matches none, yet its tensors fit: say so, with its digest."""
    if model.sha256 and digest not in model.sha256:
        log.warning(f"{what} has sha256 {digest}, which is not among the published digests of '{model.name}'; its "
                    "tensors fit the model, so it is used (please report the digest if this is a known copy)")


def move_aside(path, model):
    """A file the user put in the cache failed its check: rename it, never delete it (it may be a 700 MB
    download of something else they want)."""
    aside = rejected_path(model)
    try:
        os.replace(path, aside)
    except OSError as error:
        raise BadOutput(f"{path} failed its check and could not be moved aside to {aside} "
                        f"({os_error_line(error)}); move or remove it yourself") from None
    return aside


# --- taking turns -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def download_lock(model, quiet):
    """Hold the model's lock file: two processes fetching one model (two `fom batch --shard` runs) take turns,
    and the second finds the first one's file. The holder writes its process id beside the lock, so that a
    waiting process can say who holds it. A process that dies releases the lock with it (an OS file lock)."""
    from filelock import FileLock, Timeout

    locks = checkpoints_dir() / ".locks"
    locks.mkdir(exist_ok=True)
    lock_file = locks / f"{model.file}.lock"
    owner_file = locks / f"{model.file}.owner"
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        wait_for_lock(lock, lock_file, owner_file, model, quiet)
    try:
        owner_file.write_text(f"{os.getpid()} {socket.gethostname()}\n")
        yield
    finally:
        with contextlib.suppress(OSError):
            owner_file.unlink()
        lock.release()


def wait_for_lock(lock, lock_file, owner_file, model, quiet):
    """Wait while the holder's download grows; give up after FOM_LOCK_TIMEOUT seconds without progress."""
    from filelock import Timeout

    limit = lock_timeout()
    try:
        owner = owner_file.read_text().split()[0]
    except (OSError, IndexError):
        owner = "unknown"
    note(quiet, f"another fom process (pid {owner}) is fetching {model.name}; waiting for it")
    progress, since = download_progress(model), time.monotonic()
    while True:
        try:
            lock.acquire(timeout=min(1.0, limit))
            return
        except Timeout:
            now = download_progress(model)
            if now != progress:
                progress, since = now, time.monotonic()
            elif time.monotonic() - since >= limit:
                raise FomError(f"another process (pid {owner}) has held {lock_file} for {limit:g} s without "
                               f"progress on '{model.name}'; end it, or wait and run again (FOM_LOCK_TIMEOUT "
                               "sets how long to wait)") from None


def lock_timeout():
    value = os.environ.get("FOM_LOCK_TIMEOUT", "")
    try:
        seconds = float(value) if value else LOCK_TIMEOUT_SECONDS
    except ValueError:
        raise BadInput(f"FOM_LOCK_TIMEOUT must be a number of seconds, not '{value}'") from None
    if seconds <= 0:
        raise BadInput(f"FOM_LOCK_TIMEOUT must be a positive number of seconds, not '{value}'")
    return seconds


def download_progress(model):
    """What the holder of the lock has done so far: the sizes of this model's partial downloads and cache files."""
    paths = list(parts_dir().glob(f"{glob.escape(model.file)}.*")) + [slim_path(model), full_path(model)]
    sizes = []
    for path in paths:
        with contextlib.suppress(OSError):
            sizes.append((path.name, path.stat().st_size))
    return sorted(sizes)


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
    with progress_bar(total=os.path.getsize(path), unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                      disable=quiet, leave=False) as progress:
        return file_sha256(path, progress.update)


def verify(path, model, config, quiet):
    """(checkpoint, sha256) of a file that is `model`; VerificationFailed says why it is not. A digest the
    registry accepts proves the bytes; the structure check runs all the same (a user registry may pair a
    file with the wrong config) and is the only proof where no digest matches."""
    digest = sha256_of(path, quiet, f"checking {model.name}")
    try:
        return FAMILIES[model.family].load_checked(path, config), digest
    except VerificationFailed as failure:
        if model.sha256 and digest not in model.sha256:
            published = " or ".join(model.sha256)
            raise VerificationFailed(f"its sha256 is {digest} where the registry says {published}, and {failure}") \
                from None
        raise


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

def download_verified(model, config, quiet):
    """Fetch the model URL after URL until one delivers a file that passes the check. Returns (checkpoint,
    sha256, the downloaded file, url). A file that fails is deleted; a cut download stays for the next run."""
    remove_path(legacy_part_path(model))
    failures = []
    for url in model.urls:
        part = part_path(model, url)
        try:
            download(url, part, model, quiet)
        except UrlFailed as failure:
            failures.append(f"{url}: {failure}")
            continue
        try:
            return (*verify(part, model, config, quiet), part, url)
        except VerificationFailed as failure:
            discard_download(part)
            failures.append(f"{url} served a file that failed the check: {failure}; deleted it")
    resumable = [part_path(model, url) for url in model.urls if part_path(model, url).exists()]
    resume = f"; the partial download {resumable[0]} resumes next time" if resumable else ""
    raise FomError(f"could not download model '{model.name}' ({'; '.join(failures)}){resume}; or download it by "
                   f"hand and put it at {full_path(model)}")


def record_path(part):
    """The JSON beside a partial download: its URL and the validator (ETag or Last-Modified) that started it."""
    return part.with_name(part.name + ".json")


def commit_download(part, destination):
    os.replace(part, destination)
    remove_path(record_path(part))


def discard_download(part):
    remove_path(part)
    remove_path(record_path(part))


def read_validator(part, url):
    """The validator a partial download was started with, or None when it cannot be resumed safely."""
    try:
        record = json.loads(record_path(part).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("url") != url or not isinstance(record.get("validator"), str):
        return None
    return record["validator"]


def response_validator(response):
    """What identifies the file a reply carries, for If-Range: a strong ETag, else Last-Modified. A weak ETag
    (W/"...") may not be used in If-Range (RFC 9110 13.1.5)."""
    etag = response.headers.get("ETag", "")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified") or None


def download(url, part, model, quiet):
    """Download `url` into `part`, resuming what an earlier attempt with the same validator left there. A
    connection cut mid-way is resumed at once as long as each attempt gets further than the last."""
    validator = read_validator(part, url)
    if validator is None:  # nothing, or bytes of unknown origin: start from the first byte
        discard_download(part)
    progress = None  # made at the first answer, so that a URL that never answers prints no empty bar
    restarts = 0
    try:
        for _ in range(MAX_ATTEMPTS_PER_URL):
            have = part.stat().st_size if part.exists() else 0
            if model.size is not None and have > model.size:
                discard_download(part)
                have, validator = 0, None
            headers = {"Range": f"bytes={have}-", "If-Range": validator} if have else {}
            with open_url(url, headers, model) as response:
                status = response.status_code
                if status == 416 and have:
                    # Nothing left to send from `have` on: the part is whole, or longer than the file.
                    if content_range_total(response) == have:
                        return
                    discard_download(part)
                    continue
                if status not in (200, 206):
                    raise UrlFailed(f"HTTP {status} {response.reason or ''}".strip())
                if status == 206 and (content_range_start(response) != have or not same_file(response, validator)):
                    # Bytes from somewhere else than asked, or of another file: start again from the first.
                    discard_download(part)
                    continue
                if status == 200 or not have:
                    # The whole file: the server ignores ranges, or If-Range said the file has changed.
                    have, validator = 0, response_validator(response)
                    start_record(part, url, validator)
                total = response_total(response, have)
                if model.size is not None and total is not None and total != model.size:
                    raise UrlFailed(f"it serves {total:,} bytes where the registry says {model.size:,}")
                if progress is None:
                    progress = progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                            desc=f"downloading {model.name}", disable=quiet)
                progress.reset(total=total)
                progress.update(have)
                cut = write_body(response, part, have, progress, total)
            if cut is None:
                return
            now = part.stat().st_size if part.exists() else 0
            if validator is None:
                # No way to ask for "the rest of this same file": start again, a bounded number of times.
                restarts += 1
                if restarts > MAX_RESTARTS_WITHOUT_VALIDATOR:
                    raise UrlFailed(f"{cut}, and the server names no ETag or date to resume by")
                discard_download(part)
            elif now <= have:
                raise UrlFailed(cut)
            # It got further: ask for the rest.
        raise UrlFailed(f"still incomplete after {MAX_ATTEMPTS_PER_URL} attempts")
    finally:
        if progress is not None:
            progress.close()


def start_record(part, url, validator):
    """Begin a new partial download: its bytes are cleared, and its validator written beside it."""
    try:
        part.write_bytes(b"")
        if validator:
            record_path(part).write_text(json.dumps({"url": url, "validator": validator}))
        else:
            remove_path(record_path(part))
    except OSError as error:
        raise BadOutput(f"could not write {part} ({os_error_line(error)}); check the free disk space or set "
                        "FOM_HOME") from None


def same_file(response, validator):
    """False when a partial reply names a validator of its own that differs from the one we resume."""
    sent = response_validator(response)
    return sent is None or validator is None or sent == validator


@contextlib.contextmanager
def open_url(url, headers, model):
    """A streaming GET of `url`, following redirects by hand: each hop must be https, or plain http to this
    machine (or where the model's user registry entry allows it); https never leads to plain http."""
    import requests

    current = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = requests.get(current, headers=headers, stream=True, timeout=HTTP_TIMEOUTS,
                                    allow_redirects=False)
        except requests.RequestException as error:
            raise UrlFailed(network_reason(error)) from None
        if response.status_code not in (301, 302, 303, 307, 308) or "Location" not in response.headers:
            try:
                yield response
            finally:
                response.close()
            return
        target = urljoin(current, response.headers["Location"])
        response.close()
        if urlsplit(current).scheme == "https" and urlsplit(target).scheme != "https":
            raise UrlFailed(f"it redirects to {target}, which is not https; fom does not follow a secure download "
                            "to an insecure address")
        if not url_allowed(target, model):
            raise UrlFailed(f"it redirects to {target}, which is plain http")
        current = target
    raise UrlFailed(f"more than {MAX_REDIRECTS} redirects")


def write_body(response, part, have, progress, total):
    """Append the response body to `part` (which holds `have` bytes). Returns None when the file is whole
    (or its size unknown and the body ended), else a few words on why it is not."""
    import requests

    received = 0
    try:
        with open(part, "r+b" if part.exists() else "wb") as file:
            file.seek(have)
            file.truncate()
            try:
                for chunk in response.iter_content(DOWNLOAD_CHUNK_BYTES):
                    file.write(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
            except (requests.RequestException, ConnectionError, TimeoutError) as error:
                cut = network_reason(error)  # the network's fault (requests' errors are OSErrors too)
            else:
                cut = None if total is None or have + received == total else "the connection closed early"
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        raise BadOutput(f"could not write {part} ({os_error_line(error)}); check the free disk space or set "
                        "FOM_HOME") from None
    return cut


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
