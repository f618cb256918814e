"""Reconstruct test videos from their first frame and measure how far off the result is.

  fom reconstruct --checkpoint runs/toy/checkpoint.pth.tar --data data/faces
  fom reconstruct --checkpoint vox-cpk.pth.tar --data data/vox-png --out results/vox

The original evaluation protocol (its reconstruction.py): for every video in DATA/test/, frame 0 is the
source and each frame is predicted from it with that frame's own keypoints (absolute motion: source and
driving show the same object, so nothing needs transferring). The folder --out (default: reconstruction/
next to the checkpoint) gets, per video:
  png/<video>.png   the reconstructed frames side by side, lossless (as the original writes them)
  <video>.mp4       each frame next to its reconstruction
and metrics.json:
  l1    mean absolute difference between reconstruction and frame (pixel values in [0, 1]), per video
        and the mean over videos (the paper's L1)
  akd   average keypoint distance: mean distance in pixels between the face landmarks found in the
        reconstruction and in the frame (face-alignment's model; skipped when its weights are not cached)
"""

from pathlib import Path

from fom_cli.runtime import pick_device
from fom_cli.config import load_config
from fom_cli.evaluation.reconstruction import evaluate
from fom_cli.media.video_in import DEFAULT_FPS
from fom_cli.fetch import checkpoint_or_bundled
from fom_cli.options import add_batch_size, add_checkpoint, add_config, add_device, add_quiet, positive_float, \
    positive_int


def configure_parser(parser):
    add_checkpoint(parser, "the model: a checkpoint fom trained, an original one, or a released model's name (vox, "
                           "...: `fom models`); default: the bundled toon-128")
    parser.add_argument("--data", required=True, metavar="DIR", help="data folder; its test/ videos are reconstructed")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: reconstruction/ next to the checkpoint, "
                                                     "or in the current folder for the bundled model)")
    add_config(parser)
    parser.add_argument("--max-videos", type=positive_int, metavar="N",
                        help="only the first N test videos (in name order)")
    parser.add_argument("--fps", type=positive_float, default=DEFAULT_FPS,
                        help=f"frame rate of the mp4 files (default {DEFAULT_FPS:g})")
    add_device(parser)
    add_batch_size(parser, "frames per forward pass (default: 8 on CPU, 32 on CUDA)")
    parser.add_argument("--no-mark", action="store_true",
                        help="leave out the metadata that says the outputs are synthetic (written by default)")
    add_quiet(parser, "no progress bar or summary")


def run(args):
    checkpoint = checkpoint_or_bundled(args.checkpoint, args.quiet)
    if args.out:
        out_dir = Path(args.out)
    elif args.checkpoint:
        out_dir = Path(args.checkpoint).parent / "reconstruction"
    else:   # the bundled model sits inside the installed package: write here instead
        out_dir = Path("reconstruction")
    metrics = evaluate(checkpoint, args.data, out_dir, config=load_config(args.config) if args.config else None,
                       device=pick_device(args.device), batch_size=args.batch_size, max_videos=args.max_videos,
                       fps=args.fps, quiet=args.quiet, mark=not args.no_mark)
    if not args.quiet:
        akd = f", AKD {metrics['akd']:.3f} px" if metrics["akd"] is not None else f" (AKD {metrics['akd_note']})"
        print(f"reconstructed {len(metrics['l1'])} videos: L1 {metrics['l1_mean']:.5f} (copying the source: "
              f"{metrics['copy_source_l1_mean']:.5f}){akd}; wrote {out_dir}")
    return 0
