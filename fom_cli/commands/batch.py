"""Run many animation jobs from a CSV file with the model loaded once.

  fom batch JOBS.csv --checkpoint vox-cpk.pth.tar [--skip-existing] [--json] [--shard I/N]

JOBS.csv has a header with the columns source, driving, output and, optionally, per-job options:
mode, adapt_scale, best_frame, find_best_frame, fit, fps, no_audio, side_by_side (an empty cell takes
the command-line value). Relative paths are relative to the jobs file's folder.

A failed job prints one error line and the batch goes on (--fail-fast stops instead). Exit code: 0 when
every job succeeded, 1 when some failed, 2 for a bad jobs file. `--shard I/N` runs jobs I, I+N, I+2N, ...
(counting from 0), so N machines or GPUs can split one file with plain shell.
"""

import copy
import csv
import json
import sys
import time
from pathlib import Path

from fom_cli.errors import FomError
from fom_cli.options import ANIMATION_MODES, add_animation_options, non_negative_int, positive_float
from fom_cli.pipeline import animate_pair, check_driving, check_source, load_requested_model

REQUIRED_COLUMNS = ("source", "driving", "output")


def boolean(text):
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, not {text!r}")


def choice(*allowed):
    def parse(text):
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, not {text!r}")
        return text
    return parse


# column -> parser of its cells; the names are those of `fom animate`'s options.
JOB_OPTIONS = {
    "mode": choice(*ANIMATION_MODES), "adapt_scale": boolean, "best_frame": non_negative_int,
    "find_best_frame": boolean, "fit": choice("crop", "pad", "stretch"), "fps": positive_float,
    "no_audio": boolean, "side_by_side": boolean,
}


def configure_parser(parser):
    parser.add_argument("jobs", help="CSV file with columns source,driving,output[,per-job options]")
    parser.add_argument("--skip-existing", action="store_true", help="skip jobs whose output already exists")
    going = parser.add_mutually_exclusive_group()
    going.add_argument("--keep-going", dest="fail_fast", action="store_false", default=False,
                       help="go on after a failed job (default)")
    going.add_argument("--fail-fast", dest="fail_fast", action="store_true", help="stop at the first failed job")
    parser.add_argument("--json", action="store_true", help="print one JSON line per job on stdout")
    parser.add_argument("--shard", default="0/1", metavar="I/N", help="run every N-th job starting at job I")
    add_animation_options(parser)


def parse_shard(text):
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise FomError(f"--shard takes I/N (e.g. 0/4), not {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise FomError(f"--shard {text}: I must be between 0 and N-1")
    return index, count


def read_jobs(path, defaults):
    """[(job number, options namespace)] from the CSV; FomError (exit 2) for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise FomError(f"jobs file {path} does not exist")
    try:
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (csv.Error, UnicodeDecodeError) as error:
        raise FomError(f"jobs file {path} is not a readable CSV file ({error})") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise FomError(f"jobs file {path} needs the columns {', '.join(REQUIRED_COLUMNS)} in its header "
                       f"(missing: {', '.join(missing)})")
    unknown = [column for column in columns if column not in REQUIRED_COLUMNS and column not in JOB_OPTIONS]
    if unknown:
        raise FomError(f"jobs file {path}: unknown column '{unknown[0]}' (per-job options: {', '.join(JOB_OPTIONS)})")

    jobs = []
    for number, row in enumerate(rows, start=1):
        options = copy.copy(defaults)
        for column in REQUIRED_COLUMNS:
            if not (row.get(column) or "").strip():
                raise FomError(f"jobs file {path}, job {number}: the {column} cell is empty")
            setattr(options, column, path.parent / row[column].strip())
        for column, parse in JOB_OPTIONS.items():
            cell = (row.get(column) or "").strip()
            if cell:
                try:
                    setattr(options, column, parse(cell))
                except ValueError as error:
                    raise FomError(f"jobs file {path}, job {number}, column {column}: {error}") from None
        if options.best_frame is not None and options.find_best_frame:
            raise FomError(f"jobs file {path}, job {number}: best_frame and find_best_frame exclude each other")
        jobs.append((number, options))
    return jobs


def run(args):
    shard_index, shard_count = parse_shard(args.shard)
    jobs = read_jobs(args.jobs, args)
    jobs = [job for i, job in enumerate(jobs) if i % shard_count == shard_index]
    model = load_requested_model(args)

    failed = 0
    for number, options in jobs:
        report = {"job": number, "source": str(options.source), "driving": str(options.driving),
                  "output": str(options.output)}
        start = time.perf_counter()
        if args.skip_existing and options.output.exists():
            report["status"] = "skipped"
        else:
            try:
                animate_pair(model, check_source(options.source), check_driving(options.driving), options.output,
                             options)
                report["status"] = "done"
            except FomError as error:
                failed += 1
                report.update(status="failed", error=str(error))
                print(f"fom: error: job {number} ({options.source}, {options.driving}): {error}", file=sys.stderr)
                if args.fail_fast:
                    emit(report, start, args)
                    break
        emit(report, start, args)
    return 1 if failed else 0


def emit(report, start, args):
    report["seconds"] = round(time.perf_counter() - start, 3)
    if args.json:
        print(json.dumps(report), flush=True)
    elif not args.quiet and report["status"] != "failed":
        print(f"{report['status']}: {report['output']}", file=sys.stderr)
