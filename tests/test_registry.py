"""Released checkpoints by name: download, check, cache, resume, lock (fom_cli/registry.py).

Nothing here touches the internet: a stdlib HTTP server on 127.0.0.1 serves the fixture checkpoint, and a
user registry (FOM_REGISTRY) points a model called `small` at it.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, run_cli

REPO = Path(__file__).resolve().parent.parent
SMALL_BYTES = SMALL_CHECKPOINT.read_bytes()
# sha256sum tests/fixtures/fomm-parity/small.pth.tar
SMALL_SHA256 = "7c7c52feaca39038c2995ceff775aa4fa365708ab7a10dbc337dde63a3a807c3"
RELEASED = ["vox", "vox-adv", "taichi", "taichi-adv", "nemo", "mgif", "bair", "fashion"]
# The Thin-Plate Spline Motion Model's releases: name -> (config, resolution, file).
RELEASED_TPSMM = {"tpsmm-vox": ("tpsmm-vox-256", 256, "vox.pth.tar"),
                  "tpsmm-taichi": ("tpsmm-taichi-256", 256, "taichi.pth.tar"),
                  "tpsmm-ted": ("tpsmm-ted-384", 384, "ted.pth.tar"),
                  "tpsmm-mgif": ("tpsmm-mgif-256", 256, "mgif.pth.tar")}
CHUNK = 64 * 1024


class FileServer:
    """Files from memory over HTTP/1.1 with `Range: bytes=N-`, and the faults a real download meets."""

    def __init__(self):
        self.files = {}          # URL path -> bytes
        self.cut_next = {}       # URL path -> bytes to send before closing the connection (next request only)
        self.chunk_delay = 0.0   # seconds between 64 KiB chunks: a slow server
        self.log = []            # (path, Range header or None, status)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                owner.serve(self)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve(self, handler):
        data, asked = self.files.get(handler.path), handler.headers.get("Range")
        if data is None:
            return self.reply(handler, asked, 404, {}, b"")
        start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1)) if asked else 0
        if start >= len(data) and asked:
            return self.reply(handler, asked, 416, {"Content-Range": f"bytes */{len(data)}"}, b"")
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if asked else {}
        self.reply(handler, asked, 206 if asked else 200, headers, data[start:], self.cut_next.pop(handler.path, None))

    def reply(self, handler, asked, status, headers, body, cut=None):
        self.log.append((handler.path, asked, status))
        handler.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        try:
            for offset in range(0, len(body) if cut is None else cut, CHUNK):
                handler.wfile.write(body[offset:offset + CHUNK if cut is None else min(offset + CHUNK, cut)])
                time.sleep(self.chunk_delay)
            if cut is not None:  # the connection drops mid-file
                handler.wfile.flush()
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            handler.close_connection = True

    def downloads(self, path="/small.pth.tar"):
        return [(asked, status) for served, asked, status in self.log if served == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    server = FileServer()
    server.files["/small.pth.tar"] = SMALL_BYTES
    yield server
    server.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty FOM_HOME; loopback never goes through a proxy."""
    home = tmp_path / "fom-home"
    monkeypatch.setenv("FOM_HOME", str(home))
    monkeypatch.delenv("FOM_OFFLINE", raising=False)
    monkeypatch.delenv("FOM_REGISTRY", raising=False)
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return home


def use_registry(tmp_path, monkeypatch, urls, sha256=SMALL_SHA256, size=len(SMALL_BYTES), file="small.pth.tar",
                 family="fomm", config=SMALL_CONFIG):
    """A user registry with one model, `small`, whose config path is relative to the registry file."""
    folder = tmp_path / "company"
    folder.mkdir(exist_ok=True)
    shutil.copy(config, folder / "small-config.yaml")
    entry = {"family": family, "config": "small-config.yaml", "resolution": 128, "domain": "test faces",
             "file": file, "size": size, "sha256": sha256, "urls": urls}
    (folder / "registry.yaml").write_text(json.dumps({"models": {"small": entry}}))  # JSON is YAML
    monkeypatch.setenv("FOM_REGISTRY", str(folder / "registry.yaml"))


