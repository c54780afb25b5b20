"""The dashboard's and /docs' files: the vendored ones are the pinned npm packages' files, every
file a page loads is bundled, and no page needs an inline script, an inline style or a CDN."""

from __future__ import annotations

import importlib.util
import re
import shutil
import tomllib
from pathlib import Path

from stratus import web

ROOT = Path(__file__).resolve().parents[3]
PAGES = [web.ROOT / "ui" / "index.html", web.ROOT / "docs" / "index.html"]
OWN = [f for f in web.assets().values() if "vendor" not in f.parts]


def _vendor_script():
    spec = importlib.util.spec_from_file_location("vendor_web", ROOT / "scripts" / "vendor_web.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vendored_files_are_the_pinned_packages_files():
    assert _vendor_script().check() == []


def test_a_changed_vendored_file_is_noticed(tmp_path, monkeypatch):
    script = _vendor_script()
    copy = tmp_path / "vendor"
    shutil.copytree(script.VENDOR, copy)
    (copy / "uplot" / "uPlot.esm.js").write_text("export default 1;\n")
    monkeypatch.setattr(script, "VENDOR", copy)
    assert any("uPlot.esm.js differs" in p for p in script.check())


def _urls(text: str) -> list[str]:
    found = re.findall(r'(?:src|href)="([^"]+)"', text)
    found += re.findall(r'(?:import|from)\s*\(?\s*"([^"]+)"', text)
    return found


def test_every_file_a_page_loads_is_bundled():
    served = web.assets()
    missing = []
    for file in [*PAGES, *(f for f in OWN if f.suffix == ".js")]:
        for url in _urls(file.read_text()):
            if url.startswith("#") or "${" in url:
                continue
            if url.startswith("/ui/"):
                key = url.removeprefix("/ui/")
            else:  # relative to the module's own folder, under /ui/
                key = (file.parent / url).resolve().relative_to(web.ROOT / "ui").as_posix()
            if key not in served:
                missing.append(f"{file.name}: {url}")
    assert not missing, missing
    pages = {p.stem for p in (web.ROOT / "ui" / "pages").glob("*.js")}
    listed = set(re.findall(r'id: "(\w+)"', (web.ROOT / "ui" / "app.js").read_text()))
    assert listed == pages  # app.js imports ./pages/${id}.js for each page it lists


def test_no_page_needs_inline_script_inline_style_or_another_origin():
    for file in OWN:
        text = file.read_text()
        if file.suffix == ".html":
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), f"{file.name}: an inline script"
            assert not re.search(r"<style|\sstyle=|\son[a-z]+=", text), (
                f"{file.name}: inline style or handler"
            )
        assert not re.search(r"https?://", text), f"{file.name}: a URL to another origin"
        if file.suffix == ".js":
            assert not re.search(r"\beval\(|new Function\(|innerHTML|\.style\.", text), file.name


def test_every_bundled_file_ships_in_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["stratus"]
    package = ROOT / "src" / "stratus"
    shipped = {f for p in patterns for f in package.glob(p) if f.is_file()}
    unshipped = [str(f) for f in web.assets().values() if f not in shipped]
    assert not unshipped, unshipped
