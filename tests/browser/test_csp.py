"""The Content-Security-Policy in Chromium: the pages work under it, it refuses inline script and
style, and inline SVG drawn with presentation attributes (fill=, stroke=) still renders."""

from __future__ import annotations

import pytest
import requests
from playwright.sync_api import BrowserContext, Page, Route

from tests.browser.conftest import Site, watch_csp

pytestmark = pytest.mark.browser

#: Inline SVG as a chart draws it: presentation attributes only.
SVG_PAGE = """<!doctype html><html><head><title>svg</title></head><body>
<svg id="chart" width="120" height="60" viewBox="0 0 120 60" role="img" aria-label="bars">
  <rect id="bar" x="10" y="10" width="40" height="40" fill="#1f5fa8" stroke="#a8322d" stroke-width="2"/>
  <text x="60" y="35" fill="#1d2433" font-size="12" text-anchor="start">42%</text>
  <polyline points="0,60 60,0 120,60" fill="none" stroke="#1e7a46"/>
</svg>
<img id="dot" alt="" src="data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='4' height='4'/%3E">
</body></html>"""

#: What the policy must refuse: an inline script, a <style> element and a style= attribute.
INLINE_PAGE = """<!doctype html><html><head><title>untouched</title>
<style>#styled { color: rgb(255, 0, 0); }</style></head><body>
<p id="styled">style element</p><p id="attr" style="color: rgb(0, 128, 0)">style attribute</p>
<script>document.title = "inline script ran";</script>
</body></html>"""


def serve_with_app_headers(page: Page, site: Site, path: str, body: str) -> None:
    """Answer `path` on the app's origin with `body` and the headers the app really sends for its form.

    The headers are fetched first, outside the browser: the server has one sync worker, which a
    connection Chromium opens ahead of an intercepted navigation can keep busy.
    """
    real = requests.get(site.url, timeout=10)
    assert "Content-Security-Policy" in real.headers
    # The body is replaced, so the real answer's length, encoding and cookies do not apply.
    dropped = ("content-length", "transfer-encoding", "content-encoding", "set-cookie", "connection")
    headers = {k: v for k, v in real.headers.items() if k.lower() not in dropped}

    def handle(route: Route) -> None:
        route.fulfill(status=200, headers=headers, body=body, content_type="text/html; charset=utf-8")

    page.route(f"{site.server.base_url}{path}", handle)


def test_pages_load_without_csp_violations(site: Site, page: Page) -> None:
    """The app's own pages under its own policy: styled by style.css, no violation (the page fixture checks)."""
    for path in ("/", "/batch", "/no-such-page"):
        response = page.goto(f"{site.server.base_url}{path}")
        assert response is not None
        csp = response.headers["content-security-policy"]
        assert "unsafe-inline" not in csp
        # style.css applies: the form's header bar is white, not the browser's transparent default.
        background = page.eval_on_selector("header.site", "el => getComputedStyle(el).backgroundColor")
        assert background == "rgb(255, 255, 255)", (path, background)


def test_inline_svg_with_presentation_attributes_renders(site: Site, context: BrowserContext) -> None:
    page = context.new_page()
    violations = watch_csp(page)
    serve_with_app_headers(page, site, "/csp-svg-probe", SVG_PAGE)
    response = page.goto(f"{site.server.base_url}/csp-svg-probe")
    assert response is not None and "content-security-policy" in response.headers
    fill = page.eval_on_selector("#bar", "el => getComputedStyle(el).fill")
    stroke = page.eval_on_selector("#bar", "el => getComputedStyle(el).stroke")
    assert (fill, stroke) == ("rgb(31, 95, 168)", "rgb(168, 50, 45)")
    assert page.eval_on_selector("#dot", "el => el.complete && el.naturalWidth") == 4  # img-src data:
    page.close()
    assert violations == []


def test_policy_refuses_inline_script_and_style(site: Site, context: BrowserContext) -> None:
    """The control: what the page fixture watches for is really reported, so its silence means something."""
    page = context.new_page()
    violations = watch_csp(page)
    serve_with_app_headers(page, site, "/csp-inline-probe", INLINE_PAGE)
    response = page.goto(f"{site.server.base_url}/csp-inline-probe")
    assert response is not None and "content-security-policy" in response.headers
    assert page.title() == "untouched", "an inline script ran"
    colors = [page.eval_on_selector(sel, "el => getComputedStyle(el).color") for sel in ("#styled", "#attr")]
    assert "rgb(255, 0, 0)" not in colors and "rgb(0, 128, 0)" not in colors, colors
    page.wait_for_timeout(200)  # console messages arrive asynchronously
    page.close()
    assert any("script" in v for v in violations), violations
    assert any("style" in v for v in violations), violations
    assert len(violations) >= 3, violations
