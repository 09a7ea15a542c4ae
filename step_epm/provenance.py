"""Code version and config text embedded in every output file."""

import hashlib
import subprocess
from pathlib import Path

from . import __version__


def code_version() -> str:
    """The package version, plus the git commit (and '+dirty') when run from a checkout."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"


def file_sha256(path) -> str:
    """sha256 (hex) of a file's bytes: identifies an input in an output's provenance."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def short_hash(obj, length: int = 10) -> str:
    """First ``length`` hex digits of the sha256 of ``obj`` as canonical JSON
    (sorted keys, repr of anything JSON lacks): names run directories after
    the config fields that determine their data."""
    import json

    text = json.dumps(obj, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
