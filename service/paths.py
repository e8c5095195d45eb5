"""Files that live beside the package in the repository (protos/, deploy/): found from a
source checkout, or from the working directory when the package is installed (the image)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def repo_dir(name: str) -> Path:
    for base in (ROOT, Path.cwd()):
        if (base / name).is_dir():
            return base / name
    raise FileNotFoundError(f"{name}/ not found beside the package or in the working directory")
