"""The OpenAPI document: valid 3.1, in step with the app's routes and errors, served without a token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate
from werkzeug.test import TestResponse

from app.api.docs import ASSET_NAMES, swagger_ui_version
from app.ledger import errors as ledger_errors
from app.openapi import build_document
from app.openapi.schemas import ERROR_CODES
from tests.stores import ADMIN_TOKEN

ROOT = Path(__file__).resolve().parent.parent
AARON = {"Authorization": "1"}
BRYAN = {"Authorization": "2"}
ADMIN = {"Authorization": ADMIN_TOKEN}
_METHODS = ("get", "put", "post", "delete", "patch")
_CONTRACT_ERROR_CODES = [
    "invalid_amount",
    "invalid_username",
    "invalid_json",
    "missing_parameter",
    "conflicting_parameters",
    "same_account",
    "invalid_cursor",
    "invalid_limit",
    "invalid_batch",
    "invalid_timeout",
    "unauthorized",
    "forbidden",
    "account_not_found",
    "hold_not_found",
    "not_found",
    "method_not_allowed",
    "idempotency_key_reused",
    "account_exists",
    "hold_not_pending",
    "version_conflict",
    "payload_too_large",
    "insufficient_funds",
    "balance_overflow",
    "timeout",
    "internal_error",
]


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = response.get_json()
    return body


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate(document)  # raises on the first violation of the OpenAPI 3.1 schema


def test_the_served_document_is_the_built_one(document: dict[str, Any]) -> None:
    assert document == build_document(ASSET_NAMES)


def _documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in _METHODS
        if method in item
    }


def _routed_operations(app: Flask) -> set[tuple[str, str]]:
    """Every route and method of Flask's URL map, with ``<x>`` spelled ``{x}`` as in OpenAPI."""
    routed = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        # HEAD is implied by GET; OPTIONS is answered 405 like any method a route lacks.
        routed.update((path, method) for method in rule.methods or () if method not in ("HEAD", "OPTIONS"))
    return routed


def test_every_route_and_method_is_documented_and_nothing_else(app: Flask, document: dict[str, Any]) -> None:
    assert _routed_operations(app) == _documented_operations(document)


def test_path_parameters_are_the_routes_arguments(app: Flask, document: dict[str, Any]) -> None:
    parameters = document["components"]["parameters"]
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in _METHODS:
            operation = document["paths"][path].get(method)
            if operation is None:
                continue
            declared = set()
            for parameter in operation.get("parameters", []):
                resolved = (
                    parameters[parameter["$ref"].rsplit("/", 1)[1]] if "$ref" in parameter else parameter
                )
                if resolved["in"] == "path":
                    declared.add(resolved["name"])
            assert declared == set(rule.arguments), (path, method)


def test_operations_have_unique_ids_summaries_and_security(document: dict[str, Any]) -> None:
    operations = [
        item[method] for item in document["paths"].values() for method in _METHODS if method in item
    ]
    ids = [operation["operationId"] for operation in operations]
    assert len(ids) == len(set(ids))
    for operation in operations:
        assert operation["summary"]
        assert operation["description"]
        assert "security" in operation
        if operation["security"]:
            assert "401" in operation["responses"], operation["operationId"]
        assert "405" in operation["responses"], operation["operationId"]


def test_the_contract_headers_are_documented(document: dict[str, Any]) -> None:
    components = document["components"]
    for name in ("Idempotency-Key", "If-Match", "X-Timeout-Ms"):
        assert components["parameters"][name]["in"] == "header"
    for name in ("ETag", "Retry-After", "Idempotent-Replayed"):
        assert name in components["headers"]
    for scheme in components["securitySchemes"].values():
        assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    deposit = document["paths"]["/account/coins/add"]["post"]
    assert "ETag" in deposit["responses"]["200"]["headers"]
    assert "Retry-After" in deposit["responses"]["503"]["headers"]
    assert "Idempotent-Replayed" in deposit["responses"]["409"]["headers"]


def test_both_parameter_styles_are_documented(document: dict[str, Any]) -> None:
    transfer = document["paths"]["/account/coins/transfer"]["post"]
    query = {parameter["$ref"].rsplit("/", 1)[1] for parameter in transfer["parameters"]}
    assert {"username", "from", "to", "amount"} <= query
    body = transfer["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    properties = document["components"]["schemas"][body]["properties"]
    assert {"username", "from", "to", "amount"} <= set(properties)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 412, 413, 422, 500, 503])
