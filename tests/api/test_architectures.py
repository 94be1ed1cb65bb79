"""GET /v1/architectures: families, filtering and paging (timm adds ~1400 names)."""

from __future__ import annotations

import pytest
from service_kit import assert_error, wait_for

timm = pytest.importorskip("timm")


def _get(client, auth, **params):
    r = client.get("/v1/architectures", headers=auth, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_timm_models_are_counted_when_listed(client, auth):
    from dfmscd.models import count_parameters, create_model

    def counted():
        body = _get(client, auth, family="timm", q="test_resnet", limit=1)
        return body if body["data"][0]["parameters"] is not None else None

    body = wait_for(counted, 300, 0.2, what="timm/test_resnet's parameter count")
    (entry,) = body["data"]
    assert entry == {"name": "timm/test_resnet", "source": "timm",
                     "parameters": count_parameters(create_model("timm/test_resnet", 10, 3, 32))}
    assert body["complete"] is True


def test_default_listing_is_the_zoo_and_torchvision_as_before(client, auth):
    body = _get(client, auth)
    sources = {a["source"] for a in body["data"]}
    assert sources == {"dfmscd", "torchvision"}
    assert body["has_more"] is False and body["next"] is None
    names = [a["name"] for a in body["data"]]
    assert "resnet8" in names and "tv/resnet18" in names and not any(n.startswith("timm/") for n in names)
    assert _get(client, auth, family="dfmscd,torchvision")["data"] == body["data"]


def test_timm_family_filtered_and_paged(client, auth):
    everything = _get(client, auth, family="timm", q="ResNet")["data"]
    names = [a["name"] for a in everything]
    expected = sorted("timm/" + n for n in timm.list_models() if "resnet" in n.lower())
    assert names == expected and len(names) > 20
    assert {a["source"] for a in everything} == {"timm"}

    pages, cursor = [], None
    while True:
        params = {"family": "timm", "q": "resnet", "limit": 7}
        if cursor:
            params["cursor"] = cursor
        body = _get(client, auth, **params)
        assert len(body["data"]) <= 7
        pages.append([a["name"] for a in body["data"]])
        if not body["has_more"]:
            assert body["next"] is None
            break
        assert body["next"] == body["data"][-1]["name"]
        cursor = body["next"]
    assert [n for page in pages for n in page] == names
    assert all(len(p) == 7 for p in pages[:-1]) and len(pages) == -(-len(names) // 7)


def test_all_families_in_order(client, auth):
    body = _get(client, auth, family="all", q="resnet18")
    sources = [a["source"] for a in body["data"]]
    assert sources == sorted(sources, key=["dfmscd", "torchvision", "timm"].index)
    assert {"resnet18", "tv/resnet18", "timm/resnet18"} <= {a["name"] for a in body["data"]}
    assert _get(client, auth, family="timm", q="no-such-architecture")["data"] == []


@pytest.mark.parametrize("params, contains", [
    ({"family": "keras"}, "keras"),
    ({"family": ","}, "family"),
    ({"family": "timm", "cursor": "resnet8"}, "cursor"),
    ({"limit": 0}, "limit"),
    ({"limit": 1001}, "limit"),
])
def test_bad_queries_are_422(client, auth, params, contains):
    assert_error(client.get("/v1/architectures", headers=auth, params=params), 422, "validation_error", contains)


def test_start_up_prefetches_the_default_families_names_without_a_request(client, auth, monkeypatch):
    # What the lifespan does next to the pool's warm-up: afterwards the dashboard's first job form
    # finds the names in this process, with no trip to the torch pool.
    from dfmscd_service.api.routes import architectures

    monkeypatch.setattr(architectures, "_names", {})
    architectures.prefetch_names()
    wait_for(lambda: set(architectures.DEFAULT_FAMILIES) <= set(architectures._names), 120, 0.1,
             what="the prefetched names")
    assert "resnet8" in architectures._names["dfmscd"]
    assert all(n.startswith("tv/") for n in architectures._names["torchvision"])
    calls, call = [], architectures.torch_pool.call

    def recorded(fn, *args):  # a trip to the pool for names would show here
        calls.append(fn)
        return call(fn, *args)

    monkeypatch.setattr(architectures.torch_pool, "call", recorded)
    names = [a["name"] for a in _get(client, auth)["data"]]
    assert "resnet8" in names and "tv/resnet18" in names
    assert architectures.torch_checks.model_names not in calls
