"""List the released checkpoints `--checkpoint NAME` accepts, and which are in the cache.

  fom models            a table: name, family, domain, resolution, download size, how the cached file was
                        verified (sha256, structure, or "digest unknown: <hex>"), cached or not (and where)
  fom models --json     the same as one JSON object, with the config, file, accepted sha256 digests and URLs too

The list is fom's registry plus the files FOM_REGISTRY names; the cache is $FOM_HOME, else the user cache
(~/.cache/fom on Linux). Nothing is downloaded: `fom download NAME` does that ahead of time.
"""

import json

from fom_cli.registry import cached_files, checkpoints_dir, load_registry, read_origin, slim_path, verification


def configure_parser(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def cached_digest(model):
    """The sha256 of the original the cached slim file was made from: from its origin record, else (a cache
    made by an earlier fom) from the slim file's own metadata."""
    origin = read_origin(model)
    if origin and isinstance(origin.get("sha256"), str):
        return origin["sha256"]
    import torch

    try:
        metadata = torch.load(slim_path(model), map_location="cpu", weights_only=True, mmap=True).get("fom", {})
    except Exception:  # unreadable: `fom download` would say why; a listing only says it does not know
        return None
    return metadata.get("original_sha256")


def describe(model):
    animation_file, original = cached_files(model)
    verified = None
    if animation_file is not None and animation_file == slim_path(model):
        digest = cached_digest(model)
        verified = verification(model, digest) if digest else "unknown"
    elif animation_file is not None:
        verified = "not yet (checked on first use)"  # an original put there by hand
    origin = read_origin(model) or {}
    return {"name": model.name, "family": model.family, "config": model.config, "domain": model.domain,
            "resolution": model.resolution, "file": model.file, "size": model.size, "sha256": list(model.sha256),
            "urls": list(model.urls), "cached": animation_file is not None, "verification": verified,
            "source": origin.get("source"), "path": str(animation_file) if animation_file else None,
            "full_path": str(original) if original else None}


def size_text(size):
    return f"{size / 2 ** 20:.0f} MiB" if size else "unknown"


def run(args):
    rows = [describe(model) for model in load_registry().values()]
    if args.json:
        print(json.dumps({"cache": str(checkpoints_dir()), "models": rows}, indent=2))
        return 0
    table = [("NAME", "FAMILY", "DOMAIN", "RES", "SIZE", "VERIFIED", "CACHED")]
    for row in rows:
        cached = "no"
        if row["cached"]:
            cached = row["path"] + (f" (and the original, {row['full_path']})"
                                    if row["full_path"] and row["full_path"] != row["path"] else "")
        table.append((row["name"], row["family"], row["domain"], str(row["resolution"] or "?"),
                      size_text(row["size"]), row["verification"] or "-", cached))
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]) - 1)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])
    print(f"\ncache: {checkpoints_dir()} (FOM_HOME moves it); `fom download NAME` fetches a model ahead of time")
    return 0
