"""Checkpoints: the original FOMM and TPSMM files and ours, read safely, written atomically.

Original FOMM files (vox-cpk.pth.tar, ...) are dicts of state dicts: generator, kp_detector, optionally
discriminator, optimiser states and the epoch. Original TPSMM files (vox.pth.tar, ...) hold
inpainting_network, dense_motion_network, kp_detector, avd_network, bg_predictor (all but mgif's; used in
training only) and optimiser states. They come in torch's zip format or the legacy format, and some were
saved from DataParallel with a "module." prefix on every key.

Ours are the same dict (the original key names, so the original code can read them too) plus
`config` (the YAML dict that built the networks) and `fom` (a small metadata dict). Every load uses
weights_only=True: a checkpoint is data and must never run code.
"""

import pickle
import re
import time
import zipfile
from pathlib import Path

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from fom_cli import __version__
from fom_cli.config import bundled_config_names, bundled_dir, config_family, config_name, load_config, validate, \
    without_private_keys
from fom_cli.errors import BadCheckpoint, BadConfig, BadInput, FomError, first_line
from fom_cli.media.files import write_bytes_with

NETWORKS = ("generator", "kp_detector", "discriminator")
# TPSMM's networks, in the original checkpoints' order; the first three are what every TPSMM file has.
TPSMM_NETWORKS = ("inpainting_network", "dense_motion_network", "kp_detector", "bg_predictor", "avd_network")
TPSMM_REQUIRED = TPSMM_NETWORKS[:3]

# Trained by us on `fom synth` cartoon faces (checkpoints/README.md is its model card).
BUNDLED_MODEL = "toon-128.pth"


def default_checkpoint():
    """The bundled model's path: what commands animate with when no --checkpoint is given."""
    path = bundled_dir("checkpoints") / BUNDLED_MODEL
    if not path.is_file():
        raise FomError(f"no checkpoint given and the bundled model ({BUNDLED_MODEL}) is not installed: pass "
                       "--checkpoint PATH, e.g. the original vox-cpk.pth.tar from the First Order Motion Model "
                       "project (see README)")
    return path


def _strip_module_prefix(state_dict):
    """DataParallel saves 'module.<key>'; the networks expect '<key>'."""
    # Only when every key has the prefix (a whole network saved from DataParallel): torch's function
    # alone would also rename the keys of a submodule that happens to be called `module`.
    if state_dict and all(key.startswith("module.") for key in state_dict):
        consume_prefix_in_state_dict_if_present(state_dict, "module.")
    return state_dict


def _load_weights_only(path):
    """torch.load with weights_only=True. Zip-format files are memory-mapped, so the parts nobody reads
    (optimiser states, the discriminator when animating) never take up memory; the legacy format
    cannot be mapped and is read whole."""
    if zipfile.is_zipfile(path):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return torch.load(path, map_location="cpu", weights_only=True)


# What a file that should be a checkpoint and is not most likely is, and what to do.
DOWNLOAD_HINT = "most likely an incomplete or failed download: download it again"

# The first bytes of torch's two formats: a zip archive (torch >= 1.6), or a pickle (protocol 2 to 5) whose
# first object is torch's legacy magic number.
ZIP_START = b"PK\x03\x04"
PICKLE_PROTOCOLS = range(2, 6)


def why_not_a_checkpoint(path):
    """What `path` is, judging by its bytes, when it cannot be a torch checkpoint ("is not a checkpoint at
    all: it is empty", ...); None when it starts like one. A wrong file (a file host's error page saved under
    the checkpoint's name, a cut download) is thereby told apart from a real checkpoint with bad content."""
    with open(path, "rb") as file:
        head = file.read(1024)
    if not head:
        return "is not a checkpoint at all: it is empty"
    if head.startswith(ZIP_START):
        return None if zipfile.is_zipfile(path) else "is a cut-off checkpoint: a zip archive whose end is missing"
    if head[0] == 0x80 and len(head) > 1 and head[1] in PICKLE_PROTOCOLS:
        return None  # a pickle: the legacy torch format, read by torch.load
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<!--")) or b"<html" in lowered:
        return ("is not a checkpoint at all: it is a web page (HTML), what a file host sends instead of the file, "
                "such as a sign-in or quota page")
    if any(byte < 32 and byte not in b"\t\n\r\f" for byte in head):  # control bytes: binary
        return "is not a checkpoint at all: it starts with bytes no torch checkpoint starts with"
    return "is not a checkpoint at all: it is text, not tensors"


