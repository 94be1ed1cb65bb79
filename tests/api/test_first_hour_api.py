"""The first hour of a new user, service side: budget strings, warnings on teachers and
jobs, student-name 404s, cancelled-job messages, the embedded server's GPU count, /docs offline."""

from __future__ import annotations

import pytest
import torch
from service_kit import CARD, assert_error, job_body, make_teacher, upload_teacher

from dfmscd_service.cli import detect_worker_gpus


@pytest.mark.parametrize("budget, stored", [
    ("5m", {"seconds": 300.0}), ("300s", {"seconds": 300.0}), ("2 epochs", {"epochs": 2}), ("1e", {"epochs": 1}),
    ({"epochs": 2}, {"epochs": 2}),
])
def test_budget_strings_are_the_cli_grammar(client, auth, teacher, budget, stored):
    r = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"], budget=budget))
    assert r.status_code == 202, r.text
    assert r.json()["budget"] == stored


@pytest.mark.parametrize("budget, says", [
    (300, "'300s' (seconds) or '300e' (epochs)"),
    ("300", "'300s' (seconds) or '300e' (epochs)"),
    ("5x", "epochs ('40e', '40 epochs')"),
    ({"minutes": 5}, "budget.minutes"),
    (True, "expected"),
])
def test_budget_errors_show_the_expected_shape(client, auth, teacher, budget, says):
    r = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"], budget=budget))
    err = r.json()["error"]
    assert r.status_code == 422 and err["code"] in ("invalid_budget", "validation_error"), r.text
    assert says in err["message"] or (budget is True and "budget" in err["message"]), err


def test_a_dominant_student_is_warned_about_at_creation(client, auth, teacher):
    body = job_body(teacher["id"], students=[{"architecture": "resnet8"}, {"architecture": "vgg8"},
                                              {"architecture": "mobilenetv2", "name": "mobile"}])
    r = client.post("/v1/jobs", headers=auth, json=body)
    assert r.status_code == 202, r.text
    warnings = r.json()["warnings"]
    assert len(warnings) == 1 and "'mobile'" in warnings[0] and "resnet8, vgg8" in warnings[0]
    assert client.get(f"/v1/jobs/{r.json()['id']}", headers=auth).json()["warnings"] == warnings
    alone = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"]))
    assert alone.json()["warnings"] == []


def test_teacher_whose_bn_statistics_contradict_the_card_is_accepted_with_a_warning(client, auth, teacher, tmp_path):
    from safetensors.torch import save_file

    from dfmscd.models import create_model

    assert teacher["warnings"] == []  # the kit's teacher agrees with its card
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_channels=1, image_size=8).train()
    with torch.no_grad():
        for _ in range(40):
            model(torch.randn(32, 1, 8, 8) * 0.3 + 2.0)  # inputs the card's mean/std would never produce
    path = tmp_path / "skewed.safetensors"
    save_file({k: v.contiguous() for k, v in model.eval().state_dict().items()}, str(path))
    r = upload_teacher(client, auth, path, CARD)
    assert r.status_code == 201, r.text
    warnings = r.json()["warnings"]
    assert len(warnings) == 1 and "first BatchNorm" in warnings[0] and "dfmscd card" in warnings[0]
    assert client.get(f"/v1/teachers/{r.json()['id']}", headers=auth).json()["warnings"] == warnings


def test_unknown_student_name_lists_the_valid_ones(client, auth, teacher):
    body = job_body(teacher["id"], students=[{"architecture": "resnet8"}, {"architecture": "vgg8", "name": "v"}])
    jid = client.post("/v1/jobs", headers=auth, json=body).json()["id"]
    for url in (f"/v1/jobs/{jid}/students/vgg8", f"/v1/jobs/{jid}/students/vgg8/weights"):
        assert_error(client.get(url, headers=auth), 404, "not_found", "its students are 'resnet8', 'v'")


def test_cancelled_job_says_so_instead_of_no_weights_yet(client, auth, teacher):
    jid = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"])).json()["id"]
    assert client.post(f"/v1/jobs/{jid}/cancel", headers=auth).json()["status"] == "cancelled"  # queued: at once
    err = assert_error(client.get(f"/v1/jobs/{jid}/students/resnet8/weights", headers=auth), 404, "not_ready")
    assert "was cancelled" in err["message"] and "yet" not in err["message"]
    err = assert_error(client.get(f"/v1/jobs/{jid}/samples.png", headers=auth), 404, "not_ready")
    assert "cancelled" in err["message"] and "yet" not in err["message"]


def test_embedded_server_counts_its_gpus():
    env: dict[str, str] = {}
    assert detect_worker_gpus(env) == torch.cuda.device_count()
    assert env["DFMSCD_WORKER_GPUS"] == str(torch.cuda.device_count())
    explicit = {"DFMSCD_WORKER_GPUS": "2"}
    assert detect_worker_gpus(explicit) is None and explicit == {"DFMSCD_WORKER_GPUS": "2"}


def test_docs_load_without_a_cdn(client):
    html = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in html and "/docs-assets/swagger-ui.css" in html
    assert "cdn." not in html and "jsdelivr" not in html
    js = client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    assert client.get("/redoc").status_code == 404