def test_each_error_status_of_the_contract_is_documented(document: dict[str, Any], status: int) -> None:
    documented = [
        item[method]["responses"][str(status)]
        for item in document["paths"].values()
        for method in _METHODS
        if method in item and str(status) in item[method]["responses"]
    ]
    assert documented


def _ledger_error_classes() -> Iterator[type[ledger_errors.LedgerError]]:
    pending = [ledger_errors.LedgerError]
    while pending:
        cls = pending.pop()
        yield cls
        pending.extend(cls.__subclasses__())


def test_the_error_schema_lists_every_code_the_service_answers_with() -> None:
    codes = {cls.code for cls in _ledger_error_classes()}  # "bad_request" is also gunicorn's
    source = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "app").rglob("*.py"))
    codes.update(re.findall(r'InvalidInput\(\s*"([a-z_]+)"', source))
    codes.update(re.findall(r'\b[45]\d\d: "([a-z_]+)"', source))  # app.errors' and app.serving's tables
    assert {"invalid_idempotency_key", "method_not_allowed", "headers_too_large"} <= codes
    assert codes - set(ERROR_CODES) == set()
    assert set(_CONTRACT_ERROR_CODES) - set(ERROR_CODES) == set()


def _examples(node: object, schema: object = None) -> Iterator[tuple[object, object]]:
    """Every (example, schema) pair of the document: schema ``examples``, media and parameter ``example``."""
    if isinstance(node, dict):
        if "example" in node and "schema" in node:
            yield node["example"], node["schema"]
        if isinstance(node.get("examples"), list):
            for example in node["examples"]:
                yield example, {key: value for key, value in node.items() if key != "examples"}
        for value in node.values():
            yield from _examples(value)
    elif isinstance(node, list):
        for value in node:
            yield from _examples(value)


def test_every_example_matches_its_schema(document: dict[str, Any]) -> None:
    pairs = list(_examples(document["paths"])) + list(_examples(document["components"]))
    assert len(pairs) >= 20
    for example, schema in pairs:
        assert isinstance(schema, dict)
        # The document's components at the root, so that "#/components/..." references resolve.
        rooted = {**schema, "components": document["components"]}
        Draft202012Validator(rooted, format_checker=FormatChecker()).validate(example)


def _check_answer(
    document: dict[str, Any], response: TestResponse, path: str, method: str, status: str
) -> dict[str, Any]:
    """``response`` has ``status`` and validates against what ``method path`` documents for it."""
    assert str(response.status_code) == status, response.get_json()
    documented = document["paths"][path][method]["responses"][status]
    schema = documented["content"]["application/json"]["schema"]
    body: dict[str, Any] = response.get_json()
    Draft202012Validator({**schema, "components": document["components"]}).validate(body)
    for name, header in documented.get("headers", {}).items():
        resolved = document["components"]["headers"][header["$ref"].rsplit("/", 1)[1]]
        assert name in response.headers or not resolved["required"], (path, name)
    return body


def test_real_answers_match_the_documented_schemas(client: FlaskClient, document: dict[str, Any]) -> None:
    """A real answer of each main shape validates against the schema its operation documents."""
    calls = [
        ("get", "/account/coins?username=aaron", "/account/coins", "200"),
        (
            "post",
            "/account/coins/transfer?username=aaron&to=bryan&amount=5",
            "/account/coins/transfer",
            "200",
        ),
        ("post", "/account/coins/withdraw?username=aaron&amount=99999999", "/account/coins/withdraw", "422"),
        ("post", "/account/holds?username=aaron&to=bryan&amount=5", "/account/holds", "201"),
        ("get", "/account/transactions?username=aaron&limit=2", "/account/transactions", "200"),
    ]
    for method, url, path, status in calls:
        response = getattr(client, method)(url, headers=AARON)
        _check_answer(document, response, path, method, status)


def _tag(record: dict[str, Any]) -> tuple[object, object]:
    return record["reference"], record["metadata"]