# What torch's own pickles import: tensors, storages, OrderedDict (and numpy arrays in some files). A
# pickle importing anything else would call it when loaded.
DATA_IMPORTS = ("torch.", "collections.OrderedDict", "numpy.", "_codecs.encode")


def _pickle_imports_names(path) -> bool:
    """True when the file is whole pickles, one of which imports a Python name torch's format does not use
    (a function or a class that unpickling would call): weights_only's refusal of it is then about code,
    not damage. Parsed with pickletools, which only reads opcodes and runs nothing. Torch's legacy format
    is several pickles in a row (magic number, protocol, system info, the object), hence the loop."""
    import pickletools

    strings = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE")
    try:
        with open(path, "rb") as file:
            for _ in range(4):
                pushed, imports = [], []
                for opcode, argument, _ in pickletools.genops(file):  # to the pickle's end: it is whole
                    if opcode.name in strings:
                        pushed.append(argument)
                    elif opcode.name in ("GLOBAL", "INST"):  # argument: "module name"
                        imports.append(argument.replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL":  # module and name are the last two strings pushed
                        imports.append(".".join(pushed[-2:]) if len(pushed) >= 2 else "?")
                if any(not name.startswith(DATA_IMPORTS) for name in imports):
                    return True
    except Exception:  # not a whole pickle: damaged bytes
        return False
    return False


def read_checkpoint(path):
    """The checkpoint's dict, with 'module.' prefixes stripped. Raises BadInput / BadCheckpoint."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise BadInput(f"checkpoint {path} is a directory, not a file")
    not_one = why_not_a_checkpoint(path)
    if not_one:
        raise BadCheckpoint(f"{path} {not_one} ({path.stat().st_size:,} bytes); {DOWNLOAD_HINT}")
    try:
        checkpoint = _load_weights_only(path)
    except pickle.UnpicklingError as error:
        # Only a pickle that names a Python function or class ("GLOBAL print was not an allowed global")
        # would run code; an opcode weights_only does not know means damaged bytes.
        if "GLOBAL" in str(error) or "Unsupported global" in str(error) or _pickle_imports_names(path):
            raise BadCheckpoint(f"{path} holds more than tensors (objects that would run code when loaded), "
                                "so fom refuses to load it") from None
        # torch's own reason follows "WeightsUnpickler error:" in a long message (its first line is generic).
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        reason = detail.group(1).strip() if detail else first_line(error)
        raise BadCheckpoint(f"{path} is a damaged or cut-off checkpoint ({reason}); {DOWNLOAD_HINT}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, KeyError) as error:
        raise BadCheckpoint(f"{path} is a damaged or cut-off checkpoint ({first_line(error)}); "
                            f"{DOWNLOAD_HINT}") from None

    family = checkpoint_family(checkpoint) if isinstance(checkpoint, dict) else None
    if family is None:
        raise BadCheckpoint(f"{path} is neither a FOMM checkpoint (no 'generator' and 'kp_detector' weights) nor a "
                            "TPSMM one (no 'inpainting_network', 'dense_motion_network' and 'kp_detector')")
    for network in NETWORKS if family == "fomm" else TPSMM_NETWORKS:
        if network in checkpoint:
            if not isinstance(checkpoint[network], dict):
                raise BadCheckpoint(f"{path}: '{network}' is not a state dict")
            checkpoint[network] = _strip_module_prefix(checkpoint[network])
    return checkpoint


def checkpoint_family(checkpoint):
    """'tpsmm' or 'fomm' by the networks a checkpoint dict holds, None when it is neither."""
    if all(network in checkpoint for network in TPSMM_REQUIRED):
        return "tpsmm"
    if all(network in checkpoint for network in ("generator", "kp_detector")):
        return "fomm"
    return None


def save_checkpoint(path, checkpoint):
    """Write atomically: a crash, a kill, a power cut or a full disk mid-write leaves the previous file
    intact, and a failed write is one BadOutput naming the OS's reason."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(temporary):
        with open(temporary, "wb") as file:
            recording = _WriteErrorRecorder(file)
            try:
                torch.save(checkpoint, recording)
            except RuntimeError:
                if recording.error is not None:
                    raise recording.error from None  # the OSError itself: write_bytes_with says it in one line
                raise
    write_bytes_with(path, write)  # AtomicOutput flushes the file to the disk before the rename


class _WriteErrorRecorder:
    """A file that keeps the OSError its write() raised. torch.save turns that error (a full disk, a file
    size limit) into a bare RuntimeError ("unexpected pos 704 vs 598"); this way the user hears the cause."""

    def __init__(self, file):
        self.file = file
        self.error = None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self):
        self.file.flush()


