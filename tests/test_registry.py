"""Released checkpoints by name: download, check, cache, resume, lock (fom_cli/registry.py).

Nothing here touches the internet: a stdlib HTTP server on 127.0.0.1 serves the fixture checkpoint, and a
user registry (FOM_REGISTRY) points a model called `small` at it.
"""

import hashlib
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
# Names of which one public copy is known (Hugging Face MCMLXXXVII/thinplatesv1 orig/): see registry.yaml.
ONE_COPY_KNOWN = {"tpsmm-taichi", "tpsmm-ted", "tpsmm-mgif"}
RELEASED_TPSMM = {"tpsmm-vox": ("tpsmm-vox-256", 256, "vox.pth.tar"),
                  "tpsmm-taichi": ("tpsmm-taichi-256", 256, "taichi.pth.tar"),
                  "tpsmm-ted": ("tpsmm-ted-384", 384, "ted.pth.tar"),
                  "tpsmm-mgif": ("tpsmm-mgif-256", 256, "mgif.pth.tar")}
CHUNK = 64 * 1024


class FileServer:
    """Files from memory over HTTP/1.1 with `Range: bytes=N-` and `If-Range` on an ETag, and the faults a real
    download meets. With `certificate` (a PEM holding key and certificate) it speaks https."""

    def __init__(self, certificate=None):
        self.files = {}          # URL path -> bytes
        self.redirects = {}      # URL path -> Location to send instead (302)
        self.cut_next = {}       # URL path -> bytes to send before closing the connection (next request only)
        self.replace_after_cut = {}  # URL path -> bytes the file becomes once a cut happened (a re-upload)
        self.wrong_offset_next = {}  # URL path -> the offset the next 206 starts at, whatever was asked
        self.ignore_range = False  # answer every request with the whole file (200), as some servers do
        self.send_validators = True  # ETag and Last-Modified headers; without them nothing can be resumed
        self.chunk_delay = 0.0   # seconds between 64 KiB chunks: a slow server
        self.log = []            # (path, Range header or None, If-Range header or None, status)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                owner.serve(self)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if certificate is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certificate)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}{path}"

    @staticmethod
    def etag(data):
        return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'

    def serve(self, handler):
        path = handler.path
        data, asked, if_range = self.files.get(path), handler.headers.get("Range"), handler.headers.get("If-Range")
        if path in self.redirects:
            return self.reply(handler, asked, if_range, 302, {"Location": self.redirects[path]}, b"")
        if data is None:
            return self.reply(handler, asked, if_range, 404, {}, b"")
        validators = {"ETag": self.etag(data), "Last-Modified": "Mon, 07 Dec 2026 10:00:00 GMT"} \
            if self.send_validators else {}
        if if_range is not None and if_range != validators.get("ETag"):
            asked_range = None  # the file changed since: RFC 9110 says to send all of it
        else:
            asked_range = None if self.ignore_range else asked
        start = int(re.fullmatch(r"bytes=(\d+)-", asked_range).group(1)) if asked_range else 0
        if asked_range and start >= len(data):
            return self.reply(handler, asked, if_range, 416, {"Content-Range": f"bytes */{len(data)}"}, b"")
        if asked_range and path in self.wrong_offset_next:
            start = self.wrong_offset_next.pop(path)
        headers = {**validators, **({"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                                    if asked_range else {})}
        cut = self.cut_next.pop(path, None)
        if cut is not None and path in self.replace_after_cut:
            self.files[path] = self.replace_after_cut.pop(path)
        self.reply(handler, asked, if_range, 206 if asked_range else 200, headers, data[start:], cut)

    def reply(self, handler, asked, if_range, status, headers, body, cut=None):
        self.log.append((handler.path, asked, if_range, status))
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
        return [(asked, status) for served, asked, _, status in self.log if served == path]

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


# What the cache holds after `small` was fetched for animation: the slim file and the record of its origin.
CACHED = ["checkpoints/small.origin.json", "checkpoints/small.slim.pth"]


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
    assert cache_contents(home) == CACHED
    slim = torch.load(home / "checkpoints" / "small.slim.pth", weights_only=True)
    assert set(slim) == {"generator", "kp_detector", "config", "fom", "epoch"}  # no discriminator, no optimisers
    assert slim["fom"]["original_sha256"] == SMALL_SHA256 and slim["fom"]["registry_name"] == "small"
    origin = json.loads((home / "checkpoints" / "small.origin.json").read_text())
    assert origin["sha256"] == SMALL_SHA256 and origin["size"] == len(SMALL_BYTES)
    assert origin["source"] == server.url("/small.pth.tar")
    assert "(sha256)" in err and "warning" not in err
    assert (home / "checkpoints" / "small.slim.pth").stat().st_size < len(SMALL_BYTES) / 2

    # The second use reads the cache: no request even with the server gone and FOM_OFFLINE set.
    server.close()
    monkeypatch.setenv("FOM_OFFLINE", "1")
    code, _, err = run_cli(args + ["-o", tmp_path / "second.mp4", "--quiet"], capsys)
    assert code == 0, err
    assert len(server.log) == 1 and (tmp_path / "second.mp4").stat().st_size > 0


def part_of(url):
    """Where a download of the test registry's `small` from `url` is kept while under way, and its record."""
    from fom_cli.registry import load_registry, part_path

    part = part_path(load_registry()["small"], url)
    return part, part.with_name(part.name + ".json")


def leave_partial_download(url, data, validator):
    """What a `fom download` killed mid-way leaves: the first bytes, and the validator of the reply they came in."""
    part, record = part_of(url)
    part.parent.mkdir(parents=True)
    part.write_bytes(data)
    if validator is not None:
        record.write_text(json.dumps({"url": url, "validator": validator}))
    return part


def test_a_cut_connection_resumes_where_it_stopped(home, server, tmp_path, monkeypatch, capsys):
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")])
    server.cut_next["/small.pth.tar"] = 1_000_000
    code, out, err = run_cli(["download", "small", "--quiet"], capsys)
    assert code == 0, err
    (_, first, no_validator, status), (_, resumed, validator, resumed_status) = server.log
    assert first is None and no_validator is None and status == 200 and resumed_status == 206
    # From what had arrived: the read the cut interrupted is lost, the chunks before it are kept; and only
    # if the file is still the one those bytes came from.
    assert 900_000 < int(re.fullmatch(r"bytes=(\d+)-", resumed).group(1)) <= 1_000_000
    assert validator == FileServer.etag(SMALL_BYTES)
    assert out.strip() == str(home / "checkpoints" / "small.slim.pth")
    assert cache_contents(home) == CACHED


def test_a_partial_download_left_by_an_earlier_run_is_resumed(home, server, tmp_path, monkeypatch, capsys):
    url = server.url("/small.pth.tar")
    use_registry(tmp_path, monkeypatch, [url])
    leave_partial_download(url, SMALL_BYTES[:3_000_000], FileServer.etag(SMALL_BYTES))
    code, _, err = run_cli(["download", "small", "--keep-full", "--quiet"], capsys)
    assert code == 0, err
    assert server.log == [("/small.pth.tar", "bytes=3000000-", FileServer.etag(SMALL_BYTES), 206)]
    assert (home / "checkpoints" / "small.pth.tar").read_bytes() == SMALL_BYTES
    assert cache_contents(home) == ["checkpoints/small.origin.json", "checkpoints/small.pth.tar",
                                    "checkpoints/small.slim.pth"]


@pytest.mark.parametrize("left", ["no validator", "an older fom's shared .part"])
def test_bytes_of_unknown_origin_are_never_resumed(home, server, tmp_path, monkeypatch, capsys, left):
    url = server.url("/small.pth.tar")
    use_registry(tmp_path, monkeypatch, [url])
    junk = b"\xff" * 3_000_000  # not the file's first bytes: resuming them would splice two files
    if left == "no validator":
        leave_partial_download(url, junk, validator=None)
    else:
        (home / "checkpoints").mkdir(parents=True)
        (home / "checkpoints" / "small.pth.tar.part").write_bytes(junk)
    code, _, err = run_cli(["download", "small", "--keep-full", "--quiet"], capsys)
    assert code == 0, err
    assert server.downloads() == [(None, 200)]
    assert (home / "checkpoints" / "small.pth.tar").read_bytes() == SMALL_BYTES


def test_a_206_from_another_offset_starts_the_file_again(home, server, tmp_path, monkeypatch, capsys):
    url = server.url("/small.pth.tar")
    use_registry(tmp_path, monkeypatch, [url])
    leave_partial_download(url, SMALL_BYTES[:3_000_000], FileServer.etag(SMALL_BYTES))
    server.wrong_offset_next["/small.pth.tar"] = 1_000_000  # asked for 3,000,000 on
    code, _, err = run_cli(["download", "small", "--keep-full", "--quiet"], capsys)
    assert code == 0, err
    assert server.downloads() == [("bytes=3000000-", 206), (None, 200)]
    assert (home / "checkpoints" / "small.pth.tar").read_bytes() == SMALL_BYTES


def test_a_200_to_a_range_request_starts_the_file_again(home, server, tmp_path, monkeypatch, capsys):
    url = server.url("/small.pth.tar")
    use_registry(tmp_path, monkeypatch, [url])
    leave_partial_download(url, SMALL_BYTES[:3_000_000], FileServer.etag(SMALL_BYTES))
    server.ignore_range = True
    code, _, err = run_cli(["download", "small", "--keep-full", "--quiet"], capsys)
    assert code == 0, err
    assert server.downloads() == [("bytes=3000000-", 200)]
    assert (home / "checkpoints" / "small.pth.tar").read_bytes() == SMALL_BYTES  # not 3 MB + the whole file


def test_a_file_changed_on_the_server_between_attempts_is_fetched_whole_not_spliced(home, server, tmp_path,
                                                                                      monkeypatch, capsys):
    url = server.url("/small.pth.tar")
    use_registry(tmp_path, monkeypatch, [url], sha256=None, size=None)
    old_upload = bytes(reversed(SMALL_BYTES))  # another file of the same size
    server.files["/small.pth.tar"] = old_upload
    server.cut_next["/small.pth.tar"] = 1_000_000
    server.replace_after_cut["/small.pth.tar"] = SMALL_BYTES  # re-uploaded while we were cut off
    code, _, err = run_cli(["download", "small", "--keep-full", "--quiet"], capsys)
    assert code == 0, err
    (_, first, _, status), (_, resumed, validator, resumed_status) = server.log
    assert (first, status) == (None, 200) and resumed.startswith("bytes=")
    # We asked for the rest of the old file; the server, seeing it changed, sent all of the new one.
    assert validator == FileServer.etag(old_upload) and resumed_status == 200
    assert (home / "checkpoints" / "small.pth.tar").read_bytes() == SMALL_BYTES


def test_a_server_without_validators_is_downloaded_again_from_the_start_after_a_cut(home, server, tmp_path,
                                                                                    monkeypatch, capsys):
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")])
    server.send_validators = False
    server.cut_next["/small.pth.tar"] = 1_000_000
    code, _, err = run_cli(["download", "small", "--keep-full", "--quiet"], capsys)
    assert code == 0, err
    assert server.downloads() == [(None, 200), (None, 200)]
    assert (home / "checkpoints" / "small.pth.tar").read_bytes() == SMALL_BYTES


def test_a_digest_not_published_but_the_right_tensors_is_used_with_a_warning_naming_it(home, server, tmp_path,
                                                                                       monkeypatch, capsys):
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")], sha256="0" * 64)
    output = tmp_path / "out.mp4"
    code, _, err = run_cli(["animate", PARITY / "small-source.png", PARITY / "small-driving", "-o", output,
                            "--checkpoint", "small", "--quiet"], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("fom: warning:")]
    assert len(warnings) == 1 and SMALL_SHA256 in warnings[0] and "not among the published digests" in warnings[0]
    code, out, _ = run_cli(["models", "--json"], capsys)
    small = json.loads(out)["models"][-1]
    assert small["verification"] == f"digest unknown: {SMALL_SHA256}" and small["sha256"] == ["0" * 64]


def test_a_second_accepted_digest_verifies_without_a_warning(home, server, tmp_path, monkeypatch, capsys):
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")], sha256=["0" * 64, SMALL_SHA256])
    code, _, err = run_cli(["download", "small"], capsys)
    assert code == 0, err
    assert "warning" not in err and "(sha256)" in err
    code, out, _ = run_cli(["models", "--json"], capsys)
    assert json.loads(out)["models"][-1]["verification"] == "sha256"


def test_a_wrong_digest_and_wrong_tensors_are_refused_and_nothing_is_left_in_the_cache(home, server, tmp_path,
                                                                                       monkeypatch, capsys):
    server.files["/small.pth.tar"] = SMALL_BYTES[:2_000_000]  # cut off
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")], size=None)  # so that it is fetched
    output = tmp_path / "out.mp4"
    code, _, err = run_cli(["animate", PARITY / "small-source.png", PARITY / "small-driving", "-o", output,
                            "--checkpoint", "small", "--quiet"], capsys)
    assert_one_error_line(code, err)
    damaged = hashlib.sha256(server.files["/small.pth.tar"]).hexdigest()
    assert damaged in err and SMALL_SHA256 in err and str(home / "checkpoints" / "small.pth.tar") in err
    assert cache_contents(home) == [] and not output.exists()


def test_the_next_url_is_tried_when_the_first_serves_a_truncated_file(home, server, tmp_path, monkeypatch, capsys):
    server.files["/truncated/small.pth.tar"] = SMALL_BYTES[:2_000_000]
    use_registry(tmp_path, monkeypatch, [server.url("/truncated/small.pth.tar"), server.url("/small.pth.tar")],
                 sha256=None, size=None)
    code, _, err = run_cli(["download", "small"], capsys)
    assert code == 0, err
    assert [(path, status) for path, _, _, status in server.log] == [("/truncated/small.pth.tar", 200),
                                                                     ("/small.pth.tar", 200)]
    assert cache_contents(home) == CACHED  # the truncated download deleted
    assert json.loads((home / "checkpoints" / "small.origin.json").read_text())["source"] == \
        server.url("/small.pth.tar")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A throwaway self-signed certificate for 127.0.0.1 (key and certificate in one PEM file)."""
    folder = tmp_path_factory.mktemp("tls")
    pem = folder / "localhost.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem")], check=True, capture_output=True)
    pem.write_text((folder / "key.pem").read_text() + (folder / "cert.pem").read_text())
    return folder


@pytest.mark.skipif(shutil.which("openssl") is None,
                    reason="the openssl command is not installed: no certificate for a local https server")
def test_https_redirected_to_http_is_refused(home, server, tmp_path, monkeypatch, capsys, certificate):
    secure = FileServer(certificate=certificate / "localhost.pem")
    try:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate / "cert.pem"))
        secure.files["/small.pth.tar"] = SMALL_BYTES
        secure.redirects["/moved/small.pth.tar"] = server.url("/small.pth.tar")  # to plain http
        use_registry(tmp_path, monkeypatch, [secure.url("/moved/small.pth.tar")])
        code, _, err = run_cli(["download", "small", "--quiet"], capsys)
        assert_one_error_line(code, err)
        assert f"redirects to {server.url('/small.pth.tar')}, which is not https" in err
        assert server.log == [] and cache_contents(home) == []

        # The same over https all the way works (and proves the test's TLS set-up).
        secure.redirects["/moved/small.pth.tar"] = secure.url("/small.pth.tar")
        code, _, err = run_cli(["download", "small", "--quiet"], capsys)
        assert code == 0, err
        assert cache_contents(home) == CACHED
    finally:
        secure.close()


def test_a_redirect_to_plain_http_elsewhere_is_refused(home, server, tmp_path, monkeypatch, capsys):
    server.redirects["/small.pth.tar"] = "http://mirror.example.invalid/small.pth.tar"
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")])
    code, _, err = run_cli(["download", "small", "--quiet"], capsys)
    assert_one_error_line(code, err)
    assert "redirects to http://mirror.example.invalid/small.pth.tar, which is plain http" in err


def test_the_second_url_is_tried_when_the_first_is_missing(home, server, tmp_path, monkeypatch, capsys):
    use_registry(tmp_path, monkeypatch, [server.url("/gone/small.pth.tar"), server.url("/small.pth.tar")])
    code, _, err = run_cli(["download", "small", "--quiet"], capsys)
    assert code == 0, err
    assert [(path, status) for path, _, _, status in server.log] == [("/gone/small.pth.tar", 404),
                                                                     ("/small.pth.tar", 200)]
    assert cache_contents(home) == CACHED


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
    assert cache_contents(home) == CACHED
    slim = torch.load(home / "checkpoints" / "small.slim.pth", weights_only=True)
    assert slim["fom"]["original_sha256"] == SMALL_SHA256


HOLD_LOCK = """
import os, sys, time
from filelock import FileLock
from pathlib import Path
lock = FileLock(sys.argv[1])
lock.acquire()
Path(sys.argv[2]).write_text(f"{os.getpid()} test-host")  # as fom's download_lock writes it
print("held", flush=True)
time.sleep(600)
"""


def hold_the_lock(home):
    """A process holding `small`'s download lock, as a fom process fetching it would."""
    locks = home / "checkpoints" / ".locks"
    locks.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(locks / "small.pth.tar.lock"),
                               str(locks / "small.pth.tar.owner")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder, locks / "small.pth.tar.lock"


def test_a_lock_left_by_a_killed_process_does_not_block(home, server, tmp_path, monkeypatch, capsys):
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")])
    holder, _ = hold_the_lock(home)
    holder.kill()  # SIGKILL: no clean-up; the OS releases its lock with it
    holder.wait()
    monkeypatch.setenv("FOM_LOCK_TIMEOUT", "1")
    code, _, err = run_cli(["download", "small"], capsys)
    assert code == 0, err
    assert "waiting" not in err and cache_contents(home) == CACHED


def test_a_lock_held_without_progress_is_given_up_in_one_line_naming_it(home, server, tmp_path, monkeypatch, capsys):
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")])
    holder, lock_file = hold_the_lock(home)
    try:
        monkeypatch.setenv("FOM_LOCK_TIMEOUT", "1.5")
        started = time.monotonic()
        code, _, err = run_cli(["download", "small", "--quiet"], capsys)
        assert_one_error_line(code, err)
        assert str(lock_file) in err and f"pid {holder.pid}" in err and "without progress" in err
        assert 1.5 <= time.monotonic() - started < 30 and server.log == []
    finally:
        holder.kill()
        holder.wait()


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
    for name, model in models.items():
        # Every name has two independent copies or more, a Hugging Face one among them, where two are known.
        assert len(model["urls"]) >= (1 if name in ONE_COPY_KNOWN else 2), name
        assert all(url.startswith("https://") and url.endswith("/" + model["file"]) for url in model["urls"])
        assert any(url.startswith("https://huggingface.co/") and "/resolve/main/" in url for url in model["urls"])
        assert not any("tsinghua" in url for url in model["urls"])  # deleted by their author
        assert model["verification"] is None and not model["cached"]
    assert models["vox"]["file"] == "vox-cpk.pth.tar" and models["fashion"]["file"] == "fashion.pth.tar"
    assert models["vox-adv"]["size"] == 750_926_934
    assert models["vox-adv"]["sha256"] == ["6792d6810d7f46e3c5c487a1cfec916b96fad8912c3c6cc81baa1fc300c820d3"]
    assert models["vox"]["sha256"] == ["abb41ab1f279f26326c0d6e4d20702de6658364665aa1313daa7a63e89ea2b23"]
    assert models["taichi-adv"]["sha256"] == ["cf17bbb05bece3a75f353e42699a4c3ddc8152f486065c2c6741f4d1edecda64"]
    assert (models["tpsmm-vox"]["size"], models["tpsmm-vox"]["sha256"]) == \
        (350_993_469, ["52ad8c848e2a1d91b621de96fea83faf57ce3b8c1c06424e317f4df1d3998204"])

    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")])
    assert run_cli(["download", "small", "--quiet"], capsys)[0] == 0
    code, out, _ = run_cli(["models", "--json"], capsys)
    small = json.loads(out)["models"][-1]
    assert small["name"] == "small" and small["cached"] and small["size"] == len(SMALL_BYTES)
    assert small["path"] == str(home / "checkpoints" / "small.slim.pth") and small["full_path"] is None
    assert small["verification"] == "sha256" and small["source"] == server.url("/small.pth.tar")
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0 and re.search(r"small +fomm +test faces +128 +4 MiB +sha256 +.*small\.slim\.pth", out)

    # A model with no published digest is verified by its structure; a cache made by an earlier fom (no
    # origin record) is read from the slim file's own metadata.
    use_registry(tmp_path, monkeypatch, [server.url("/small.pth.tar")], sha256=None)
    (home / "checkpoints" / "small.origin.json").unlink()
    code, out, _ = run_cli(["models", "--json"], capsys)
    assert json.loads(out)["models"][-1]["verification"] == "structure"


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
    damaged = SMALL_BYTES[:2_000_000]  # cut off
    by_hand.write_bytes(damaged)
    code, _, err = run_cli(["download", "small", "--quiet"], capsys)
    assert_one_error_line(code, err)
    rejected = home / "checkpoints" / "small.pth.tar.rejected"
    assert "sha256" in err and f"moved it to {rejected}" in err
    assert cache_contents(home) == ["checkpoints/small.pth.tar.rejected"] and rejected.read_bytes() == damaged

    # A config that does not fit is a reason too; a second rejected file does not replace the first.
    by_hand.write_bytes(b"a note the user saved under the wrong name")
    code, _, err = run_cli(["download", "small", "--quiet"], capsys)
    assert_one_error_line(code, err)
    assert f"moved it to {rejected}-2" in err and rejected.read_bytes() == damaged

    shutil.copy(SMALL_CHECKPOINT, by_hand)
    code, out, err = run_cli(["download", "small"], capsys)
    assert code == 0, err
    assert f"checked {by_hand} (sha256)" in err
    assert cache_contents(home) == ["checkpoints/small.origin.json", "checkpoints/small.pth.tar",
                                    "checkpoints/small.pth.tar.rejected", "checkpoints/small.pth.tar.rejected-2",
                                    "checkpoints/small.slim.pth"]


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


def test_a_checkpoint_file_spelled_like_a_model_name_wins_and_says_so(home, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(SMALL_CHECKPOINT, "vox")
    code, _, err = run_cli(["export", "vox", "--config", SMALL_CONFIG, "-o", tmp_path / "exported.pth"], capsys)
    assert code == 0, err
    assert f"note: using the file {tmp_path / 'vox'}, not the released model 'vox'" in err
    assert not home.exists()


@pytest.mark.parametrize("thing", ["folder", "text file"])
def test_a_path_that_is_no_checkpoint_spelled_like_a_model_name_means_the_model(home, tmp_path, monkeypatch, capsys,
                                                                                thing):
    from fom_cli.fetch import resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    if thing == "folder":
        Path("vox").mkdir()
    else:
        Path("vox").write_text("notes about vox")
    monkeypatch.setenv("FOM_OFFLINE", "1")  # so that the model's download stops at once, naming it
    code, _, err = run_cli(["export", "vox", "-o", tmp_path / "exported.pth"], capsys)
    assert code == 2
    kind = "a folder" if thing == "folder" else "a file that is not a checkpoint"
    assert err.splitlines()[0] == f"note: ./vox is {kind}, so --checkpoint vox means the released model 'vox'"
    assert "model 'vox' is not in the cache and FOM_OFFLINE is set" in err.splitlines()[1]
    assert resolve_checkpoint(None) is None


@pytest.mark.parametrize("entry, message", [
    ({"urls": ["https://example.invalid/a"], "sha": None}, "unknown field 'sha' (did you mean 'sha256'?)"),
    ({"sha256": "abc"}, "'sha256' must be 64 lowercase hex digits, a list of such digests, or null"),
    ({"file": "../../escape.pth"}, "'file' must be a plain file name"),
    ({"family": "monkeynet"}, "'family' must be one of: fomm, tpsmm"),
    ({"urls": ["http://mirror.example.com/vox-cpk.pth.tar"]},
     "http://mirror.example.com/vox-cpk.pth.tar is plain http, allowed only for localhost or with `allow_http: true`"),
    ({"sha256": ["0" * 64, "abc"]}, "'sha256' must be 64 lowercase hex digits, a list of such digests, or null"),
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

    # A company mirror inside a trusted network may be plain http when its entry says so.
    registry.write_text("models:\n  vox:\n    urls: [http://mirror.intranet/vox-cpk.pth.tar]\n    allow_http: true\n")
    assert load_registry()["vox"].urls == ("http://mirror.intranet/vox-cpk.pth.tar",)


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
