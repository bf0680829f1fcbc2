"""The /ui dashboard's files over HTTP (no browser): the page, its assets and their content types, security
headers, and that nothing on the page points outside the server (the dashboard must work offline)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib.resources import files
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from layercut.api.main import create_app
from layercut.contracts.configs import ARCHITECTURE_NAMES
from layercut.settings import Settings

EXTERNAL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|\burl\(\s*['"]?(?:https?:|//)""", re.I)


class _Refs(HTMLParser):
    """Every src/href of the page, and the inline scripts/styles (there should be none)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.inline: list[str] = []
        self._tag: str | None = None

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        values = dict(attrs)
        for name in ("src", "href", "action", "poster", "data"):
            if values.get(name):
                self.refs.append((tag, values[name]))
        self._tag = tag

    def handle_data(self, data):  # noqa: ANN001
        if self._tag in ("script", "style") and data.strip():
            self.inline.append(data)

    def handle_endtag(self, tag):  # noqa: ANN001
        self._tag = None


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), run_embedded_jobs=False)) as c:
        yield c


def test_ui_serves_the_page_and_its_assets_with_their_content_types(client):
    page = client.get("/ui")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>layercut dashboard</title>" in page.text
    assert page.headers["x-content-type-options"] == "nosniff"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src 'self';" in csp, "no inline scripts may run on the dashboard"

    expected = {
        "ui/app.js": "text/javascript; charset=utf-8",
        "ui/app.css": "text/css; charset=utf-8",
        "ui/favicon.svg": "image/svg+xml",
    }
    parser = _Refs()
    parser.feed(page.text)
    referenced = {ref for _, ref in parser.refs}
    assert referenced >= set(expected), referenced
    assert not parser.inline, "no inline scripts or styles: everything comes from the served files"
    for ref, content_type in expected.items():
        asset = client.get(urljoin("http://testserver/ui", ref))
        assert asset.status_code == 200, ref
        assert asset.headers["content-type"] == content_type, ref
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert asset.content == files("layercut.api.ui_static").joinpath(ref.rsplit("/", 1)[-1]).read_bytes()
    assert '<script type="module" src="ui/app.js">' in page.text


def test_the_page_references_no_external_url(client):
    page = client.get("/ui").text
    parser = _Refs()
    parser.feed(page)
    for tag, ref in parser.refs:
        parts = urlsplit(ref)
        assert not parts.scheme and not parts.netloc, f"<{tag}> points outside the server: {ref}"
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    for name in ("app.js", "app.css"):
        text = client.get(f"/ui/{name}").text
        assert not EXTERNAL.search(text), f"{name}: {EXTERNAL.search(text)}"
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text
    svg = client.get("/ui/favicon.svg").text
    assert not EXTERNAL.search(svg.replace('xmlns="http://www.w3.org/2000/svg"', ""))


def test_ui_config_lists_the_pipeline_form_choices(client):
    config = client.get("/ui/config.json")
    assert config.status_code == 200 and config.headers["content-type"] == "application/json"
    body = config.json()
    assert body["architectures"] == list(ARCHITECTURE_NAMES) and body["default_architecture"] in ARCHITECTURE_NAMES
    assert "textures" in body["builtins"]
    assert body["image_size"] == {"default": 64, "min": 32, "max": 1024}
    assert body["epochs"]["min"] == 1
    assert body["max_drop"] == {"default": 1.0, "min": 0, "max": 100}  # the budget field: SelectConfig.max_drop


def test_ui_needs_no_key_is_cacheable_and_refuses_other_paths(client):
    page = client.get("/ui")
    assert page.headers["cache-control"] == "no-cache" and page.headers["etag"]
    again = client.get("/ui", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304 and not again.content
    slash = client.get("/ui/", follow_redirects=False)
    assert (
        slash.status_code == 308
        and urljoin("http://testserver/ui/", slash.headers["location"]) == "http://testserver/ui"
    )
    for path in ("/ui/nope.js", "/ui/__init__.py", "/ui/..%2f..%2fpyproject.toml", "/ui/index.html/x"):
        assert client.get(path).status_code == 404, path
    assert not any(p.startswith("/ui") for p in client.get("/openapi.json").json()["paths"])