def test_tagged_answers_match_the_documented_schemas(client: FlaskClient, document: dict[str, Any]) -> None:
    """A reference and metadata, in the query string and in a body, come back as documented, on the
    operation's record, a hold and the hold's capture."""
    tag = "reference=order-42&metadata.campaign=spring"
    transfer = client.post(f"/account/coins/transfer?username=aaron&to=bryan&amount=5&{tag}", headers=AARON)
    body = _check_answer(document, transfer, "/account/coins/transfer", "post", "200")
    assert _tag(body["transaction"]) == ("order-42", {"campaign": "spring"})
    batch = client.post(
        "/account/coins/batch?username=aaron",
        json={"operations": [{"type": "add", "amount": 5, "reference": "payout-7", "metadata": {"line": 3}}]},
        headers=AARON,
    )
    item = _check_answer(document, batch, "/account/coins/batch", "post", "200")["results"][0]
    assert _tag(item["transaction"]) == ("payout-7", {"line": 3})
    hold = client.post(
        "/account/holds?username=aaron",
        json={"to": "bryan", "amount": 5, "reference": "booking-9", "metadata": {"room": 12}},
        headers=AARON,
    )
    held = _check_answer(document, hold, "/account/holds", "post", "201")
    assert _tag(held["hold"]) == _tag(held["transaction"]) == ("booking-9", {"room": 12})
    capture = client.post(f"/account/holds/{held['hold']['id']}/capture?username=bryan", headers=BRYAN)
    captured = _check_answer(document, capture, "/account/holds/{hold_id}/capture", "post", "200")
    assert _tag(captured["transaction"]) == ("booking-9", {"room": 12})  # the hold's
    untagged = client.post("/account/coins/withdraw?username=aaron&amount=1", headers=AARON)
    plain = _check_answer(document, untagged, "/account/coins/withdraw", "post", "200")
    assert _tag(plain["transaction"]) == (None, {})


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("/account/coins/transfer?username=aaron&to=bryan&amount=5&reference=%01", "invalid_reference"),
        ("/account/coins/add?username=aaron&amount=5&metadata.bad%20key=1", "invalid_metadata"),
        ("/account/holds?username=aaron&to=bryan&amount=5&metadata.x=" + "v" * 257, "invalid_metadata"),
    ],
)
def test_tag_refusals_are_documented(
    client: FlaskClient, document: dict[str, Any], url: str, code: str
) -> None:
    response = client.post(url, headers=AARON)
    body = _check_answer(document, response, url.split("?")[0], "post", "400")
    assert body["error"] == code


def test_filtered_pages_match_the_documented_schemas(client: FlaskClient, document: dict[str, Any]) -> None:
    """A filtered history page and a filtered ``/admin/transactions`` page, as documented; a
    malformed or unknown filter is the documented 400."""
    for amount, campaign in ((5, "spring"), (7, "autumn"), (9, "spring")):
        url = f"/account/coins/transfer?username=aaron&to=bryan&amount={amount}&metadata.campaign={campaign}"
        assert client.post(url, headers=AARON).status_code == 200
    filters = "type=transfer,capture&status=SUCCESS&min_amount=6&metadata.campaign=spring"
    filters += "&created_after=2000-01-01T00:00:00%2B01:00"
    history = client.get(f"/account/transactions?username=aaron&{filters}", headers=AARON)
    listed = client.get(f"/admin/transactions?counterparty=aaron&{filters}", headers=ADMIN)
    page = _check_answer(document, history, "/account/transactions", "get", "200")
    assert [record["amount"] for record in page["transactions"]] == [9]
    page = _check_answer(document, listed, "/admin/transactions", "get", "200")
    assert [record["amount"] for record in page["transactions"]] == [9]
    for url in (
        "/account/transactions?username=aaron&colour=red",
        "/account/transactions?username=aaron&created_before=yesterday",
        "/account/transactions?username=aaron&created_after=0001-01-01T00:00:00%2B05:00",
    ):
        refused = _check_answer(
            document, client.get(url, headers=AARON), "/account/transactions", "get", "400"
        )
        assert refused["error"] == "invalid_parameter", url
    refused = client.get("/admin/transactions?username=aaron", headers=ADMIN)
    assert (
        _check_answer(document, refused, "/admin/transactions", "get", "400")["error"] == "invalid_parameter"
    )


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_the_document_and_the_page_need_no_token(client: FlaskClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_the_page_loads_every_asset_from_the_service_itself(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    references = re.findall(r'(?:src|href|data-spec-url)="([^"]+)"', html)
    assert len(references) == 5
    for reference in references:
        assert reference.startswith("/"), reference  # no CDN, no other host
        assert client.get(reference).status_code == 200, reference


def test_an_unknown_asset_is_a_json_404(client: FlaskClient) -> None:
    response = client.get("/docs/assets/..%2Fopenapi.json")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_the_bundled_swagger_ui_renders_openapi_3_1() -> None:
    major = int(swagger_ui_version().split(".")[0])
    assert major >= 5  # Swagger UI 4 cannot show OpenAPI 3.1
