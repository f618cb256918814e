"""List the released checkpoints `--checkpoint NAME` accepts, and which are in the cache.

  fom models            a table: name, family, domain, resolution, download size, cached or not (and where)
  fom models --json     the same as one JSON object, with the config, file, sha256 and URLs too

The list is fom's registry plus the files FOM_REGISTRY names; the cache is $FOM_HOME, else the user cache
(~/.cache/fom on Linux). Nothing is downloaded: `fom download NAME` does that ahead of time.
"""

import json

from fom_cli.registry import cached_files, checkpoints_dir, load_registry


def configure_parser(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def describe(model):
    animation_file, original = cached_files(model)
    return {"name": model.name, "family": model.family, "config": model.config, "domain": model.domain,
            "resolution": model.resolution, "file": model.file, "size": model.size, "sha256": model.sha256,
            "urls": list(model.urls), "cached": animation_file is not None,
            "path": str(animation_file) if animation_file else None, "full_path": str(original) if original else None}


def size_text(size):
    return f"{size / 2 ** 20:.0f} MiB" if size else "unknown"


def run(args):
    rows = [describe(model) for model in load_registry().values()]
    if args.json:
        print(json.dumps({"cache": str(checkpoints_dir()), "models": rows}, indent=2))
        return 0
    table = [("NAME", "FAMILY", "DOMAIN", "RES", "SIZE", "CACHED")]
    for row in rows:
        cached = "no"
        if row["cached"]:
            cached = row["path"] + (f" (and the original, {row['full_path']})"
                                    if row["full_path"] and row["full_path"] != row["path"] else "")
        table.append((row["name"], row["family"], row["domain"], str(row["resolution"] or "?"),
                      size_text(row["size"]), cached))
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]) - 1)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])
    print(f"\ncache: {checkpoints_dir()} (FOM_HOME moves it); `fom download NAME` fetches a model ahead of time")
    return 0
