"""GET /ui: the web dashboard; GET /docs: Swagger UI. Both are files bundled in the package
(stratus/web), so they work on a host with no internet: nothing comes from a CDN.

The pages need no credential to load; everything they show comes from the API, called by the
browser with the API key the user signs in with (api/routes/admin*.py, /metrics, /v1/*), so
what a user sees is what the API lets their role see. Every page is served under the strict
CSP of api/security_headers.py: scripts and styles from this origin only, no inline script,
no eval.

Only the files listed by `stratus.web.assets()` at start-up are served: a path is a key in that
table, never joined onto a directory, so no request can reach another file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, Response

from stratus import web
from stratus.request.errors import APIError

router = APIRouter(include_in_schema=False)


def _etag(file: Path) -> str:
    """From the content: the same on every gateway of a release, new when the file changes."""
    return '"' + hashlib.sha256(file.read_bytes()).hexdigest()[:32] + '"'


ASSETS = {path: (file, _etag(file)) for path, file in web.assets().items()}
# Revalidated on every load: 304 while the ETag matches (Swagger UI's bundle is 1.8 MB), the new
# file at once after an upgrade.
CACHE = "no-cache"


def _file(request: Request, path: str) -> Response:
    found = ASSETS.get(path)
    if found is None:
        raise APIError(404, f"No dashboard file '{path[:80]}'.", code="not_found")
    file, etag = found
    headers = {"Cache-Control": CACHE, "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return FileResponse(file, media_type=web.MEDIA_TYPES[file.suffix], headers=headers)


@router.get("/ui")
async def dashboard(request: Request) -> Response:
    return _file(request, "index.html")


@router.get("/ui/{path:path}")
async def dashboard_file(request: Request, path: str) -> Response:
    return _file(request, path or "index.html")


@router.get("/docs")
async def docs(request: Request) -> Response:
    return _file(request, "docs/index.html")
