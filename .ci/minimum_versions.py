"""Print pip constraints pinning every dependency pyproject.toml declares (build, run and test) to the
lowest version it allows: the declared floor itself, or, where the registry serves no wheel of that
version for this Python and platform, the lowest one it does serve (said on stderr).

Used by .ci/minimums, so that a floor that is not true (an API the code uses arriving in a later release)
fails CI instead of a user's installation.
"""

import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11: the copy pip carries
    from pip._vendor import tomli as tomllib
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent


def declared_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    texts = project["build-system"]["requires"] + project["project"]["dependencies"]
    for extra in project["project"].get("optional-dependencies", {}).values():
        texts += extra
    return [Requirement(text) for text in texts]


def served_versions(name):
    """The versions the registry serves for this Python and platform (pip's own view)."""
    result = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name], capture_output=True,
                            text=True)
    match = re.search(r"Available versions: (.*)", result.stdout)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"the registry lists no version of {name} for this Python: {result.stderr.strip()}")
    versions = []
    for text in match.group(1).split(","):
        try:
            versions.append(Version(text.strip()))
        except InvalidVersion:  # a few old releases have names such as "1.3-win64"
            pass
    return versions


def installable(name, version):
    """Whether pip finds a wheel of name==version for this Python and platform. `pip index versions` also
    lists releases with only a source archive (numpy 1.23.0 for Python 3.11), which would be built from
    source, if at all: not what a user gets."""
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                             "--only-binary=:all:", "--quiet", f"{name}=={version}"], capture_output=True, text=True)
    return result.returncode == 0


def main():
    pins = {}
    for requirement in declared_requirements():
        floors = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
        if not floors:
            continue
        floor = max(floors)
        allowed = sorted(version for version in served_versions(requirement.name)
                         if version in requirement.specifier and not version.is_prerelease)
        lowest = next((version for version in allowed if installable(requirement.name, version)), None)
        if lowest is None:
            raise SystemExit(f"the registry serves no version of {requirement} for this Python")
        if lowest != floor:
            print(f"{requirement.name}: {floor} is not served for this Python; testing {lowest}", file=sys.stderr)
        name = requirement.name.lower()
        pins[name] = max(pins.get(name, lowest), lowest)  # the same package in several lists: the highest floor
    for name, version in sorted(pins.items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
