"""The dashboard's and /docs' browser files, bundled in the package: no npm and no CDN at run time.

    ui/       the dashboard (plain ES modules, no build step), served at /ui
    docs/     the Swagger UI page and its start-up script, served at /docs
    vendor/   third-party files fetched from npm by scripts/vendor_web.py (pinned versions and
              checksums in vendor/MANIFEST.json)

`assets()` maps each URL path under /ui/ to its file; api/routes/ui.py serves exactly these.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent

# What a browser may fetch, by suffix, and the type it is served as.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


def assets() -> dict[str, Path]:
    """URL path under /ui/ -> file: the dashboard's own files at the top, vendor/ and docs/ below."""
    out: dict[str, Path] = {}
    for base, prefix in ((ROOT / "ui", ""), (ROOT / "docs", "docs/"), (ROOT / "vendor", "vendor/")):
        for file in sorted(base.rglob("*")):
            if file.is_file() and file.suffix in MEDIA_TYPES:
                out[prefix + file.relative_to(base).as_posix()] = file
    return out
