"""Released checkpoints by name: `--checkpoint vox` downloads, verifies and caches, like whisper's models.

The registry (registry.yaml, package data, plus any files named by FOM_REGISTRY) gives every model a
name, its family and config, and the URLs to try in order. The first use of a name downloads the file
with a progress bar, checks it and keeps what animation needs; every later use reads the cache and
never touches the network.

Cache: $FOM_HOME if set, else the platform's user cache (~/.cache/fom on Linux, following
XDG_CACHE_HOME); models live in its checkpoints/ folder:

  vox.slim.pth           generator, keypoint detector and config: what animation loads (a third of the size;
                         for TPSMM models the inpainting, dense motion, keypoint and AVD networks)
  vox.origin.json        where it came from: the original's sha256 and size, the URL (or "put there by hand")
  vox-cpk.pth.tar        the original, kept with `fom download --keep-full` or when training reads it;
                         also where a file fetched by hand goes (it is checked on first use)
  vox-cpk.pth.tar.rejected  a file put there by hand that failed the check, moved aside (never deleted)
  .parts/                downloads under way: one file per URL, with the ETag or Last-Modified date that
                         started it, so that a resumed download can never splice two different files
  .locks/                one lock file per model, so that two processes fetching it take turns

Checking: the sha256 against every digest the registry accepts for the model ("sha256"); a file that
matches none, or a model without a published digest, must load with weights_only=True with every tensor
fitting the entry's config ("structure"; with a warning naming its digest where digests are published).

Downloading, checking and slimming live in fom_cli/fetch.py; this module is the registry's data and the
cache's layout, and imports no torch.
"""

import dataclasses
import difflib
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import yaml

from fom_cli.errors import BadInput
from fom_cli.media.files import os_error_line

BUNDLED_REGISTRY = Path(__file__).resolve().parent / "registry.yaml"
SLIM_SUFFIX = ".slim.pth"
# Model families fom can check and slim (fetch.FAMILIES says how).
FAMILY_NAMES = ("fomm", "tpsmm")
PART_SUFFIX = ".part"
REJECTED_SUFFIX = ".rejected"
ORIGIN_SUFFIX = ".origin.json"
# Plain http is allowed for these hosts only (a test server, a mirror on this machine), or for a user
# registry's entry that says `allow_http: true` (a company mirror inside a trusted network).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
# Names are single tokens without dots, so that "vox" is a name and "vox.pth" or "runs/vox" a path.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
# --- the registry -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    family: str
    config: str              # a bundled config name, or an absolute YAML path
    file: str
    size: Optional[int]
    sha256: tuple            # every digest accepted for the file (copies re-saved by someone differ); may be empty
    urls: tuple
    resolution: Optional[int] = None
    domain: str = ""
    allow_http: bool = False


def is_local_url(url):
    return urlsplit(url).hostname in LOCAL_HOSTS


def url_allowed(url, model):
    """True for https, and for http where the host is this machine or the model's entry allows it."""
    scheme = urlsplit(url).scheme
    return scheme == "https" or (scheme == "http" and (model.allow_http or is_local_url(url)))


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_plain_file_name(value):
    # The name becomes a path in the cache: no folders, nothing hidden, none of the cache's own suffixes.
    return (isinstance(value, str) and value and Path(value).name == value and not value.startswith(".")
            and not value.endswith((SLIM_SUFFIX, PART_SUFFIX, REJECTED_SUFFIX, ORIGIN_SUFFIX)))


def _is_digest_or_digests(value):
    if isinstance(value, list):
        return bool(value) and all(isinstance(digest, str) and SHA256_PATTERN.fullmatch(digest) for digest in value)
    return value is None or (isinstance(value, str) and bool(SHA256_PATTERN.fullmatch(value)))


def _is_url_list(value):
    return (isinstance(value, list) and value
            and all(isinstance(url, str) and url.startswith(("https://", "http://")) for url in value))


# field -> (required, check, what the check wants). Required fields may come from an earlier registry
# (a user registry that only replaces `urls` of a bundled model).
FIELDS = {
    "family": (True, lambda value: value in FAMILY_NAMES, lambda: "one of: " + ", ".join(FAMILY_NAMES)),
    "config": (True, lambda value: isinstance(value, str) and bool(value), "a config name or YAML path"),
    "file": (True, _is_plain_file_name, "a plain file name"),
    "size": (True, lambda value: value is None or _is_count(value), "a number of bytes or null"),
    "sha256": (True, _is_digest_or_digests, "64 lowercase hex digits, a list of such digests, or null"),
    "urls": (True, _is_url_list, "a list of http(s) URLs"),
    "resolution": (False, _is_count, "a number of pixels"),
    "domain": (False, lambda value: isinstance(value, str), "a short description"),
    "allow_http": (False, lambda value: isinstance(value, bool), "true or false"),
}


def user_registries():
    """The files FOM_REGISTRY names (several: separated like PATH), later ones overriding earlier ones."""
    paths = [Path(part).expanduser() for part in os.environ.get("FOM_REGISTRY", "").split(os.pathsep) if part]
    for path in paths:
        if not path.is_file():
            raise BadInput(f"FOM_REGISTRY names {path}, which is not a file")
    return paths


