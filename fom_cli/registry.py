"""Released checkpoints by name: `--checkpoint vox` downloads, verifies and caches, like whisper's models.

The registry (registry.yaml, package data, plus any files named by FOM_REGISTRY) gives every model a
name, its family and config, and the URLs to try in order. The first use of a name downloads the file
with a progress bar, checks it and keeps what animation needs; every later use reads the cache and
never touches the network.

Cache: $FOM_HOME if set, else the platform's user cache (~/.cache/fom on Linux, following
XDG_CACHE_HOME); models live in its checkpoints/ folder:

  vox-cpk.pth.tar.part   a download under way, resumed (HTTP Range) after an interruption
  vox.slim.pth           generator, keypoint detector and config: what animation loads (a third of the size;
                         for TPSMM models the inpainting, dense motion, keypoint and AVD networks)
  vox-cpk.pth.tar        the original, kept with `fom download --keep-full` or when training reads it;
                         also where a file fetched by hand goes (it is checked on first use)
  .locks/                one lock file per model, so that two processes fetching it take turns

Checking: sha256 when the registry has it; else the size when known, and always a weights_only=True
load whose every tensor must fit the entry's config. A file that fails is deleted and never used.

Downloading, checking and slimming live in fom_cli/fetch.py; this module is the registry's data and the
cache's layout, and imports no torch.
"""

import dataclasses
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Optional

import yaml

from fom_cli.errors import BadInput
from fom_cli.media.files import os_error_line

BUNDLED_REGISTRY = Path(__file__).resolve().parent / "registry.yaml"
SLIM_SUFFIX = ".slim.pth"
# Model families fom can check and slim (fetch.FAMILIES says how).
FAMILY_NAMES = ("fomm", "tpsmm")
PART_SUFFIX = ".part"
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
    sha256: Optional[str]
    urls: tuple
    resolution: Optional[int] = None
    domain: str = ""


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_plain_file_name(value):
    # The name becomes a path in the cache: no folders, nothing hidden, none of the cache's own suffixes.
    return (isinstance(value, str) and value and Path(value).name == value and not value.startswith(".")
            and not value.endswith((SLIM_SUFFIX, PART_SUFFIX)))


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
    "sha256": (True, lambda value: value is None or (isinstance(value, str) and SHA256_PATTERN.fullmatch(value)),
               "64 lowercase hex digits or null"),
    "urls": (True, _is_url_list, "a list of http(s) URLs"),
    "resolution": (False, _is_count, "a number of pixels"),
    "domain": (False, lambda value: isinstance(value, str), "a short description"),
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
        models[name] = Model(name=name, family=fields["family"], config=fields["config"], file=fields["file"],
                             size=fields["size"], sha256=fields["sha256"], urls=tuple(fields["urls"]),
                             resolution=fields.get("resolution"), domain=fields.get("domain", ""))
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


def part_path(model):
    return checkpoints_dir() / f"{model.file}{PART_SUFFIX}"


def cached_files(model):
    """(the file animation would load or None, the kept original or None)."""
    slim, original = slim_path(model), full_path(model)
    return (slim if slim.is_file() else original if original.is_file() else None,
            original if original.is_file() else None)


def is_offline():
    return os.environ.get("FOM_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")