def cache_contents(home):
    """Every file under FOM_HOME but the lock files (empty files that coordinate processes)."""
    return sorted(str(path.relative_to(home)) for path in home.rglob("*")
                  if path.is_file() and ".locks" not in path.parts)


def assert_one_error_line(code, err):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("fom: error: ") and "Traceback" not in err, err


def test_first_use_downloads_checks_animates_then_the_cache_works_offline(home, server, tmp_path, monkeypatch,
                                                                       capsys):
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")])
    args = ["animate", PARITY / "small-source.png", PARITY / "small-driving", "--checkpoint", "small"]
    code, _, err = run_cli(args + ["-o", tmp_path / "first.mp4"], capsys)
    assert code == 0, err
    assert "downloading small" in err and "100%" in err  # the progress bar
    assert (tmp_path / "first.mp4").stat().st_size > 0
    assert cache_contents(home) == ["checkpoints/small.slim.pth"]
    slim = torch.load(home / "checkpoints" / "small.slim.pth", weights_only=True)
    assert set(slim) == {"generator", "kp_detector", "config", "fom", "epoch"}  # no discriminator, no optimisers
    assert slim["fom"]["original_sha256"] == SMALL_SHA256 and slim["fom"]["registry_name"] == "small"
    assert (home / "checkpoints" / "small.slim.pth").stat().st_size < len(SMALL_BYTES) / 2

    # The second use reads the cache: no request even with the server gone and FOM_OFFLINE set.
    server.close()
    monkeypatch.setenv("FOM_OFFLINE", "1")
    code, _, err = run_cli(args + ["-o", tmp_path / "second.mp4", "--quiet"], capsys)
    assert code == 0, err
    assert len(server.log) == 1 and (tmp_path / "second.mp4").stat().st_size > 0


def test_a_cut_connection_resumes_where_it_stopped(home, server, tmp_path, monkeypatch, capsys):
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")])
    server.cut_next["/small.pth.tar"] = 1_000_000
    code, out, err = run_cli(["download", "small", "--quiet"], capsys)
    assert code == 0, err
    (first, status), (resumed, resumed_status) = server.downloads()
    assert first is None and status == 200 and resumed_status == 206
    # From what had arrived: the read the cut interrupted is lost, the chunks before it are kept.
    assert 900_000 < int(re.fullmatch(r"bytes=(\d+)-", resumed).group(1)) <= 1_000_000
    assert out.strip() == str(home / "checkpoints" / "small.slim.pth")
    assert cache_contents(home) == ["checkpoints/small.slim.pth"]


def test_a_partial_download_left_by_an_earlier_run_is_resumed(home, server, tmp_path, monkeypatch, capsys):
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")])
    part = home / "checkpoints" / "small.pth.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(SMALL_BYTES[:3_000_000])  # as a killed `fom download` leaves it
    code, _, err = run_cli(["download", "small", "--keep-full", "--quiet"], capsys)
    assert code == 0, err
    assert server.downloads() == [("bytes=3000000-", 206)]
    assert (home / "checkpoints" / "small.pth.tar").read_bytes() == SMALL_BYTES
    assert cache_contents(home) == ["checkpoints/small.pth.tar", "checkpoints/small.slim.pth"]


def test_a_wrong_sha256_is_refused_and_nothing_is_left_in_the_cache(home, server, tmp_path, monkeypatch, capsys):
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")], sha256="0" * 64)
    output = tmp_path / "out.mp4"
    code, _, err = run_cli(["animate", PARITY / "small-source.png", PARITY / "small-driving", "-o", output,
                            "--checkpoint", "small", "--quiet"], capsys)
    assert_one_error_line(code, err)
    assert SMALL_SHA256 in err and "0" * 64 in err and str(home / "checkpoints" / "small.pth.tar") in err
    assert cache_contents(home) == [] and not output.exists()


