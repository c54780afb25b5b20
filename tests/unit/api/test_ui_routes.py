"""/ui and /docs: the bundled files only, under the strict CSP, nothing from another origin."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from stratus.api import create_app
from stratus.config import Settings
from stratus.security.stage import OPEN_ACCESS


@pytest.fixture(scope="module")
def get(tmp_path_factory):
    app = create_app(
        Settings(auth=False, local_models=False, data_dir=str(tmp_path_factory.mktemp("ui"))),
        identity=OPEN_ACCESS,
    )

    def fetch(path: str, **headers: str) -> httpx.Response:
        async def run() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                return await client.get(path, headers=headers)

        return asyncio.run(run())

    return fetch


def test_the_dashboard_page_and_its_modules_are_served_under_the_strict_csp(get):
    page = get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe" not in csp and "connect-src 'self'" in csp
    assert page.headers["cache-control"] == "no-cache"
    assert '<script type="module" src="/ui/app.js">' in page.text
    module = get("/ui/app.js")
    assert module.status_code == 200 and module.headers["content-type"].startswith("text/javascript")
    assert get("/ui/vendor/uplot/uPlot.esm.js").status_code == 200


def test_docs_load_swagger_ui_from_this_gateway(get):
    page = get("/docs")
    assert page.status_code == 200
    assert "unsafe" not in page.headers["content-security-policy"]
    assert 'src="/ui/vendor/swagger-ui-dist/swagger-ui-bundle.js"' in page.text
    assert "cdn" not in page.text.lower() and "http" not in page.text
    assert get("/ui/vendor/swagger-ui-dist/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert get("/openapi.json").status_code == 200


def test_an_unchanged_file_is_revalidated_without_its_body(get):
    first = get("/ui/vendor/swagger-ui-dist/swagger-ui-bundle.js")
    etag = first.headers["etag"]
    assert len(first.content) > 1_000_000 and first.headers["cache-control"] == "no-cache"
    again = get("/ui/vendor/swagger-ui-dist/swagger-ui-bundle.js", **{"if-none-match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    other = get("/ui/app.js", **{"if-none-match": etag})  # another file's tag: the whole file
    assert other.status_code == 200 and other.headers["etag"] != etag


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope.js",
        "/ui/vendor/MANIFEST.json",  # not a file a page loads
        "/ui/vendor/uplot/LICENSE",
        "/ui/%2e%2e/%2e%2e/config.py",
        "/ui/..%2f..%2fconfig.py",
        "/ui//etc/passwd",
        "/docs/oauth2-redirect",
    ],
)
def test_nothing_else_is_served(get, path):
    r = get(path)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
