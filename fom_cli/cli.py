"""The `fom` command: one argparse entry point, one sub-command per job, and the one error boundary.

Each sub-command lives in its own module under fom_cli/commands/, which exposes
`configure_parser(parser)` (its options) and `run(args) -> int`. Only the module of the command being
run is imported, so `fom --help` and `fom --version` start without importing torch.

Errors the user can fix (FomError, and an OSError such as a full disk or a GPU out of memory) become one
line "fom: error: ..." and exit code 2; any other exception one line naming its type, exit code 1.
Ctrl-C and SIGTERM stop cleanly (every output still being written is removed) with 130 and 143.
FOM_TRACEBACK=1 shows the full trace of an unexpected error, for bug reports.
"""

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import traceback

from fom_cli import __version__
from fom_cli.errors import FomError, first_line, is_out_of_memory, os_error_message, out_of_memory_message
from fom_cli.media.files import discard_all_temporaries

# command name -> one-line help. The module is fom_cli.commands.<name with _ for ->.
COMMANDS = {
    "animate": "animate source images with the motion of driving videos",
    "batch": "run many animation jobs from a CSV file with the model loaded once",
    "crop": "find faces in photos and videos and write square, model-ready crops",
    "train": "train a model on videos (torchrun for several GPUs or machines)",
    "reconstruct": "reconstruct test videos from their first frame and measure the error",
    "evaluate-synth": "animation quality against ground truth on held-out synth pairs",
    "synth": "render procedural cartoon-face videos (tests, smoke training, demo model)",
    "export": "slim a training checkpoint, or write a model as ONNX graphs (--onnx)",
    "inspect": "what a video, GIF or PNG says about itself: fom's synthetic-media label",
    "live": "animate a photo from a camera or a stream in real time (window, virtual camera, recording)",
    "bench": "measure animation speed and memory (frames/s, GFLOP, peak RSS), JSON out",
    "models": "list the released checkpoints --checkpoint NAME fetches, and the cache",
    "download": "fetch released checkpoints ahead of time (offline machines, shared caches)",
}


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; make its message match ours ("fom: error: ...")."""

    def error(self, message):
        self.exit(2, f"fom: error: {message}\n")


def command_module(name):
    return importlib.import_module(f"fom_cli.commands.{name.replace('-', '_')}")


def build_parser(argv=()):
    """The parser, with the options of only the command named in `argv` (none for `fom --help`)."""
    parser = _Parser(prog="fom", description="Bring a still image to life with the First Order Motion Model.")
    parser.add_argument("--version", action="version", version=f"fom {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen:
            module = command_module(name)
            sub.description = (module.__doc__ or help_text).strip()
            module.configure_parser(sub)
            sub.set_defaults(_run=module.run)
    return parser


def _stop_on_sigterm(signum, frame):
    # Raised in the main thread, so the with-blocks that write outputs see it and clean up, as on Ctrl-C.
    raise SystemExit(143)


def _report_unexpected(message, exit_code):
    """Print one line for an error that is not a FomError (the whole trace too with FOM_TRACEBACK=1);
    called inside the except block, so the trace is that of the error being handled."""
    if os.environ.get("FOM_TRACEBACK") == "1":
        traceback.print_exc()
    print(f"fom: error: {message}", file=sys.stderr)
    return exit_code


class _NotesOnStderr(logging.Handler):
    """What the engine and the API log, as the CLI shows it: INFO as "note: ...", WARNING and above as
    "fom: warning: ..." (warnings also with --quiet), on the stderr of the moment (tests capture it)."""

    def __init__(self, quiet):
        super().__init__(logging.WARNING if quiet else logging.INFO)

    def emit(self, record):
        prefix = "note" if record.levelno < logging.WARNING else "fom: warning"
        print(f"{prefix}: {record.getMessage()}", file=sys.stderr)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:  # signal handlers can only be set there (tests may call main() from another thread)
        previous_handler = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    logger = logging.getLogger("fom_cli")
    notes, saved = _NotesOnStderr(quiet=getattr(args, "quiet", False)), (logger.level, logger.propagate)
    logger.addHandler(notes)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        return args._run(args) or 0
    except FomError as error:
        message = " ".join(str(error).split("\n"))
        print(f"fom: error: {message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("fom: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit:
        if exit.code == 143:
            print("fom: stopped (SIGTERM)", file=sys.stderr)
        raise
    except OSError as error:  # a full disk, a file size limit, a folder that became read-only, ...
        return _report_unexpected(os_error_message(error), 2)
    except Exception as error:
        if is_out_of_memory(error):
            return _report_unexpected(out_of_memory_message(getattr(args, "batch_size", None)), 2)
        return _report_unexpected(f"unexpected {type(error).__name__}: {first_line(error)} (this is a bug in fom "
                                  f"or a library; FOM_TRACEBACK=1 shows the trace for a report)", 1)
    finally:
        logger.removeHandler(notes)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
        discard_all_temporaries()