def make_checkpoint(config, networks, **extra):
    """Our format: the original keys plus the config and metadata. `networks`: name -> module."""
    checkpoint = {name: module.state_dict() for name, module in networks.items()}
    checkpoint.update(extra)
    checkpoint["config"] = without_private_keys(config)
    checkpoint["fom"] = {"version": __version__, "config_name": config_name(config),
                         "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return checkpoint


# --- which config built this checkpoint? ------------------------------------------------------------------

def expected_shapes(config, networks=("generator", "kp_detector")):
    """{network: {key: shape}} of the networks a config builds, computed without allocating weights. The
    names are the checkpoint's keys of the config's family (FOMM's, or TPSMM's TPSMM_NETWORKS)."""
    from fom_cli.models import build_discriminator, build_generator, build_keypoint_detector
    from fom_cli.models import tpsmm

    if config_family(config) == "tpsmm":
        builders = {"inpainting_network": tpsmm.build_inpainting_network,
                    "dense_motion_network": tpsmm.build_dense_motion_network,
                    "kp_detector": tpsmm.build_tps_keypoint_detector, "bg_predictor": tpsmm.build_bg_predictor,
                    "avd_network": tpsmm.build_avd_network}
    else:
        builders = {"generator": build_generator, "kp_detector": build_keypoint_detector,
                    "discriminator": build_discriminator}
    shapes = {}
    with torch.device("meta"):
        for network in networks:
            module = builders[network](config["model_params"])
            shapes[network] = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    return shapes


def shape_mismatches(checkpoint, shapes):
    """Descriptions of every tensor that is missing, extra or of another shape, in state-dict order."""
    problems = []
    for network, expected in shapes.items():
        state = checkpoint.get(network, {})
        for key, shape in expected.items():
            if key not in state:
                problems.append(f"{network}.{key} is missing from the checkpoint")
            elif tuple(state[key].shape) != shape:
                problems.append(f"{network}.{key} has shape {tuple(state[key].shape)} in the checkpoint "
                                f"but {shape} in the config")
        for key in state:
            if key not in expected:
                problems.append(f"{network}.{key} is in the checkpoint but not in the config")
    return problems


def infer_config(checkpoint, path="checkpoint"):
    """The config that built `checkpoint`: its own (ours), or the bundled config whose tensor shapes match.

    Returns (config, note) where note says how it was chosen.
    """
    if isinstance(checkpoint.get("config"), dict):
        config = dict(checkpoint["config"])
        try:
            validate(config)
        except BadConfig as error:
            raise BadCheckpoint(f"{path} carries an invalid config: {error}") from None
        if config_family(config) != checkpoint_family(checkpoint):
            raise BadCheckpoint(f"{path} holds {checkpoint_family(checkpoint).upper()} networks but carries a "
                                f"{config_family(config).upper()} config")
        config["_name"] = checkpoint.get("fom", {}).get("config_name", "checkpoint")
        return config, f"using the config stored in {Path(path).name} ({config['_name']})"
    if checkpoint_family(checkpoint) == "tpsmm":
        return infer_tpsmm_config(checkpoint, path)

    # Several original configs build identical generator and keypoint detector (they differ in training
    # settings only), so the discriminator, when present, breaks ties; otherwise the first in name order
    # wins and animation is the same whichever is picked.
    networks = ("generator", "kp_detector") + (("discriminator",) if "discriminator" in checkpoint else ())
    matches, closest = [], None
    for name in bundled_config_names():
        config = load_config(name)
        checked = networks if "discriminator_params" in config["model_params"] else networks[:2]
        problems = shape_mismatches(checkpoint, expected_shapes(config, checked))
        if not problems:
            matches.append((len(checked), name, config))
        elif closest is None or len(problems) < len(closest[0]):
            closest = (problems, name)
    if not matches:
        problems, name = closest
        raise BadCheckpoint(f"{path} matches none of the bundled configs (closest: {name}, where "
                            f"{problems[0]}); pass the config that trained it with --config")
    matches.sort(key=lambda match: -match[0])
    _, name, config = matches[0]
    others = [other for _, other, _ in matches[1:]]
    also = f"; {', '.join(others)} build the same networks" if others else ""
    return config, f"{Path(path).name} matches config {name}{also}"


# The released TPSMM models by the word their file names carry, the most used first (the guess when neither
# the shapes nor the name tell).
TPSMM_CONFIGS_BY_NAME = {"vox": "tpsmm-vox-256", "taichi": "tpsmm-taichi-256", "ted": "tpsmm-ted-384",
                         "mgif": "tpsmm-mgif-256"}


def infer_tpsmm_config(checkpoint, path="checkpoint"):
    """The bundled TPSMM config for an original TPSMM checkpoint (no config of its own): (config, note).

    The four original configs build identical networks but for the background predictor (mgif has none), so
    the shapes and the presence of bg_predictor narrow the choice, and the file name (vox, taichi, ted or
    mgif in it) decides among what is left; the note says when the choice is a guess. The frame size is not
    in the weights: ted's config knows it is 384x384 (fom_params.frame_shape).
    """
    has_background = "bg_predictor" in checkpoint
    networks = [network for network in TPSMM_NETWORKS if network in checkpoint and network != "bg_predictor"]
    fitting, with_background_as_here, closest = [], [], None
    for name in bundled_config_names("tpsmm"):
        config = load_config(name)
        problems = shape_mismatches(checkpoint, expected_shapes(config, networks))
        if not problems and has_background and config["model_params"]["common_params"].get("bg", False):
            problems = shape_mismatches(checkpoint, expected_shapes(config, ["bg_predictor"]))
        if problems:
            if closest is None or len(problems) < len(closest[0]):
                closest = (problems, name)
            continue
        fitting.append(config)
        if config["model_params"]["common_params"].get("bg", False) == has_background:
            with_background_as_here.append(config)
    if not fitting:
        problems, name = closest
        raise BadCheckpoint(f"{path} is a TPSMM checkpoint matching none of the bundled TPSMM configs (closest: "
                            f"{name}, where {problems[0]}); pass the config that trained it with --config")
    # A checkpoint whose bg_predictor was dropped still animates with any of them (animation never uses it).
    candidates = {config["_name"]: config for config in with_background_as_here or fitting}
    file_name = Path(path).name
    # Whole words only ("ted384.pth" is ted's, "converted.pth" is not).
    by_name = [config_name for word, config_name in TPSMM_CONFIGS_BY_NAME.items()
               if re.search(rf"(?<![a-z]){word}(?![a-z])", file_name.lower()) and config_name in candidates]

    def others(chosen):
        return ", ".join(name for name in candidates if name != chosen)

    if len(candidates) == 1:
        name = next(iter(candidates))
        how = "with a background predictor" if has_background else "without a background predictor"
        return candidates[name], f"{file_name} is a TPSMM checkpoint {how}: config {name}"
    if len(by_name) == 1:
        name = by_name[0]
        return candidates[name], (f"{file_name} is a TPSMM checkpoint; config {name} chosen by the file's name "
                                  f"({others(name)} build the same networks: the weights do not tell them apart; "
                                  "pass --config to choose)")
    name = next(config_name for config_name in TPSMM_CONFIGS_BY_NAME.values() if config_name in candidates)
    return candidates[name], (f"{file_name} is a TPSMM checkpoint; config {name} is a guess ({others(name)} build "
                              "the same networks and the file name does not say which; the frame size differs: "
                              "pass --config tpsmm-ted-384 for the 384x384 TED model)")


def load_state(module, state_dict, network, path):
    """load_state_dict with the first problem as one clear line."""
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    problems = shape_mismatches({network: state_dict}, {network: expected})
    if problems:
        raise BadCheckpoint(f"{path} does not fit the config: {problems[0]}")
    module.load_state_dict(state_dict)


# --- slim checkpoints ---------------------------------------------------------------------------------------

def slim_checkpoint(checkpoint, config, networks=("generator", "kp_detector"), **provenance):
    """What animation needs from `checkpoint`, about a third of an original training checkpoint: the networks
    that animate, the config that built them (so no --config is needed later) and fom's metadata, extended
    by `provenance` (exported_from, original_sha256, ...). The discriminator and the optimiser states stay
    behind; the epoch is kept for the record."""
    slim = {network: checkpoint[network] for network in networks}
    slim["config"] = without_private_keys(config)
    earlier = checkpoint.get("fom") if isinstance(checkpoint.get("fom"), dict) else {}
    slim["fom"] = {**earlier, "version": __version__, "config_name": config_name(config),
                   "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **provenance}
    if isinstance(checkpoint.get("epoch"), int):
        slim["epoch"] = checkpoint["epoch"]
    return slim