def read_registry_file(path):
    """{name: fields} of one registry file, each field checked; relative config paths made absolute."""
    try:
        with open(path) as file:
            document = yaml.safe_load(file)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise BadInput(f"model registry {path} is not valid YAML{f' at line {mark.line + 1}' if mark else ''}") \
            from None
    except OSError as error:
        raise BadInput(f"cannot read model registry {path} ({os_error_line(error)})") from None
    models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(models, dict):
        raise BadInput(f"model registry {path} must hold a mapping 'models:' of names to entries")
    entries = {}
    for name, fields in models.items():
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise BadInput(f"model registry {path}: '{name}' is not a model name (letters, digits, '-' and '_')")
        if not isinstance(fields, dict):
            raise BadInput(f"model registry {path}: model '{name}' must be a mapping of fields")
        for key, value in fields.items():
            if key not in FIELDS:
                hint = difflib.get_close_matches(str(key), FIELDS, n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise BadInput(f"model registry {path}: model '{name}' has an unknown field '{key}'{suggestion}")
            _, check, wanted = FIELDS[key]
            if not check(value):
                wanted = wanted() if callable(wanted) else wanted
                raise BadInput(f"model registry {path}: model '{name}': '{key}' must be {wanted}, not {value!r}")
        fields = dict(fields)
        config = fields.get("config")
        if config and (config.endswith((".yaml", ".yml")) or "/" in config or os.sep in config):
            fields["config"] = str((Path(path).parent / Path(config).expanduser()).resolve())
        entries[name] = fields
    return entries


def load_registry():
    """{name: Model}: the bundled registry, then each FOM_REGISTRY file adding models or replacing fields."""
    merged, defined_in = {}, {}
    for path in [BUNDLED_REGISTRY] + user_registries():
        for name, fields in read_registry_file(path).items():
            merged[name] = {**merged.get(name, {}), **fields}
            defined_in[name] = path
    models = {}
    for name, fields in merged.items():
        missing = [key for key, (required, _, _) in FIELDS.items() if required and key not in fields]
        if missing:
            raise BadInput(f"model registry {defined_in[name]}: model '{name}' lacks {', '.join(missing)}")
        digests = fields["sha256"]
        digests = () if digests is None else (digests,) if isinstance(digests, str) else tuple(digests)
        model = Model(name=name, family=fields["family"], config=fields["config"], file=fields["file"],
                      size=fields["size"], sha256=digests, urls=tuple(fields["urls"]),
                      resolution=fields.get("resolution"), domain=fields.get("domain", ""),
                      allow_http=fields.get("allow_http", False))
        for url in model.urls:
            if not url_allowed(url, model):
                raise BadInput(f"model registry {defined_in[name]}: model '{name}': {url} is plain http, allowed "
                               "only for localhost or with `allow_http: true` in a user registry's entry")
        models[name] = model
    return models


def lookup(name, models=None):
    """The Model called `name`; an unknown name is one line listing the known ones."""
    models = load_registry() if models is None else models
    if name in models:
        return models[name]
    hint = difflib.get_close_matches(name, models, n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise BadInput(f"no checkpoint file or model named '{name}'{suggestion}; known models: "
                   f"{', '.join(models)} (`fom models` describes them)")


# --- the cache --------------------------------------------------------------------------------------------

def cache_home():
    """$FOM_HOME, else the platform's user cache folder + fom."""
    # Written out, not platformdirs: it would use a relative XDG_CACHE_HOME, and (4.6+) XDG_CACHE_HOME on macOS.
    if os.environ.get("FOM_HOME"):
        return Path(os.environ["FOM_HOME"]).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "fom" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "fom"
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "fom"


def checkpoints_dir():
    return cache_home() / "checkpoints"


def full_path(model):
    """Where the original file goes: downloaded with --keep-full, or put there by hand."""
    return checkpoints_dir() / model.file


def slim_path(model):
    return checkpoints_dir() / f"{model.name}{SLIM_SUFFIX}"


def origin_path(model):
    """The record of where the cached model came from and its original's sha256 (JSON)."""
    return checkpoints_dir() / f"{model.name}{ORIGIN_SUFFIX}"


def parts_dir():
    return checkpoints_dir() / ".parts"


def part_path(model, url):
    """A download of `model` from `url` under way: one per URL, so two servers' bytes never meet in one file.
    Its validator (ETag or Last-Modified) is in the same name + ".json"."""
    return parts_dir() / f"{model.file}.{hashlib.sha256(url.encode()).hexdigest()[:12]}{PART_SUFFIX}"


def legacy_part_path(model):
    """Where earlier versions of fom kept a download under way, one for every URL: never resumed, removed."""
    return checkpoints_dir() / f"{model.file}{PART_SUFFIX}"


def rejected_path(model):
    """A free name beside the original's for a file put there by hand that failed the check."""
    path = checkpoints_dir() / f"{model.file}{REJECTED_SUFFIX}"
    number = 1
    while path.exists():
        number += 1
        path = checkpoints_dir() / f"{model.file}{REJECTED_SUFFIX}-{number}"
    return path


def read_origin(model):
    """The origin record of the cached model (a dict), or None when there is none or it is unreadable."""
    try:
        record = json.loads(origin_path(model).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def verification(model, digest):
    """How a file of `model` with this sha256 is trusted: "sha256" (a digest the registry accepts),
    "structure" (no digest published: its tensors fit the config), or "digest unknown: <hex>" (digests are
    published and this is none of them, but its tensors fit: accepted with a warning)."""
    if digest in model.sha256:
        return "sha256"
    return f"digest unknown: {digest}" if model.sha256 else "structure"


def cached_files(model):
    """(the file animation would load or None, the kept original or None)."""
    slim, original = slim_path(model), full_path(model)
    return (slim if slim.is_file() else original if original.is_file() else None,
            original if original.is_file() else None)


def is_offline():
    return os.environ.get("FOM_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")
