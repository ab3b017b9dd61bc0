"""``/docs`` in a real browser: headless Chromium renders the page served by gunicorn.

The page's Content-Security-Policy forbids loading anything from another origin, so
a page that renders its operations here rendered from the service's own assets
alone: it works with no internet.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it when missing).
Without it the test is skipped locally and fails in CI.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from tests.servers import gunicorn_server

pytestmark = pytest.mark.slow

CHROMIUM_TIMEOUT_S = 90
# Virtual time lets scripts, the fetch of /openapi.json and rendering run to completion
# without a wall-clock wait: Chromium dumps the DOM once the budget is used or idle.
VIRTUAL_TIME_BUDGET_MS = 20_000
_METHODS = ("get", "put", "post", "delete", "patch")


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return path


def _rendered_dom(chromium: str, url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, as headless Chromium serialises it."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",  # the tests run as root
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        # The machine has no network: no background requests to Google's hosts.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        "--dump-dom",
        url,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=CHROMIUM_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, stderr[-4000:]
    return stdout


def test_chromium_renders_every_operation_of_the_document(tmp_path: Path) -> None:
    chromium = _chromium()
    with gunicorn_server() as base_url:
        document = requests.get(f"{base_url}/openapi.json", timeout=10).json()
        source = requests.get(f"{base_url}/docs", timeout=10).text
        dom = _rendered_dom(chromium, f"{base_url}/docs", tmp_path / "profile")

    # The served HTML is an empty shell: every operation below was rendered by Swagger UI.
    assert "opblock" not in source
    assert 'class="version">OAS 3.1<' in dom
    rendered_paths = {
        html.unescape(path) for path in re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom)
    }
    operations = [
        (path, method, item[method])
        for path, item in document["paths"].items()
        for method in _METHODS
        if method in item
    ]
    assert operations
    assert dom.count('class="opblock opblock-') == len(operations)
    for path, method, operation in operations:
        element_id = f"operations-{operation['tags'][0]}-{operation['operationId']}"
        block = f'class="opblock opblock-{method}" id="{element_id}"'
        assert block in dom, (method, path)
        assert path in rendered_paths, path
        summary = html.escape(operation["summary"], quote=False)  # a text node: quotes stay as they are
        assert f'class="opblock-summary-description">{summary}<' in dom, path
