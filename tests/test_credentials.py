"""C2PA content credentials (--sign, media/credentials.py): signed with a throwaway certificate made here,
validated by c2pa-python's own reader and by fom inspect; a changed picture breaks them."""

import datetime
import json
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from fom_cli.media.marks import DIGITAL_SOURCE_TYPE, read_label
from fom_cli.media.video_in import probe

c2pa = pytest.importorskip("c2pa", reason="c2pa-python needs Python 3.10 or later")

SAMPLES = Path(__file__).resolve().parent.parent / "fom_cli" / "samples"
SOURCE, DRIVING = SAMPLES / "toon-1.png", SAMPLES / "drive-talk.mp4"


@pytest.fixture(scope="module")
def signing_files(tmp_path_factory):
    """(key, certificate chain): a P-256 signer certificate issued by a throwaway CA, as C2PA wants them (an
    end-entity certificate for digital signatures with an extended key usage, then its issuer)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common_name):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fom tests")])

    def certificate(subject, issuer, public_key, signing_key, ca):
        usage = dict(digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
                     key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(**usage), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
        if not ca:
            builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
                                      critical=False))
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate(name("fom tests CA"), name("fom tests CA"), ca_key.public_key(), ca_key, ca=True)
    signer = certificate(name("fom tests signer"), ca.subject, key.public_key(), ca_key, ca=False)
    folder = tmp_path_factory.mktemp("signing")
    (folder / "signer.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (folder / "chain.pem").write_bytes(signer.public_bytes(serialization.Encoding.PEM)
                                       + ca.public_bytes(serialization.Encoding.PEM))
    return folder / "signer.key", folder / "chain.pem"


def manifest_of(path):
    reader = c2pa.Reader(str(path))
    try:
        return reader.get_validation_state(), reader.get_active_manifest(), reader.get_validation_results()
    finally:
        reader.close()


def failures(results):
    return {entry["code"] for entry in (results.get("activeManifest") or {}).get("failure", [])}


def test_a_signed_mp4_and_png_frames_validate_and_say_what_made_them(signing_files, tmp_path, capsys):
    key, chain = signing_files
    for output, duration in ((tmp_path / "out.mp4", "0.4"), (tmp_path / "frames", "0.2")):
        code, _, err = run_cli(["animate", SOURCE, DRIVING, "-o", output, "--duration", duration, "--quiet",
                                "--sign", key, chain], capsys)
        assert code == 0, err
    signed = [tmp_path / "out.mp4", *sorted((tmp_path / "frames").glob("*.png"))]
    assert len(signed) == 1 + 5
    for path in signed:
        state, manifest, results = manifest_of(path)
        assert state == "Valid"   # signature and hashes hold; a throwaway CA is on no trust list:
        assert failures(results) == {"signingCredential.untrusted"}
        actions = next(assertion["data"]["actions"] for assertion in manifest["assertions"]
                       if assertion["label"].startswith("c2pa.actions"))
        assert {"action": "c2pa.created", "digitalSourceType": DIGITAL_SOURCE_TYPE}.items() <= actions[0].items()
        assert [ingredient["title"] for ingredient in manifest["ingredients"]] == ["toon-1.png", "drive-talk.mp4"]
        fom = next(assertion["data"] for assertion in manifest["assertions"]
                   if assertion["label"] == "org.fom.synthetic_media")
        assert [entry["file"] for entry in fom["inputs"]] == ["toon-1.png", "drive-talk.mp4"]
        assert fom["model"].startswith("toon-128.pth (sha256 ")
        assert read_label(path)["digital_source_type"] == DIGITAL_SOURCE_TYPE   # fom's own label stays
    assert probe(tmp_path / "out.mp4").num_frames == 10 and probe(tmp_path / "out.mp4").has_audio
    code, out, err = run_cli(["inspect", tmp_path / "out.mp4", "--json"], capsys)
    report = json.loads(out)
    assert report["synthetic"] and report["content_credentials"]["validation_state"] == "Valid"
    assert report["content_credentials"]["signed_by"] == "fom tests signer"
    code, out, err = run_cli(["inspect", signed[1]], capsys)
    assert "C2PA manifest: Valid, signed by fom tests signer (the signer is on no C2PA trust list)" in out


def test_a_changed_picture_breaks_the_signature(signing_files, tmp_path, capsys):
    import zlib

    key, chain = signing_files
    code, _, err = run_cli(["animate", SOURCE, DRIVING, "-o", tmp_path / "frames", "--duration", "0.1", "--quiet",
                            "--sign", key, chain], capsys)
    assert code == 0, err
    frame = next((tmp_path / "frames").glob("*.png"))
    data = bytearray(frame.read_bytes())
    # Change the first pixel's red value inside the image data, with a valid chunk checksum.
    at = data.index(b"IDAT") - 4
    length = int.from_bytes(data[at:at + 4], "big")
    pixels = bytearray(zlib.decompress(bytes(data[at + 8:at + 8 + length])))
    pixels[1] ^= 0xFF
    packed = zlib.compress(bytes(pixels))
    chunk = len(packed).to_bytes(4, "big") + b"IDAT" + packed + zlib.crc32(b"IDAT" + packed).to_bytes(4, "big")
    frame.write_bytes(bytes(data[:at]) + chunk + bytes(data[at + 12 + length:]))
    state, _, results = manifest_of(frame)
    assert state == "Invalid" and failures(results) - {"signingCredential.untrusted"}
    code, out, err = run_cli(["inspect", frame], capsys)
    assert "C2PA manifest: Invalid" in out


def test_what_sign_cannot_do_stops_before_any_work(signing_files, tmp_path, capsys, monkeypatch):
    key, chain = signing_files
    other_key = tmp_path / "other.key"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cases = [
        (["-o", tmp_path / "out.mkv", "--sign", key, chain], "MKV or WebM"),
        (["-o", tmp_path / "out.mp4", "--sign", key, chain, "--no-mark"], "--no-mark"),
        (["-o", tmp_path / "out.mp4", "--sign", tmp_path / "missing.key", chain], "not a file"),
        (["-o", tmp_path / "out.mp4", "--sign", other_key, chain], "cannot sign"),
    ]
    for options, message in cases:
        code, _, err = run_cli(["animate", SOURCE, DRIVING, "--duration", "0.1", "--quiet", *options], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) <= 2, (options, err)
    monkeypatch.setitem(sys.modules, "c2pa", None)   # as where the extra is not installed
    code, _, err = run_cli(["animate", SOURCE, DRIVING, "-o", tmp_path / "out.mp4", "--sign", key, chain], capsys)
    assert code == 2 and "pip install 'fom[c2pa]'" in err
    assert list(tmp_path.glob("out*")) == []
