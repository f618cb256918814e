"""`fom batch`: many jobs, one model load, failures reported and survived, resumable, shardable."""

import json
import re

import imageio.v3 as iio

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, run_cli

MODEL = ["--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--quiet"]


def write_jobs(tmp_path, rows, header="source,driving,output"):
    (tmp_path / "corrupt.mp4").write_bytes(b"this is not a video" * 100)
    path = tmp_path / "jobs.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_a_good_job_a_missing_source_and_a_corrupt_video(tmp_path, capsys):
    source, driving = PARITY / "small-source.png", PARITY / "small-driving"
    jobs = write_jobs(tmp_path, [f"{source},{driving},good.mp4", f"missing.png,{driving},missing.mp4",
                                 f"{source},corrupt.mp4,from-corrupt.mp4"])
    code, out, err = run_cli(["batch", jobs, *MODEL, "--json"], capsys)
    assert code == 1
    assert [p.name for p in tmp_path.glob("*.mp4") if p.name != "corrupt.mp4"] == ["good.mp4"]
    errors = [line for line in err.splitlines() if line.startswith("fom: error: job")]
    assert len(errors) == 2 and "missing.png" in errors[0] and "corrupt.mp4" in errors[1]
    *jobs_lines, summary = [json.loads(line) for line in out.splitlines()]
    assert [line["status"] for line in jobs_lines] == ["done", "failed", "failed"]
    assert [line["job"] for line in jobs_lines] == [1, 2, 3]
    assert summary["summary"] is True and isinstance(summary["seconds"], float)
    assert {key: summary[key] for key in ("jobs", "done", "failed", "skipped", "not_run")} == \
        {"jobs": 3, "done": 1, "failed": 2, "skipped": 0, "not_run": 0}


def test_fail_fast_counts_the_jobs_it_did_not_run(tmp_path, capsys):
    source, driving = PARITY / "small-source.png", PARITY / "small-driving"
    jobs = write_jobs(tmp_path, [f"missing.png,{driving},a.mp4", f"{source},{driving},b.gif"])
    code, out, err = run_cli(["batch", jobs, *MODEL, "--fail-fast"], capsys)
    assert code == 1 and not (tmp_path / "b.gif").exists()
    assert re.fullmatch(r"0 done, 1 failed, 0 skipped, 1 not run \(--fail-fast\) \(\d+\.\d s\)",
                        err.strip().splitlines()[-1]), err


def test_skip_existing_and_shards(tmp_path, capsys):
    source, driving = PARITY / "small-source.png", PARITY / "small-driving"
    jobs = write_jobs(tmp_path, [f"{source},{driving},out{i}.gif,absolute" for i in range(4)],
                      header="source,driving,output,mode")
    # Jobs count from 1 (job 1 is the first row) and so do shards: shard 2/2 runs jobs 2 and 4, the rows
    # that write out1.gif and out3.gif.
    code, out, err = run_cli(["batch", jobs, *MODEL, "--json", "--shard", "2/2"], capsys)
    assert code == 0, err
    assert [json.loads(line).get("job") for line in out.splitlines()] == [2, 4, None]
    assert sorted(p.name for p in tmp_path.glob("out*.gif")) == ["out1.gif", "out3.gif"]
    code, out, err = run_cli(["batch", jobs, *MODEL, "--skip-existing"], capsys)
    assert code == 0, err
    assert re.fullmatch(r"2 done, 0 failed, 2 skipped \(\d+\.\d s\)", err.strip().splitlines()[-1]), err
    assert sorted(p.name for p in tmp_path.glob("out*.gif")) == [f"out{i}.gif" for i in range(4)]
    code, _, err = run_cli(["batch", jobs, *MODEL, "--shard", "0/2"], capsys)
    assert code == 2 and "between 1 and N" in err and len(err.strip().splitlines()) == 1


def test_a_bad_jobs_file_exits_2(tmp_path, capsys):
    jobs = write_jobs(tmp_path, ["a.png,b.mp4"], header="source,driving")
    code, _, err = run_cli(["batch", jobs, *MODEL], capsys)
    assert code == 2 and "output" in err and len(err.strip().splitlines()) == 1
    jobs = write_jobs(tmp_path, ["a.png,b.mp4,c.mp4,sideways"], header="source,driving,output,mode")
    code, _, err = run_cli(["batch", jobs, *MODEL], capsys)
    assert code == 2 and "mode" in err
    code, _, err = run_cli(["batch", tmp_path / "nope.csv", *MODEL], capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "header-only.csv").write_text("source,driving,output\n")
    code, out, err = run_cli(["batch", tmp_path / "header-only.csv", *MODEL], capsys)
    assert code == 2 and out == ""
    assert err == f"fom: error: jobs file {tmp_path / 'header-only.csv'} has no jobs (a header and no rows)\n"


def test_outputs_that_clash_or_are_inputs_are_refused_before_any_job_runs(tmp_path, capsys):
    source, driving = PARITY / "small-source.png", PARITY / "small-driving"
    (tmp_path / "d.mp4").write_bytes(b"the user's video")
    for rows, expected in [([f"{source},{driving},out.mp4", f"{source},{driving},./out.mp4"], "2 jobs would write"),
                           ([f"{source},{driving},first.mp4", f"{source},d.mp4,d.mp4"], "job 2: the output"),
                           ([f"{source},{driving},x.avi"], ".avi")]:
        jobs = write_jobs(tmp_path, rows)
        code, out, err = run_cli(["batch", jobs, *MODEL, "--json"], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], err
        assert out == ""  # no job ran
        assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.mp4", "d.mp4", "jobs.csv"]
    assert (tmp_path / "d.mp4").read_bytes() == b"the user's video"



def test_start_and_duration_columns(tmp_path, capsys):
    # The fixture's driving folder plays at 25 fps: from 0.12 s for 0.16 s are frames 3 to 6.
    source, driving = PARITY / "small-source.png", PARITY / "small-driving"
    jobs = write_jobs(tmp_path, [f"{source},{driving},part.gif,0.12,0.16", f"{source},{driving},whole.gif,,"],
                      header="source,driving,output,start,duration")
    code, out, err = run_cli(["batch", jobs, *MODEL], capsys)
    assert code == 0, err
    assert iio.imread(tmp_path / "part.gif", index=None, mode="RGB").shape[0] == 4
    assert iio.imread(tmp_path / "whole.gif", index=None, mode="RGB").shape[0] == 8
