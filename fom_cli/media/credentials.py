"""C2PA content credentials: a signed manifest inside the file saying that fom made it, and from what.

`--sign KEY CERT` (the optional extra `pip install 'fom[c2pa]'`, the c2pa-python bindings) embeds in each
MP4, MOV, GIF and PNG output a manifest signed with the key, whose certificate chain (CERT, PEM, the signer's
certificate first) says who signed: a `c2pa.created` action with IPTC's digital source type
trainedAlgorithmicMedia and fom as the software agent, fom's label (media/marks.py: the model and its
digest), and the source image and driving video as ingredients, each with its sha256. Any change to the
file's pictures afterwards breaks the signature; `fom inspect` validates it.

MKV and WebM have no place for a manifest (C2PA defines none), so --sign refuses them before any work.
"""

import io
import os
from pathlib import Path

from fom_cli import __version__
from fom_cli.errors import BadInput, BadOutput, FomError
from fom_cli.media.files import file_sha256, temporary_path_beside

# Output extension -> the MIME type c2pa signs it as.
SIGNABLE = {".mp4": "video/mp4", ".mov": "video/quicktime", ".png": "image/png", ".gif": "image/gif"}
UNTRUSTED = "signingCredential.untrusted"
INGREDIENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                    ".gif": "image/gif", ".mp4": "video/mp4", ".mov": "video/quicktime", ".m4v": "video/x-m4v"}


def import_c2pa():
    try:
        import c2pa
    except ImportError:
        raise FomError("--sign and reading content credentials need the c2pa-python bindings: "
                       "pip install 'fom[c2pa]'") from None
    return c2pa


def check_signable(output):
    """BadInput for an output --sign cannot sign (a frames folder's PNGs can)."""
    extension = os.path.splitext(os.fspath(output))[1].lower()
    if extension and extension not in SIGNABLE:
        raise BadInput(f"--sign cannot sign {output}: C2PA manifests go into {', '.join(SIGNABLE)} files and PNG "
                       "frames, not into MKV or WebM")


