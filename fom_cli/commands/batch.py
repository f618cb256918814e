"""Run many animation jobs from a CSV file with the model loaded once.

  fom batch JOBS.csv --checkpoint vox-cpk.pth.tar [--skip-existing] [--json] [--shard I/N]

JOBS.csv has a header with the columns source, driving, output and, optionally, per-job options:
mode, adapt_scale, best_frame, find_best_frame, fit, fps, no_audio, side_by_side, start, duration (an empty cell takes
the command-line value), and for faces in larger photos and videos face, crop_source, crop_driving, paste_back,
all_faces, max_size. Relative paths are relative to the jobs file's folder.

A failed job prints one error line and the batch goes on (--fail-fast stops instead); a last line counts
the jobs done, failed and skipped. Exit code: 0 when every job succeeded, 1 when some failed, 2 for a bad
jobs file (one without jobs included). Jobs are numbered from 1 in the order of the file's rows, in
messages, in --json and in --shard: `--shard I/N` (I from 1 to N) runs jobs I, I+N, I+2N, ..., so N
machines or GPUs can split one file with plain shell.
"""

import csv
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import NamedTuple

from fom_cli.errors import FomError, first_line, is_out_of_memory, os_error_message, out_of_memory_message
from fom_cli.commands import animation_options, load_requested_model
from fom_cli.engine import AnimationOptions, animate_file, check_driving, check_outputs, check_source
from fom_cli.options import (ANIMATION_MODES, FITS, add_animation_options, frame_rate, non_negative_float,
                             non_negative_int, positive_float, positive_int)

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
    "find_best_frame": boolean, "fit": choice(*FITS), "fps": frame_rate,
    "no_audio": boolean, "side_by_side": boolean, "start": non_negative_float, "duration": positive_float,
    "face": boolean, "crop_source": boolean, "crop_driving": boolean, "paste_back": boolean, "all_faces": boolean,
    "max_size": positive_int,
}


def configure_parser(parser):
    parser.add_argument("jobs", help="CSV file with columns source,driving,output[,per-job options]")
    parser.add_argument("--skip-existing", action="store_true", help="skip jobs whose output already exists")
    going = parser.add_mutually_exclusive_group()
    going.add_argument("--keep-going", dest="fail_fast", action="store_false", default=False,
                       help="go on after a failed job (default)")
    going.add_argument("--fail-fast", dest="fail_fast", action="store_true", help="stop at the first failed job")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON line per job on stdout, and a last one with the counts")
    parser.add_argument("--shard", default="1/1", metavar="I/N",
                        help="run every N-th job starting at job I (jobs and I count from 1)")
    add_animation_options(parser)


def parse_shard(text):
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise FomError(f"--shard takes I/N (e.g. 1/4), not {text!r}") from None
    if count < 1 or not 1 <= index <= count:
        # Shards once counted from 0: such a script stops here instead of running another share of the jobs.
        raise FomError(f"--shard {text}: I must be between 1 and N (shards count from 1, like the jobs)")
    return index, count


class Job(NamedTuple):
    number: int
    source: Path
    driving: Path
    output: Path
    options: AnimationOptions


def read_jobs(path, defaults):
    """[Job] from the CSV, each job's options the command line's (`defaults`) with its cells over them;
    FomError (exit 2) for a bad file."""
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
        paths = {}
        for column in REQUIRED_COLUMNS:
            if not (row.get(column) or "").strip():
                raise FomError(f"jobs file {path}, job {number}: the {column} cell is empty")
            paths[column] = path.parent / row[column].strip()
        cells = {}
        for column, parse in JOB_OPTIONS.items():
            cell = (row.get(column) or "").strip()
            if cell:
                try:
                    cells[column] = parse(cell)
                except ValueError as error:
                    raise FomError(f"jobs file {path}, job {number}, column {column}: {error}") from None
        if "no_audio" in cells:
            cells["audio"] = not cells.pop("no_audio")
        if cells.get("best_frame") is not None and cells.get("find_best_frame"):
            raise FomError(f"jobs file {path}, job {number}: best_frame and find_best_frame exclude each other")
        try:
            options = animation_options(defaults, **cells)   # what cannot work stops here, before the model loads
        except FomError as error:
            raise FomError(f"jobs file {path}, job {number}: {error}") from None
        jobs.append(Job(number, paths["source"], paths["driving"], paths["output"], options))
    if not jobs:
        # Most likely the wrong file or a generator that failed: say so rather than succeed at nothing.
        raise FomError(f"jobs file {path} has no jobs (a header and no rows)")
    return jobs


def run(args):
    started = time.perf_counter()
    shard_index, shard_count = parse_shard(args.shard)
    jobs = read_jobs(args.jobs, args)
    # Every shard checks every job's output, as read_jobs checks every row: a clash between two shards'
    # jobs would lose data as surely as one within a shard.
    to_write = [job for job in jobs if not (args.skip_existing and job.output.exists())]
    check_outputs([(job.source, job.driving, job.output) for job in to_write], args.overwrite,
                  job_names=[f"job {job.number}" for job in to_write], signed=bool(args.sign))
    jobs = [job for job in jobs if (job.number - 1) % shard_count == shard_index - 1]
    model = load_requested_model(args)

    counts = {"done": 0, "failed": 0, "skipped": 0}
    for number, source, driving, output, options in jobs:
        report = {"job": number, "source": str(source), "driving": str(driving), "output": str(output)}
        start = time.perf_counter()
        if args.skip_existing and output.exists():
            report["status"] = "skipped"
        else:
            try:
                animate_file(model.networks, model.precision, check_source(source), check_driving(driving), output,
                             options, progress=not args.quiet)
                report["status"] = "done"
            except Exception as error:  # any job's failure, even a bug or a GPU out of memory, is that job's only
                if os.environ.get("FOM_TRACEBACK") == "1":
                    traceback.print_exc()
                message = job_error_message(error, options)
                report.update(status="failed", error=message)
                print(f"fom: error: job {number} ({source}, {driving}): {message}", file=sys.stderr)
        counts[report["status"]] += 1
        emit(report, start, args)
        if args.fail_fast and report["status"] == "failed":
            break
    summarize(counts, len(jobs), started, args)
    return 1 if counts["failed"] else 0


def job_error_message(error, options):
    """One line for a failed job: the message of an error the user can fix, else what happened."""
    if isinstance(error, FomError):
        return str(error)
    if isinstance(error, OSError):
        return os_error_message(error)
    if is_out_of_memory(error):
        import torch

        torch.cuda.empty_cache()  # give the next job the memory this one held
        return out_of_memory_message(options.batch_size)
    return f"unexpected {type(error).__name__}: {first_line(error)}"


def emit(report, start, args):
    report["seconds"] = round(time.perf_counter() - start, 3)
    if args.json:
        print(json.dumps(report), flush=True)
    elif not args.quiet and report["status"] != "failed":
        print(f"{report['status']}: {report['output']}", file=sys.stderr)


def summarize(counts, num_jobs, started, args):
    """The last line: jobs done, failed, skipped (and not run, after --fail-fast stopped), and the time. It is
    printed with --quiet too: it is the batch's result, not a note."""
    seconds = round(time.perf_counter() - started, 1)
    not_run = num_jobs - sum(counts.values())
    if args.json:
        print(json.dumps({"summary": True, "jobs": num_jobs, **counts, "not_run": not_run, "seconds": seconds}),
              flush=True)
        return
    line = ", ".join(f"{count} {status}" for status, count in counts.items())
    if not_run:
        line += f", {not_run} not run (--fail-fast)"
    print(f"{line} ({seconds:.1f} s)", file=sys.stderr)
