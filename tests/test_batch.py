"""`fom batch`: many jobs, one model load, failures reported and survived, resumable, shardable."""

import json

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
    statuses = [json.loads(line)["status"] for line in out.splitlines()]
    assert statuses == ["done", "failed", "failed"]


def test_skip_existing_and_shards(tmp_path, capsys):
    source, driving = PARITY / "small-source.png", PARITY / "small-driving"
    jobs = write_jobs(tmp_path, [f"{source},{driving},out{i}.gif,absolute" for i in range(4)],
                      header="source,driving,output,mode")
    code, out, err = run_cli(["batch", jobs, *MODEL, "--json", "--shard", "1/2"], capsys)
    assert code == 0, err
    assert [json.loads(line)["job"] for line in out.splitlines()] == [2, 4]
    assert sorted(p.name for p in tmp_path.glob("out*.gif")) == ["out1.gif", "out3.gif"]
    code, out, err = run_cli(["batch", jobs, *MODEL, "--json", "--skip-existing"], capsys)
    assert code == 0, err
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["done", "skipped", "done", "skipped"]


def test_a_bad_jobs_file_exits_2(tmp_path, capsys):
    jobs = write_jobs(tmp_path, ["a.png,b.mp4"], header="source,driving")
    code, _, err = run_cli(["batch", jobs, *MODEL], capsys)
    assert code == 2 and "output" in err and len(err.strip().splitlines()) == 1
    jobs = write_jobs(tmp_path, ["a.png,b.mp4,c.mp4,sideways"], header="source,driving,output,mode")
    code, _, err = run_cli(["batch", jobs, *MODEL], capsys)
    assert code == 2 and "mode" in err
    code, _, err = run_cli(["batch", tmp_path / "nope.csv", *MODEL], capsys)
    assert code == 2 and "does not exist" in err


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
