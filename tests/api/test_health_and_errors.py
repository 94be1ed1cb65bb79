"""Health probes, the zoo listing, and the one error shape (404/405/422/500)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from service_kit import assert_error, wait_for

from dfmscd_service.api.http.errors import CatchAllMiddleware, install_error_handlers
from dfmscd_service.core.settings import get_settings


def test_readyz_reports_both_dependencies(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "broker": "ok"}


@pytest.mark.parametrize(("var", "value", "failed"), [
    ("DFMSCD_BROKER_URL", "redis://127.0.0.1:1/0", "broker"),
    ("DFMSCD_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/nope", "database"),
])
def test_readyz_is_503_naming_what_failed(client, monkeypatch, var, value, failed):
    monkeypatch.setenv(var, value)
    get_settings.cache_clear()
    try:
        r = client.get("/readyz")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert r.status_code == 503
    body = r.json()
    assert body["checks"][failed].startswith("unreachable")
    assert [k for k, v in body["checks"].items() if v != "ok"] == [failed]
    assert body["error"]["code"] == "not_ready" and failed in body["error"]["message"]


def test_architectures_lists_the_zoo_with_parameter_counts(client, auth):
    from dfmscd.models import count_parameters, create_model

    def counted():
        body = client.get("/v1/architectures", headers=auth).json()
        by_name = {a["name"]: a for a in body["data"]}
        return (body, by_name) if by_name["resnet8"]["parameters"] is not None else None

    body, by_name = wait_for(counted, 120, 0.2, what="resnet8's parameter count")
    assert by_name["resnet8"]["source"] == "dfmscd"
    assert by_name["resnet8"]["parameters"] == count_parameters(create_model("resnet8", 10, 3, 32))
    assert by_name["tv/resnet18"]["source"] == "torchvision"
    assert isinstance(body["complete"], bool)


def test_unknown_route_and_wrong_method(client, auth):
    assert_error(client.get("/v1/nothing", headers=auth), 404, "not_found")
    r = client.put("/v1/jobs", headers=auth)
    assert_error(r, 405, "method_not_allowed")
    assert set(r.headers["allow"].split(", ")) >= {"GET", "POST"}


def test_unexpected_exception_is_a_json_500_without_traceback():
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(CatchAllMiddleware)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    err = assert_error(r, 500, "internal_error")
    assert "secret" not in r.text and "Traceback" not in r.text
    assert err["message"] == "internal server error"


def test_openapi_documents_bearer_auth_and_the_upload_body(client):
    spec = client.get("/openapi.json").json()
    assert any(s.get("scheme") == "bearer" for s in spec["components"]["securitySchemes"].values())
    upload = spec["paths"]["/v1/teachers"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(upload["required"]) == {"file", "card"}
