"""What pyproject.toml ships: every package-data pattern names files that exist."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_data_pattern_matches_a_file():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["stratus"]
    package = ROOT / "src" / "stratus"
    empty = [p for p in patterns if not any(f.is_file() for f in package.glob(p))]
    assert not empty, f"package-data patterns that match nothing: {empty}"