def test_the_second_url_is_tried_when_the_first_is_missing(home, server, tmp_path, monkeypatch, capsys):
    use_registry(tmp_path, monkeypatch, [server.url("/gone/small.pth.tar"), server.url("/small.pth.tar")])
    code, _, err = run_cli(["download", "small", "--quiet"], capsys)
    assert code == 0, err
    assert [(path, status) for path, _, status in server.log] == [("/gone/small.pth.tar", 404),
                                                                  ("/small.pth.tar", 200)]
    assert cache_contents(home) == ["checkpoints/small.slim.pth"]


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("why", ["server down", "FOM_OFFLINE"])
def test_no_network_is_one_line_naming_the_url_and_where_to_put_the_file(home, tmp_path, monkeypatch, capsys, why):
    url = f"http://127.0.0.1:{closed_port()}/small.pth.tar"
    use_registry(tmp_path, monkeypatch, [url])
    if why == "FOM_OFFLINE":
        monkeypatch.setenv("FOM_OFFLINE", "1")
    code, _, err = run_cli(["download", "small"], capsys)
    assert_one_error_line(code, err)
    assert url in err and str(home / "checkpoints" / "small.pth.tar") in err
    assert ("FOM_OFFLINE" in err) == (why == "FOM_OFFLINE")
    assert cache_contents(home) == []


def test_a_file_of_the_right_size_but_wrong_tensors_is_refused(home, server, tmp_path, monkeypatch, capsys):
    impostor = torch.load(SMALL_CHECKPOINT, weights_only=True)
    key = next(iter(impostor["generator"]))
    impostor["generator"][key] = torch.zeros(3, 3)
    torch.save(impostor, tmp_path / "impostor.pth.tar")
    server.files["/small.pth.tar"] = (tmp_path / "impostor.pth.tar").read_bytes()
    # No sha256 published: the size matches, so only the structure check can tell.
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")], sha256=None,
                 size=len(server.files["/small.pth.tar"]))
    code, _, err = run_cli(["download", "small", "--quiet"], capsys)
    assert_one_error_line(code, err)
    assert f"generator.{key}" in err and "small-config" in err
    assert cache_contents(home) == []


