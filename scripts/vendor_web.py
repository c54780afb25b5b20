"""Fetches the dashboard's and /docs' third-party browser files from npm into src/stratus/web/vendor/.

    python scripts/vendor_web.py            # after changing a pin below; commit what it writes
    python scripts/vendor_web.py --check    # the committed files are the pinned packages' files

Each package is pinned by version and by the registry's sha512 integrity of its tarball (npm's
`dist.integrity`): `npm pack` fetches the tarball, this script checks the digest before it
extracts anything, then copies only the files the gateway serves, with the package's licence.
`vendor/MANIFEST.json` records every file's sha256; tests/unit/web/test_assets.py checks the
committed files against it, so a fresh clone and the wheel need neither npm nor a CDN.

Why these: uPlot (MIT, ~50 kB, maintained, an ES module, no dependencies, draws on a canvas so
it needs no inline styles or eval under the dashboard's CSP) for the charts; swagger-ui-dist
(Apache-2.0), the Swagger UI that FastAPI's /docs loads from a CDN by default.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).resolve().parent.parent / "src" / "stratus" / "web" / "vendor"

# name: (version, sha512 integrity of the npm tarball, {file in the package: file under vendor/name/})
PACKAGES: dict[str, tuple[str, str, dict[str, str]]] = {
    "uplot": (
        "1.6.32",
        "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
        {
            "dist/uPlot.esm.js": "uPlot.esm.js",
            "dist/uPlot.min.css": "uPlot.min.css",
            "LICENSE": "LICENSE",
        },
    ),
    "swagger-ui-dist": (
        "5.36.0",
        "sha512-Lt6/Kb0gXmLdiabLhvso4VdJP9V7qJWB0zh0gzeXUV3+CMOTzMmvpJRSXN7EAjfwixwmoi9ezDbLHiexC7lA9A==",
        {
            "swagger-ui-bundle.js": "swagger-ui-bundle.js",
            "swagger-ui.css": "swagger-ui.css",
            "LICENSE": "LICENSE",
            "NOTICE": "NOTICE",
        },
    ),
}


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(name: str, version: str, expected: str, workdir: Path) -> Path:
    """The package's tarball from the registry (npm's own client), its digest checked."""
    out = subprocess.run(
        ["npm", "pack", f"{name}@{version}", "--json", "--pack-destination", str(workdir)],
        check=True,
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    tarball = workdir / json.loads(out.stdout)[0]["filename"]
    got = integrity(tarball.read_bytes())
    if got != expected:
        raise SystemExit(f"{name}@{version}: tarball integrity {got} is not the pinned {expected}")
    return tarball


def extract(tarball: Path, files: dict[str, str], dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        for source, target in files.items():
            member = tar.getmember(f"package/{source}")  # npm tarballs hold one folder, package/
            if not member.isfile():
                raise SystemExit(f"{tarball.name}: {source} is not a regular file")
            handle = tar.extractfile(member)
            assert handle is not None
            (dest / target).write_bytes(handle.read())


def manifest() -> dict:
    out: dict = {}
    for name, (version, digest, files) in PACKAGES.items():
        out[name] = {
            "version": version,
            "integrity": digest,
            "files": {target: sha256(VENDOR / name / target) for target in files.values()},
        }
    return out


def check() -> list[str]:
    """What differs between the committed files and the manifest (and the pins here)."""
    path = VENDOR / "MANIFEST.json"
    if not path.is_file():
        return [f"{path} is missing: run python scripts/vendor_web.py"]
    recorded = json.loads(path.read_text())
    problems = []
    for name, (version, digest, files) in PACKAGES.items():
        entry = recorded.get(name)
        if entry is None or entry["version"] != version or entry["integrity"] != digest:
            problems.append(f"{name}: MANIFEST.json is not for {name}@{version}: run the script")
            continue
        for target in files.values():
            file = VENDOR / name / target
            if not file.is_file():
                problems.append(f"{file} is missing")
            elif sha256(file) != entry["files"].get(target):
                problems.append(f"{file} differs from what {name}@{version} holds")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check the committed files, fetch nothing")
    args = parser.parse_args()
    if args.check:
        problems = check()
        print("\n".join(problems) or "vendored files match their pins")
        return 1 if problems else 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (version, digest, files) in PACKAGES.items():
            tarball = fetch(name, version, digest, Path(tmp))
            extract(tarball, files, VENDOR / name)
            print(f"{name}@{version}: {len(files)} files")
    (VENDOR / "MANIFEST.json").write_text(json.dumps(manifest(), indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
