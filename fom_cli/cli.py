"""The `fom` command: one argparse entry point, one sub-command per job.

Each sub-command lives in its own module, which exposes `configure_parser(parser)` (its options, next to
the code that uses them) and `run(args) -> int`. This file only wires them together and turns errors the
user can fix (FomError) into one line on stderr and exit code 2.
"""

import argparse
import importlib
import sys

from fom_cli import __version__
from fom_cli.errors import FomError

# command name -> (module, one-line help). Modules are imported only when their command runs or when
# the parser is built, so `fom --help` stays fast enough.
COMMANDS = {
    "animate": ("fom_cli.animate", "animate source images with the motion of driving videos"),
    "batch": ("fom_cli.batch", "run many animation jobs from a CSV file with the model loaded once"),
    "crop": ("fom_cli.crop", "find faces in photos and videos and write square, model-ready crops"),
    "train": ("fom_cli.training.trainer", "train a model on videos (torchrun for several GPUs or machines)"),
    "reconstruct": ("fom_cli.evaluation", "reconstruct test videos from their first frame and measure the error"),
    "evaluate-synth": ("fom_cli.synth_quality", "animation quality against ground truth on held-out synth pairs"),
    "synth": ("fom_cli.training.synth", "render procedural cartoon-face videos (tests, smoke training, demo model)"),
    "export": ("fom_cli.export", "slim a training checkpoint to the generator, keypoint detector and config"),
    "bench": ("fom_cli.bench", "measure animation speed and memory (frames/s, GFLOP, peak RSS), JSON out"),
}


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; make its message match ours ("fom: error: ...")."""

    def error(self, message):
        self.exit(2, f"fom: error: {message}\n")


def build_parser():
    parser = _Parser(prog="fom", description="Bring a still image to life with the First Order Motion Model.")
    parser.add_argument("--version", action="version", version=f"fom {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure_parser(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._run(args) or 0
    except FomError as error:
        message = " ".join(str(error).split("\n"))
        print(f"fom: error: {message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("fom: interrupted", file=sys.stderr)
        return 130