def test_two_processes_fetching_one_model_at_once_end_with_one_good_file(home, server, tmp_path, monkeypatch):
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")], sha256=None)
    server.chunk_delay = 0.04  # about 2.5 s for the file: the two runs overlap
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen([sys.executable, "-m", "fom_cli", "download", "small"], env=environment, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [run.communicate(timeout=120) for run in runs]
    for run, (out, err) in zip(runs, results):
        assert run.returncode == 0, err
        assert out.strip() == str(home / "checkpoints" / "small.slim.pth")
    assert server.downloads() == [(None, 200)]  # one fetched it, the other waited and found it
    assert cache_contents(home) == ["checkpoints/small.slim.pth"]
    slim = torch.load(home / "checkpoints" / "small.slim.pth", weights_only=True)
    assert slim["fom"]["original_sha256"] == SMALL_SHA256


def test_models_json_lists_the_released_names_with_sizes_and_cached_state(home, server, tmp_path, monkeypatch,
                                                                         capsys):
    code, out, _ = run_cli(["models", "--json"], capsys)
    listing = json.loads(out)
    models = {model["name"]: model for model in listing["models"]}
    assert list(models) == RELEASED + list(RELEASED_TPSMM) and listing["cache"] == str(home / "checkpoints")
    for name in RELEASED:
        model = models[name]
        assert model["family"] == "fomm" and model["resolution"] == 256 and not model["cached"]
        assert model["config"] in (f"{name}-256",) and model["urls"][0].endswith(model["file"])
        assert "size" in model and "sha256" in model
    for name, (config, resolution, file) in RELEASED_TPSMM.items():
        model = models[name]
        assert model["family"] == "tpsmm" and (model["config"], model["resolution"], model["file"]) == \
            (config, resolution, file)
        assert not model["cached"] and model["urls"] and all(url.startswith("https://") for url in model["urls"])
    assert models["vox"]["file"] == "vox-cpk.pth.tar" and models["fashion"]["file"] == "fashion.pth.tar"
    assert models["vox-adv"]["size"] == 750_926_934
    assert models["vox-adv"]["sha256"] == "6792d6810d7f46e3c5c487a1cfec916b96fad8912c3c6cc81baa1fc300c820d3"

    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")])
    assert run_cli(["download", "small", "--quiet"], capsys)[0] == 0
    code, out, _ = run_cli(["models", "--json"], capsys)
    small = json.loads(out)["models"][-1]
    assert small["name"] == "small" and small["cached"] and small["size"] == len(SMALL_BYTES)
    assert small["path"] == str(home / "checkpoints" / "small.slim.pth") and small["full_path"] is None
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0 and re.search(r"small +fomm +test faces +128 +4 MiB +.*small\.slim\.pth", out)


@pytest.mark.parametrize("given, expected", [("voxx", "did you mean 'vox'?"), ("tai-chi", "did you mean 'taichi'?")])
def test_an_unknown_name_is_one_line_with_the_closest_and_the_known_ones(home, tmp_path, capsys, given, expected):
    code, _, err = run_cli(["animate", PARITY / "small-source.png", PARITY / "small-driving", "-o", tmp_path / "o.mp4",
                            "--checkpoint", given], capsys)
    assert_one_error_line(code, err)
    assert expected in err and ", ".join(RELEASED + list(RELEASED_TPSMM)) in err
    assert not home.exists()  # nothing was fetched nor created


def test_a_released_file_name_that_is_not_there_points_to_its_model_name(home, tmp_path, capsys):
    code, _, err = run_cli(["export", tmp_path / "vox-cpk.pth.tar", "-o", tmp_path / "vox.pth"], capsys)
    assert_one_error_line(code, err)
    assert "does not exist" in err and "--checkpoint vox" in err


def test_a_file_put_in_the_cache_by_hand_is_checked_on_first_use(home, tmp_path, monkeypatch, capsys):
    url = f"http://127.0.0.1:{closed_port()}/small.pth.tar"
    use_registry(tmp_path, monkeypatch, [url])
    monkeypatch.setenv("FOM_OFFLINE", "1")
    by_hand = home / "checkpoints" / "small.pth.tar"
    by_hand.parent.mkdir(parents=True)
    by_hand.write_bytes(SMALL_BYTES[:-10] + b"\0" * 10)  # the right size, damaged
    code, _, err = run_cli(["download", "small", "--quiet"], capsys)
    assert_one_error_line(code, err)
    assert "sha256" in err and "deleted" in err and cache_contents(home) == []

    shutil.copy(SMALL_CHECKPOINT, by_hand)
    code, out, err = run_cli(["download", "small", "--quiet"], capsys)
    assert code == 0, err
    assert cache_contents(home) == ["checkpoints/small.pth.tar", "checkpoints/small.slim.pth"]


def test_training_resolves_a_name_to_the_whole_original(home, server, tmp_path, monkeypatch):
    from fom_cli.fetch import resolve_checkpoint

    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")])
    slim = resolve_checkpoint("small", quiet=True)
    assert slim == home / "checkpoints" / "small.slim.pth"
    original = resolve_checkpoint("small", quiet=True, full=True)  # the slim one lacks the training state
    assert original.read_bytes() == SMALL_BYTES and len(server.downloads()) == 2
    assert set(torch.load(original, weights_only=True)) >= {"discriminator", "optimizer_generator", "epoch"}


def test_export_and_train_take_a_name_too(home, server, tmp_path, monkeypatch, capsys):
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")])
    code, _, err = run_cli(["export", "small", "-o", tmp_path / "small.pth", "--quiet"], capsys)
    assert code == 0, err
    assert torch.load(tmp_path / "small.pth", weights_only=True)["fom"]["exported_from"] == "small"
    # Offline, training asks for the whole original, which the cache does not hold (only the slim file).
    monkeypatch.setenv("FOM_OFFLINE", "1")
    code, _, err = run_cli(["train", "--init", "small", "--data", tmp_path, "--device", "cpu"], capsys)
    assert_one_error_line(code, err)
    assert "FOM_OFFLINE" in err and str(home / "checkpoints" / "small.pth.tar") in err


def test_an_existing_path_wins_over_a_model_name(home, tmp_path, monkeypatch):
    from fom_cli.fetch import resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    Path("vox").write_bytes(b"a file the user named vox")
    assert resolve_checkpoint("vox") == Path("vox")
    assert resolve_checkpoint(None) is None and not home.exists()


@pytest.mark.parametrize("entry, message", [
    ({"urls": ["https://example.invalid/a"], "sha": None}, "unknown field 'sha' (did you mean 'sha256'?)"),
    ({"sha256": "abc"}, "'sha256' must be 64 lowercase hex digits or null"),
    ({"file": "../../escape.pth"}, "'file' must be a plain file name"),
    ({"family": "monkeynet"}, "'family' must be one of: fomm, tpsmm"),
])
def test_user_registry_mistakes_are_one_line(home, tmp_path, monkeypatch, capsys, entry, message):
    registry = tmp_path / "mine.yaml"
    registry.write_text(json.dumps({"models": {"vox": entry}}))
    monkeypatch.setenv("FOM_REGISTRY", str(registry))
    code, _, err = run_cli(["models"], capsys)
    assert_one_error_line(code, err)
    assert str(registry) in err and message in err


def test_user_registry_replaces_fields_of_a_released_model_and_adds_models(home, tmp_path, monkeypatch):
    from fom_cli.registry import load_registry

    mirror = "https://mirror.example.invalid/fomm/vox-cpk.pth.tar"
    (tmp_path / "configs").mkdir()
    registry = tmp_path / "mine.yaml"
    registry.write_text(f"models:\n  vox:\n    urls: [{mirror}]\n  private:\n    family: fomm\n"
                        "    config: configs/private.yaml\n    file: private.pth\n    size: null\n    sha256: null\n"
                        f"    urls: [{mirror}]\n")
    monkeypatch.setenv("FOM_REGISTRY", str(registry))
    models = load_registry()
    assert models["vox"].urls == (mirror,) and models["vox"].config == "vox-256"
    assert models["private"].config == str(tmp_path / "configs" / "private.yaml")


def test_the_cache_is_fom_home_else_the_xdg_cache(monkeypatch, tmp_path):
    from fom_cli.registry import cache_home

    monkeypatch.setenv("FOM_HOME", str(tmp_path / "mine"))
    assert cache_home() == tmp_path / "mine"
    monkeypatch.delenv("FOM_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_home() == tmp_path / "xdg" / "fom"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_home() == Path.home() / ".cache" / "fom"


def test_a_tpsmm_model_downloads_slims_and_animates_and_a_fomm_entry_refuses_it(home, server, tmp_path,
                                                                                 monkeypatch, capsys):
    import gzip

    tpsmm = PARITY.parent / "tpsmm-parity"
    server.files["/tpsmm.pth.tar"] = gzip.decompress((tpsmm / "small.pth.tar.gz").read_bytes())
    # A FOMM entry serving a TPSMM file: refused, nothing kept.
    use_registry(tmp_path, monkeypatch, [server.url("/tpsmm.pth.tar")], sha256=None, size=None, file="tpsmm.pth.tar")
    code, _, err = run_cli(["download", "small", "--quiet"], capsys)
    assert_one_error_line(code, err)
    assert "it is a TPSMM checkpoint, not a FOMM one" in err and cache_contents(home) == []

    use_registry(tmp_path, monkeypatch, [server.url("/tpsmm.pth.tar")], sha256=None, size=None, file="tpsmm.pth.tar",
                 family="tpsmm", config=tpsmm / "small.yaml")
    code, _, err = run_cli(["animate", PARITY / "small-source.png", PARITY / "small-driving", "-o",
                            tmp_path / "out.mp4", "--checkpoint", "small", "--mode", "avd"], capsys)
    assert code == 0, err
    assert "downloaded small" in err
    slim = torch.load(home / "checkpoints" / "small.slim.pth", weights_only=True)
    # What animation needs: no optimiser state; the config travels inside.
    assert set(slim) == {"inpainting_network", "dense_motion_network", "kp_detector", "avd_network", "config", "fom",
                         "epoch"}
    assert slim["config"]["model_params"]["common_params"]["num_tps"] == 4
    code, _, err = run_cli(["animate", PARITY / "small-source.png", PARITY / "small-driving", "-o",
                            tmp_path / "again.mp4", "--checkpoint", "small", "--quiet"], capsys)
    assert code == 0, err
    assert [status for _, status in server.downloads("/tpsmm.pth.tar")] == [200, 200]  # the second run read the cache
