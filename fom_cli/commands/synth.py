"""Render a procedural data set of moving cartoon faces, in the layout the original FOMM reads.

    fom synth --out data/faces --videos 64 --frames 32 --size 64 --seed 0

writes DIR/train/<video>/0000000.png ... and DIR/test/<video>/... (one folder of PNG frames per video, as
the original vox-png data). Each face turns, sways, zooms, blinks, looks around and talks. It is meant for
tests, smoke training and the small demo model: a data set anyone can rebuild offline, byte for byte.
"""

from fom_cli.options import add_quiet
from fom_cli.training.synth_dataset import default_workers, write_dataset


def configure_parser(parser):
    parser.add_argument("--out", required=True, metavar="DIR", help="new (or empty) directory to write")
    parser.add_argument("--videos", type=int, default=64, metavar="N", help="training videos (default 64)")
    parser.add_argument("--test-videos", type=int, default=None, metavar="M",
                        help="test videos, of identities not in train (default: N / 8, at least 1)")
    parser.add_argument("--frames", type=int, default=32, metavar="T", help="frames per video (default 32)")
    parser.add_argument("--size", type=int, default=64, metavar="S", help="frame width and height (default 64)")
    parser.add_argument("--seed", type=int, default=0, metavar="K", help="same seed, same files (default 0)")
    parser.add_argument("--workers", type=int, default=default_workers(), metavar="W",
                        help="processes rendering videos at once (default: the CPU count, at most 8); the files "
                             "are the same for any number")
    add_quiet(parser, "no progress bar or summary")


def run(args):
    summary = write_dataset(args.out, videos=args.videos, frames=args.frames, size=args.size, seed=args.seed,
                            test_videos=args.test_videos, quiet=args.quiet, workers=args.workers)
    if not args.quiet:
        print(f"wrote {summary['train_videos']} train and {summary['test_videos']} test videos "
              f"({summary['frames']} frames of {summary['size']}x{summary['size']}) to {summary['out_dir']} "
              f"in {summary['seconds']:.1f} s")
    return 0
