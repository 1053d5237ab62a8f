"""/openapi.json as the daemon really answers, so generated clients and schemathesis can trust it.

FastAPI's default document left the receipt body pointing at `#/$defs/ReceiptItem` (which does not
resolve inside an OpenAPI document), listed none of the 404 / 409 / 411 / 413 / 415 / 503 answers,
called /metrics JSON and left the bearer token out. This builds the same document and fixes it:
every schema under components, every answer a route gives, the lane path parameter as the
configured lanes, and the security scheme when a token is configured."""

from __future__ import annotations

from typing import Any

ERROR = "Error"
RECEIPT_SCHEMAS = ("ReceiptIn", "StoredReceipt")
STORED_RECEIPT_SCHEMA = {
    "type": "object",
    "description": "The receipt as stored (no exact age; see docs/privacy.md).",
    "properties": {
        "receipt_id": {"type": "string"},
        "lane": {"type": "string"},
        "recorded_at_utc": {"type": "string"},
        "hour_utc": {"type": "string"},
        "band": {"type": "string"},
        "band_confidence": {"type": ["number", "null"]},
        "band_basis": {"type": "string"},
        "total": {"type": "number"},
        "n_items": {"type": "integer"},
        "created": {"type": "boolean"},
        "compliance": {
            "description": "The sale's compliance outcome (null with compliance off).",
            "oneOf": [{"type": "null"}, {
                "type": "object",
                "properties": {
                    "outcome": {"type": "string",
                                "enum": ["checked", "not_required", "violation", "no_face", "not_restricted"]},
                    "restricted_categories": {"type": "array", "items": {"type": "string"}},
                    "cashier": {"type": ["string", "null"], "description": "Keyed pseudonym, never the POS code."},
                    "id_check": {"type": ["string", "null"]},
                    "id_check_required": {"type": "boolean"},
                    "band": {"type": "string"},
                    "decision_source": {"type": "string"},
                    "check_called": {"type": "boolean"},
                    "rule": {"type": "string"},
                },
                "required": ["outcome"],
            }],
        },
    },
    "required": ["receipt_id", "lane", "band", "band_basis", "total", "n_items"],
}


def _error(description: str, **headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR}"}}},
    }
    if headers:
        answer["headers"] = {name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()}
    return answer


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def build_document(app: Any, lane_names: list[str], secured: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app` (FastAPI), corrected as described above."""
    from fastapi.openapi.utils import get_openapi

    from agetool.edge_runtime.receipts import ReceiptIn

    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    receipt = ReceiptIn.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(receipt.pop("$defs", {}))
    schemas["ReceiptIn"] = receipt
    schemas["StoredReceipt"] = STORED_RECEIPT_SCHEMA
    schemas[ERROR] = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
    if secured:
        schemas_security = doc["components"].setdefault("securitySchemes", {})
        schemas_security["bearer"] = {"type": "http", "scheme": "bearer",
                                      "description": "api.bearer_token (every route but /healthz)"}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            _fix_operation(path, method, operation, lane_names, secured)
    return doc


def _fix_operation(path: str, method: str, operation: dict[str, Any], lane_names: list[str], secured: bool) -> None:
    responses: dict[str, Any] = operation["responses"]
    responses.pop("422", None)  # FastAPI's; no route here validates parameters that way
    if secured and path != "/healthz":
        operation["security"] = [{"bearer": []}]
        responses["401"] = _error("No or wrong bearer token.", **{"WWW-Authenticate": "Bearer"})
    for parameter in operation.get("parameters", []):
        if parameter["name"] == "lane":
            parameter["schema"] = {"type": "string", "enum": lane_names, "title": "Lane",
                                   "description": "A lane of this daemon's config."}
    if "{lane}" in path:
        responses["404"] = _error("No lane of that name.")
    if path == "/readyz":
        ready = {"type": "object", "properties": {"ready": {"type": "boolean"}}, "required": ["ready"]}
        responses["200"] = _json("Ready: the model is loaded and every lane gives frames.", ready)
        responses["503"] = _json("Not ready (yet): which part is not.", ready)
    if path == "/metrics":
        responses["200"] = {"description": "Prometheus text exposition.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}}
    if path.endswith("/receipts") and method == "post":
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ReceiptIn"}}}}
        stored = {"$ref": "#/components/schemas/StoredReceipt"}
        responses["201"] = _json("Stored.", stored)
        responses["200"] = _json("A retry: the record stored the first time.", stored)
        responses["409"] = _json("receipt_id already stored with a different lane, total or items.",
                                 {"type": "object", "properties": {"detail": {"type": "string"}, "stored": stored},
                                  "required": ["detail", "stored"]})
        responses["411"] = _error("A chunked body (send Content-Length).")
        responses["413"] = _error("Body over api.max_body_bytes.")
        responses["415"] = _error("Content-Type is not application/json.")
        responses["422"] = _error("The body is not a valid receipt (one line names the field).")
        responses["503"] = _error("The receipt store is unavailable; retry.", **{"Retry-After": "Seconds to wait."})


def install(app: Any, lane_names: list[str], secured: bool) -> None:
    """Serve build_document's result (computed once, on the first request) at app.openapi_url."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app, lane_names, secured)
        return app.openapi_schema

    app.openapi = openapi
