"""Animate source images with the motion of driving videos.

  fom animate SOURCE DRIVING -o OUTPUT                    one source, one driving video
  fom animate A.png B.png --driving D1.mp4 D2.mp4 -o DIR  every source with every driving video,
                                                          written as DIR/<source>__<driving>.mp4

The driving video streams through the networks in batches: memory does not grow with its length.
The output keeps the driving video's frame rate and sound.
"""

import itertools
import sys
from pathlib import Path

from fom_cli.commands import animation_options, load_requested_model
from fom_cli.engine import animate_file, check_driving, check_outputs, check_source
from fom_cli.errors import BadInput
from fom_cli.media.video_out import VIDEO_OUTPUT_EXTENSIONS
from fom_cli.options import add_animation_options


# The two forms that work, spelled out: argparse would make "SOURCE [DRIVING] [SOURCE [DRIVING] ...]" of
# the positionals, which suggests pairs (A D1 B D2) that are refused.
USAGE = ("%(prog)s SOURCE DRIVING -o OUTPUT [options]\n"
         "       %(prog)s SOURCE [SOURCE ...] --driving VIDEO [VIDEO ...] -o OUTDIR [options]")


def configure_parser(parser):
    parser.usage = USAGE
    parser.add_argument("inputs", nargs="+", metavar="SOURCE DRIVING",
                        help="a source image and a driving video (or a directory of frames); with --driving, "
                             "every positional is a source image")
    parser.add_argument("--driving", nargs="+", metavar="VIDEO",
                        help="driving videos: animate every source with every one of them")
    parser.add_argument("-o", "--output", required=True,
                        help="output file (.mp4 .mov .mkv .webm .gif) or directory (PNG frames 000000.png ...); "
                             "with several pairs, a directory for <source>__<driving>.mp4 files")
    add_animation_options(parser)


def plan_jobs(args):
    """[(source, driving, output)] from the positionals, --driving and -o."""
    if args.driving:
        sources, drivings = args.inputs, args.driving
    elif len(args.inputs) == 2:
        sources, drivings = args.inputs[:1], args.inputs[1:]
    else:
        raise BadInput("give one SOURCE and one DRIVING, or several sources with --driving VIDEO ...")
    sources = [check_source(path) for path in sources]
    drivings = [check_driving(path) for path in drivings]
    output = Path(args.output)
    if len(sources) * len(drivings) == 1:
        return [(sources[0], drivings[0], output)]
    if output.suffix.lower() in VIDEO_OUTPUT_EXTENSIONS:
        raise BadInput(f"{len(sources) * len(drivings)} source/driving pairs need an output directory, "
                       f"not {output}")
    return [(source, driving, output / f"{source.stem}__{driving.stem}.mp4")
            for source, driving in itertools.product(sources, drivings)]


def run(args):
    options = animation_options(args)   # a combination that cannot work stops here, before the model loads
    jobs = plan_jobs(args)
    check_outputs(jobs, args.overwrite, signed=options.sign is not None)
    model = load_requested_model(args)
    for source, driving, output in jobs:
        animate_file(model.networks, model.precision, source, driving, output, options, progress=not args.quiet)
        if not args.quiet:
            print(f"wrote {output}", file=sys.stderr)
    return 0