def signing_algorithm(key_pem):
    """The C2PA algorithm for a PEM private key: ES256/384/512 for EC keys by curve, Ed25519, PS256 for RSA."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithms = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name not in algorithms:
            raise ValueError(f"an EC key on {key.curve.name}: C2PA takes P-256, P-384 or P-521")
        return algorithms[key.curve.name]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    raise ValueError(f"a {type(key).__name__}: C2PA takes EC, Ed25519 or RSA keys")


class ContentCredentials:
    """Signs outputs with one key and certificate chain; `ingredients`: the input files (None: in memory)."""

    def __init__(self, key_path, cert_path, label, ingredients=()):
        c2pa = import_c2pa()
        try:
            key_pem, cert_pem = Path(key_path).read_bytes(), Path(cert_path).read_bytes()
        except OSError as error:
            raise BadInput(f"--sign: cannot read {error.filename} ({error.strerror})") from None
        try:
            algorithm = signing_algorithm(key_pem)
            self.signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(algorithm.encode(), cert_pem, key_pem, None))
        except Exception as error:   # cryptography's and c2pa's own errors: a key or chain that cannot sign
            raise BadInput(f"--sign: {key_path} and {cert_path} cannot sign ({str(error).strip().splitlines()[0]})"
                           ) from None
        self.label = label
        self.ingredients = [Path(path) for path in ingredients if path is not None and Path(path).is_file()]
        self._digests = {}
        self._ingredient_archives = None   # c2pa's archive of each ingredient (_builder)
        # c2pa checks the certificate only when it signs: sign a 1-pixel PNG now, so that a chain it refuses
        # stops the run before any frame, not after the last.
        import imageio.v3 as iio
        import numpy as np

        builder = c2pa.Builder(self.manifest("check.png"))
        try:
            builder.sign(self.signer, "image/png", io.BytesIO(iio.imwrite("<bytes>", np.zeros((1, 1, 3), np.uint8),
                                                                          extension=".png")), io.BytesIO())
        except Exception as error:
            raise BadInput(f"--sign: {key_path} and {cert_path} cannot sign ({str(error).strip().splitlines()[0]})"
                           ) from None
        finally:
            builder.close()

    def manifest(self, title):
        software = {"name": "fom", "version": __version__}
        inputs = [{"file": path.name, "sha256": self._digest(path)} for path in self.ingredients]
        return {
            "claim_generator_info": [software], "title": title,
            "assertions": [
                {"label": "c2pa.actions",
                 "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": self.label.digital_source_type,
                                       "softwareAgent": software}]}},
                {"label": "org.fom.synthetic_media", "data": {**self.label.fields(), "inputs": inputs}},
            ],
        }

    def _digest(self, path):
        if path not in self._digests:   # a driving video is read once, however many outputs use it
            self._digests[path] = file_sha256(path)
        return self._digests[path]

    def sign(self, path, title=None):
        """Embed a signed manifest in the file at `path`, in place; `title`: the name the file will have (a
        temporary's own name says nothing), whose extension says the format."""
        c2pa = import_c2pa()
        title = title or Path(path).name
        builder = self._builder(title)
        signed = temporary_path_beside(path)
        try:
            with open(path, "rb") as source, open(signed, "w+b") as destination:
                builder.sign(self.signer, SIGNABLE[os.path.splitext(title)[1].lower()], source, destination)
            os.replace(signed, path)
        except c2pa.C2paError as error:
            raise BadOutput(f"could not sign {title} ({str(error).strip().splitlines()[0]})") from None
        finally:
            builder.close()
            if os.path.exists(signed):
                os.remove(signed)

    def _builder(self, title):
        """A c2pa Builder with the manifest of `title` and the ingredients. c2pa reads each ingredient whole (a
        driving video) to hash and describe it: that is done once, each ingredient kept as c2pa's archive of it,
        which each file's builder adds (a folder of PNG frames signs every frame)."""
        c2pa = import_c2pa()
        if self._ingredient_archives is None:
            self._ingredient_archives = []
            builder = c2pa.Builder(self.manifest("ingredients"))
            try:
                for number, ingredient in enumerate(self.ingredients):
                    kind = INGREDIENT_TYPES.get(ingredient.suffix.lower())
                    if kind is None:
                        continue
                    label = f"ingredient-{number}"
                    with open(ingredient, "rb") as stream:
                        builder.add_ingredient({"title": ingredient.name, "relationship": "inputTo", "label": label},
                                               kind, stream)
                    archive = io.BytesIO()
                    builder.write_ingredient_archive(label, archive)
                    self._ingredient_archives.append(archive.getvalue())
            finally:
                builder.close()
        builder = c2pa.Builder(self.manifest(title))
        for archive in self._ingredient_archives:
            builder.add_ingredient_from_archive(io.BytesIO(archive))
        return builder


def read_credentials(path):
    """What a file's C2PA manifest says, validated: {validation_state, signed_by, actions, fom, failures}, or
    None where the file has none. c2pa missing: {"unavailable": the install line}."""
    try:
        c2pa = import_c2pa()
    except FomError as error:
        return {"unavailable": str(error)}
    try:
        reader = c2pa.Reader(os.fspath(path))
    except Exception:   # c2pa's "no manifest" and "unsupported format" errors
        return None
    try:
        manifest = reader.get_active_manifest() or {}
        results = reader.get_validation_results() or {}
        failures = [entry.get("code") for entry in (results.get("activeManifest") or {}).get("failure", [])]
        assertions = {assertion.get("label"): assertion.get("data") for assertion in manifest.get("assertions", [])}
        actions = (assertions.get("c2pa.actions.v2") or assertions.get("c2pa.actions") or {}).get("actions", [])
        return {"validation_state": reader.get_validation_state(),
                "signed_by": (manifest.get("signature_info") or {}).get("common_name")
                or (manifest.get("signature_info") or {}).get("issuer"),
                "actions": [{"action": action.get("action"), "digital_source_type": action.get("digitalSourceType")}
                            for action in actions],
                "fom": assertions.get("org.fom.synthetic_media"),
                "ingredients": [ingredient.get("title") for ingredient in manifest.get("ingredients", [])],
                "failures": failures}
    finally:
        reader.close()


def describe(credentials):
    """One line for `fom inspect`."""
    if credentials is None:
        return "no C2PA manifest"
    if "unavailable" in credentials:
        return f"C2PA manifests not read ({credentials['unavailable']})"
    created = [action for action in credentials["actions"] if action["action"] == "c2pa.created"]
    what = f", created as {created[0]['digital_source_type']}" if created and created[0]["digital_source_type"] else ""
    # A certificate no C2PA trust list holds (one's own) is reported as a failure; the signature is still checked.
    untrusted = " (the signer is on no C2PA trust list)" if UNTRUSTED in credentials["failures"] else ""
    others = [code for code in credentials["failures"] if code != UNTRUSTED]
    failed = f", failures: {', '.join(others)}" if others else ""
    return (f"C2PA manifest: {credentials['validation_state']}, signed by {credentials['signed_by']}{untrusted}"
            f"{what}{failed}; ingredients: {', '.join(credentials['ingredients']) or 'none'}")

