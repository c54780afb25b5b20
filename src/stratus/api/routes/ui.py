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

from fastapi import APIRouter
from starlette.responses import FileResponse, Response

from stratus import web
from stratus.request.errors import APIError

router = APIRouter(include_in_schema=False)

ASSETS = web.assets()
# Revalidated on every load (ETag), so a gateway upgrade is seen at once; the files are small.
HEADERS = {"Cache-Control": "no-cache"}


def _file(path: str) -> Response:
    file = ASSETS.get(path)
    if file is None:
        raise APIError(404, f"No dashboard file '{path[:80]}'.", code="not_found")
    return FileResponse(file, media_type=web.MEDIA_TYPES[file.suffix], headers=HEADERS)


@router.get("/ui")
async def dashboard() -> Response:
    return _file("index.html")


@router.get("/ui/{path:path}")
async def dashboard_file(path: str) -> Response:
    return _file(path or "index.html")


@router.get("/docs")
async def docs() -> Response:
    return _file("docs/index.html")
