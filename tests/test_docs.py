"""The user documentation against the code.

``docs/api.md`` names every operation of the OpenAPI document (``GET /account/coins``,
``POST /admin/accounts/{username}/deposit``, ...) and no route the document lacks, and
every ``error`` code the service answers with; the README's configuration table names
every environment variable ``app/config.py`` and ``app/serving.py`` read, and nothing
else.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from app.api.docs import ASSET_NAMES
from app.openapi import build_document
from app.openapi.schemas import ERROR_CODES

ROOT = Path(__file__).resolve().parent.parent
API_MD = ROOT / "docs" / "api.md"
README = ROOT / "README.md"
_METHODS = ("get", "put", "post", "delete", "patch")
#: A method, one space and a path, anywhere in the text ("`GET /account/coins?username=U`",
#: "### `POST /account/holds/{hold_id}/capture`"); the path ends at a query string or a space.
_ROUTE = re.compile(r"\b(GET|PUT|POST|DELETE|PATCH) (/[A-Za-z0-9_.{}/-]*)")
#: A row of a Markdown table whose first cell is a variable name in backticks.
_TABLE_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \|", re.MULTILINE)


def _documented_operations() -> set[tuple[str, str]]:
    document = build_document(ASSET_NAMES)
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in _METHODS
        if method in item
    }


def routes_named_in(text: str) -> set[tuple[str, str]]:
    return {(method, path.rstrip(".")) for method, path in _ROUTE.findall(text)}


def variables_read_by(source: str) -> set[str]:
    """The names ``source`` reads with ``environ.get("NAME", ...)`` or ``environ["NAME"]``, the
    name given literally or through a public module-level constant (``NAME_VARIABLE = "NAME"``;
    a private one, ``_NAME``, is the service talking to itself, e.g. master to workers)."""
    names: set[str] = set()
    tree = ast.parse(source)
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name) and not target.id.startswith("_")
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            target, arguments = node.func.value, node.args
        elif isinstance(node, ast.Subscript):
            target, arguments = node.value, [node.slice]
        else:
            continue
        environ = (isinstance(target, ast.Name) and target.id == "environ") or (
            isinstance(target, ast.Attribute) and target.attr == "environ"
        )
        name = arguments[0] if arguments else None
        if environ and isinstance(name, ast.Constant) and isinstance(name.value, str):
            names.add(name.value)
        elif environ and isinstance(name, ast.Name) and name.id in constants:
            names.add(constants[name.id])
    return names


def configuration_table(readme: str) -> set[str]:
    """The variables of the README's configuration table (the section under "## Configuration")."""
    section = re.search(r"^## Configuration\n(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    assert section is not None, "README.md has no '## Configuration' section"
    return set(_TABLE_ROW.findall(section[1]))


def test_api_md_names_every_operation_of_the_document() -> None:
    missing = _documented_operations() - routes_named_in(API_MD.read_text(encoding="utf-8"))
    assert not missing, f"docs/api.md does not document: {sorted(missing)}"


def test_api_md_names_no_route_the_document_lacks() -> None:
    unknown = routes_named_in(API_MD.read_text(encoding="utf-8")) - _documented_operations()
    assert not unknown, f"docs/api.md names routes the service does not serve: {sorted(unknown)}"


@pytest.mark.parametrize("code", list(ERROR_CODES))
def test_api_md_names_every_error_code(code: str) -> None:
    assert f"`{code}`" in API_MD.read_text(encoding="utf-8")


def test_the_readme_configuration_table_is_the_environment_the_service_reads() -> None:
    read = variables_read_by((ROOT / "app" / "config.py").read_text(encoding="utf-8"))
    read |= variables_read_by((ROOT / "app" / "serving.py").read_text(encoding="utf-8"))
    assert {"LEDGER_STORE", "LEDGER_SELF_DEPOSIT", "PORT", "GUNICORN_THREADS"} <= read  # the reader works
    table = configuration_table(README.read_text(encoding="utf-8"))
    assert read - table == set(), "read by the service, missing from the README's table"
    assert table - read == set(), "in the README's table, read by nothing"


def test_the_checks_see_what_they_are_meant_to_see() -> None:
    """The extractors on known text: a check that finds nothing cannot fail."""
    text = "### `POST /admin/accounts/{username}/deposit?amount=N`\nthen GET /livez. And `POST -H`."
    assert routes_named_in(text) == {("POST", "/admin/accounts/{username}/deposit"), ("GET", "/livez")}
    source = 'import os\nos.environ.get("A_B", "1")\nenviron["C"]\nother.get("D")\n'
    assert variables_read_by(source) == {"A_B", "C"}
    readme = "## Configuration\n\n| variable |\n|---|\n| `X_Y` | z |\n\n## Next\n\n| `NOT_THIS` | z |\n"
    assert configuration_table(readme) == {"X_Y"}
