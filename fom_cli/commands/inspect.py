"""What a file says about itself: `fom inspect FILE...`.

  fom inspect out.mp4 frames/000000.png clip.gif
  fom inspect out.mp4 --json

For each file, whether it carries the synthetic-media label fom writes into every output (IPTC digital
source type trainedAlgorithmicMedia, the tool, the model, the source image's name: media/marks.py), what
the label says, and its C2PA content credentials (`--sign`: media/credentials.py), validated, where
c2pa-python is installed. A file without one was not made by fom, was made with --no-mark, or has lost its
metadata (any re-encoding can strip it: the label is a courtesy, not a guarantee).
"""

import json
from pathlib import Path

from fom_cli.errors import BadInput
from fom_cli.media.credentials import describe, read_credentials
from fom_cli.media.marks import DIGITAL_SOURCE_TYPE, read_label


def configure_parser(parser):
    parser.add_argument("files", nargs="+", metavar="FILE", help="videos (.mp4 .mov .mkv .webm), GIFs or PNGs")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file, a line each")


def run(args):
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise BadInput(f"{path} is not a file")
        try:
            fields = read_label(path)
        except (OSError, ValueError) as error:
            raise BadInput(f"cannot read {path} ({error})") from None
        credentials = read_credentials(path)
        signed_synthetic = bool(credentials and any(action.get("digital_source_type") == DIGITAL_SOURCE_TYPE
                                                    for action in credentials.get("actions", [])))
        synthetic = fields.get("digital_source_type") == DIGITAL_SOURCE_TYPE or signed_synthetic
        if args.json:
            print(json.dumps({"file": str(path), "synthetic": synthetic, "label": fields or None,
                              "content_credentials": credentials}))
            continue
        if fields:
            print(f"{path}: labelled as synthetic media" if synthetic else f"{path}: labelled")
            for key, value in fields.items():
                print(f"  {key}: {value}")
        else:
            print(f"{path}: no synthetic-media label (not made by fom, made with --no-mark, or its metadata was "
                  "stripped)")
        print(f"  {describe(credentials)}")
    return 0
