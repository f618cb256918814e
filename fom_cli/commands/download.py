"""Fetch released checkpoints ahead of time: for offline machines and shared caches.

  fom download vox taichi                 fetch, check and keep what animation needs
  fom download vox --keep-full            keep the whole original too (training state, for `fom train --resume`)
  FOM_HOME=/shared/fom fom download vox   a cache for several users or machines

Prints the path of each cached file on stdout, one per line. A model already in the cache is not fetched
again. See `fom models` for the names.
"""

from fom_cli.fetch import ensure_cached
from fom_cli.options import add_quiet
from fom_cli.registry import load_registry, lookup


def configure_parser(parser):
    parser.add_argument("names", nargs="+", metavar="NAME", help="model names, as `fom models` lists them")
    parser.add_argument("--keep-full", action="store_true",
                        help="keep the whole original checkpoint besides the slim file animation loads")
    add_quiet(parser)


def run(args):
    models = load_registry()
    wanted = [lookup(name, models) for name in args.names]  # every name checked before any download
    for model in wanted:
        path = ensure_cached(model, quiet=args.quiet, full=args.keep_full)
        print(path)
    return 0
