"""The web dashboard in a real browser (headless Chromium) against a live API and a real
Celery worker: sign-in, teacher upload by drag-and-drop, job creation from the form, a job
watched to its end over SSE, downloads checked against the API, and tenant isolation.

Waits are on DOM state (WebDriverWait), never sleeps. ``DFMSCD_SCREENSHOTS=docs/dashboard``
also writes each page's screenshots at 1280 and 390 px.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from service_kit import CARD, TINY_HYPERPARAMETERS, job_body, make_key, upload_teacher

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def keys(dashboard: Any) -> dict[str, str]:
    return {"a": make_key("web-a"), "b": make_key("web-b")}


def _drop_file(dash: Any, selector: str, data: bytes, name: str) -> None:
    """A real drop event on the zone, with a DataTransfer holding the file's bytes."""
    dash.driver.execute_script("""
        const [selector, b64, name] = arguments;
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "application/octet-stream"}));
        const zone = document.querySelector(selector);
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    """, selector, base64.b64encode(data).decode(), name)


def _fill_card(dash: Any, card: dict[str, Any]) -> None:
    dash.select("#card-architecture", card["architecture"])
    dash.fill("#card-classes", str(card["num_classes"]))
    c, height, width = card["input_shape"]
    dash.select("#card-channels", str(c))
    dash.fill("#card-height", str(height))
    dash.fill("#card-width", str(width))
    dash.fill("#card-mean", ", ".join(map(str, card["mean"])))
    dash.fill("#card-std", ", ".join(map(str, card["std"])))


def _message(dash: Any, selector: str) -> str:
    return dash.until(lambda: dash.css(selector).text.strip(), f"a message in {selector}")


def test_sign_in_refuses_a_wrong_key_and_keeps_the_right_one_in_session_storage(dashboard, keys):
    dash = dashboard
    dash.open()
    dash.driver.execute_script("sessionStorage.clear()")
    dash.open("#/jobs")
    dash.shoot("sign-in")
    dash.fill("#api-key", "dfk_not-a-key")
    dash.click("#sign-in")
    assert _message(dash, "#sign-in-message") == "invalid API key"
    assert dash.driver.execute_script("return sessionStorage.length") == 0
    dash.fill("#api-key", keys["a"])
    dash.click("#sign-in")
    dash.visible("#nav")
    assert dash.driver.execute_script("return sessionStorage.getItem('dfmscd.apiKey')") == keys["a"]
    assert dash.driver.execute_script("return localStorage.length") == 0
    dash.visible("#no-jobs")  # a new tenant: an empty list, not someone else's jobs
    # Signing out forgets the key.
    dash.click("#sign-out")
    dash.visible("#sign-in-form")
    assert dash.driver.execute_script("return sessionStorage.length") == 0
    assert dash.console_errors() == []


def test_teacher_upload_by_drop_checks_the_card_and_shows_the_apis_refusal(dashboard, keys, teacher_file):
    dash = dashboard
    dash.sign_in(keys["a"])
    dash.go("#/teachers")
    dash.visible("#no-teachers")
    data = teacher_file.read_bytes()
    _drop_file(dash, "#drop-zone", data, "teacher.safetensors")
    assert dash.css("#teacher-file-name").text.startswith("teacher.safetensors")

    # The page's own check, worded like the API's: one mean/std value per channel.
    _fill_card(dash, {**CARD, "mean": [0.5, 0.5]})
    dash.click("#upload-submit")
    assert _message(dash, "#upload-message") == "mean and std need one value per channel (1), got 2 and 1"

    # A card the page cannot check (the weights are a resnet8, not a resnet20): the API's 422.
    _fill_card(dash, {**CARD, "architecture": "resnet20"})
    dash.click("#upload-submit")
    refused = _message(dash, "#upload-message")
    assert refused.startswith("weights do not match architecture 'resnet20'"), refused
    assert refused.endswith("(invalid_checkpoint)"), refused
    assert dash.all("#no-teachers"), "a refused upload stores nothing"

    _fill_card(dash, CARD)
    dash.click("#upload-submit")
    ok = dash.visible("#upload-ok").text
    teacher_id = ok.split()[1].rstrip(".")
    row = dash.visible(f"tr[data-teacher-id='{teacher_id}']")
    assert "resnet8" in row.text and "1×8×8" in row.text
    dash.shoot("teachers")
    assert dash.console_errors() == []


def test_a_job_from_the_form_runs_to_the_end_live_and_downloads_match_the_api(dashboard, keys, client, teacher_file):
    dash = dashboard
    auth = {"Authorization": f"Bearer {keys['a']}"}
    teachers = client.get("/v1/teachers", headers=auth).json()["data"]
    if not teachers:  # this test alone: the upload test did not run first
        teachers = [upload_teacher(client, auth, teacher_file).json()]
    teacher_id = teachers[0]["id"]

    dash.sign_in(keys["a"])
    dash.go("#/jobs/new")
    dash.select("#job-teacher", teacher_id)
    dash.select(".student-arch", "resnet8")
    dash.fill(".student-name", "small")
    dash.click("input[name=preset][value=fast]")
    dash.fill("#budget-value", "2")
    dash.select("#budget-unit", "epochs")
    dash.fill("#job-seed", "3")
    dash.click("details summary")
    # Refused by the API (the page cannot know every config field): its 422 is shown as it is.
    dash.fill("#job-hyperparameters", json.dumps({**TINY_HYPERPARAMETERS, "no_such_field": 1}))
    dash.click("#job-submit")
    refused = _message(dash, "#job-message")
    assert "no_such_field" in refused and refused.endswith("(invalid_config)"), refused
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []
    # Fixed and sent again: a new request with a new Idempotency-Key (the old one would be a 409).
    dash.fill("#job-hyperparameters", json.dumps(TINY_HYPERPARAMETERS))
    dash.shoot("new-job")
    dash.click("#job-submit")

    dash.until(lambda: dash.driver.execute_script("return location.hash").startswith("#/jobs/job_"), "the job page")
    job_id = dash.driver.execute_script("return location.hash").split("/")[-1]
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert job["preset"] == "fast" and job["budget"] == {"epochs": 2} and job["seed"] == 3
    assert [(s["name"], s["architecture"]) for s in job["students"]] == [("small", "resnet8")]
    assert job["config"]["kd_batch_size"] == TINY_HYPERPARAMETERS["kd_batch_size"]

    # Watched to the end: the status the page shows comes from the API, the curves from SSE.
    dash.visible("#job-status[data-status='succeeded']", timeout=240)
    dash.until(lambda: dash.css("#stream-state").text == "stream ended: job succeeded", "the stream's end")
    assert dash.css("#job-progress").text == "100%"
    assert int(dash.css("#chart-loss").get_attribute("data-points")) >= 1
    assert int(dash.css("#chart-balance").get_attribute("data-points")) >= 1
    assert int(dash.css("#chart-speed").get_attribute("data-points")) >= 1
    legend = dash.css("#chart-loss .u-legend").get_attribute("textContent")
    assert "small" in legend, legend
    assert "job succeeded" in dash.css("#job-log").text
    dash.until(lambda: dash.driver.execute_script(
        "const i = document.querySelector('#samples-img'); return i && i.complete && i.naturalWidth > 0"), "the samples grid")
    assert dash.css("tr[data-student='small']").text.count("succeeded") == 1
    dash.shoot("job")

    final = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    student = final["students"][0]
    for fmt, suffix in (("safetensors", "safetensors"), ("onnx", "onnx"), ("torchscript", "torchscript.pt"),
                        ("onnx-int8", "int8.onnx")):
        dash.click(f"button.download[data-student='small'][data-format='{fmt}']")
        # An export is built on its first request (seconds on a busy machine): wait for the page's word.
        dash.until(lambda: dash.all(f"#download-ok[data-file='small.{suffix}']") or dash.all("#download-message .error-box"),
                   f"the page to save the {fmt} file", timeout=120)
        assert dash.all(f"#download-ok[data-file='small.{suffix}']"), dash.css("#download-message").text
        got = hashlib.sha256(dash.downloaded(f"small.{suffix}").read_bytes()).hexdigest()
        api = client.get(f"/v1/jobs/{job_id}/students/small/weights", params={"format": fmt}, headers=auth)
        assert api.status_code == 200
        assert got == hashlib.sha256(api.content).hexdigest() == api.headers["etag"].strip('"'), fmt
        if fmt == "safetensors":
            assert got == student["sha256"]

    _check_the_student_report(dash, client, auth, job_id)

    dash.go("#/jobs")
    row = dash.visible(f"tr[data-job-id='{job_id}'][data-status='succeeded']")
    assert "100%" in row.text and "small" in row.text
    dash.shoot("jobs")
    assert dash.console_errors() == []


def _check_the_student_report(dash: Any, client: Any, auth: dict[str, str], job_id: str) -> None:
    """The job page's report of its student against the API's, then with an evaluation on a set of the
    owner's, then with its INT8 file flagged (written as the worker writes a flagged file)."""
    import tempfile
    from pathlib import Path

    from service_kit import upload_evaluation_set, wait_for, write_evaluation_npz
    from sqlalchemy import update

    from dfmscd_service.core.db import session_scope
    from dfmscd_service.core.models import JobStudent, StudentFile

    api = client.get(f"/v1/jobs/{job_id}/students/small/report", headers=auth).json()
    box = dash.visible("#student-reports article[data-student='small']")
    assert box.find_element("css selector", ".cpu-model").text == api["report"]["cpu"]["model"]
    assert box.find_element("css selector", ".parameters").text and box.find_element("css selector", ".flops").text
    for f in api["files"]:
        row = box.find_element("css selector", f"tr[data-format='{f['format']}']")
        assert row.get_attribute("data-status") == f["status"] == "verified" or f["format"] == "onnx-int8"
        latency = [c.text for c in row.find_elements("css selector", "td.latency")]
        assert len(latency) == 2 and all(c.endswith(" ms") for c in latency), latency

    with tempfile.TemporaryDirectory() as folder:
        made = upload_evaluation_set(client, auth, write_evaluation_npz(Path(folder) / "digits.npz", n=20))
    assert made.status_code == 201, made.text
    asked = client.post(f"/v1/jobs/{job_id}/evaluations", headers=auth, json={"evaluation_set_id": made.json()["id"]})
    assert asked.status_code == 202, asked.text
    url = f"/v1/jobs/{job_id}/evaluations/{asked.json()['id']}"
    done = wait_for(lambda: (lambda e: e if e["status"] in ("succeeded", "failed") else None)(
        client.get(url, headers=auth).json()), 300, 0.25, what="the evaluation")
    assert done["status"] == "succeeded", done
    with session_scope() as s:  # the INT8 file as the worker stores one below its threshold
        student = s.query(JobStudent).filter(JobStudent.job_id == job_id, JobStudent.name == "small").one()
        s.execute(update(StudentFile).where(StudentFile.student_id == student.id, StudentFile.format == "onnx-int8")
                  .values(status="flagged", verification={**(student.files[-1].verification or {}), "status": "flagged",
                                                          "top1_agreement": 0.9}))
    dash.driver.refresh()
    box = dash.visible("#student-reports article[data-student='small']")
    heads = [th.text for th in box.find_elements("css selector", "thead th")]
    assert heads[-1].lower() == "accuracy (digits.npz, n=20)", heads  # (upper case by its style)
    accuracy = done["results"]["students"]["small"]["accuracy"]
    for fmt in ("pytorch", "onnx", "onnx-int8"):
        cell = box.find_element("css selector", f"tr[data-format='{fmt}'] td.accuracy").text
        assert cell == f"{accuracy[fmt] * 100:.1f}%", (fmt, cell)
    int8 = box.find_element("css selector", "tr[data-format='onnx-int8']")
    assert "flagged" in int8.get_attribute("class") and int8.find_element("css selector", ".badge.flag").is_displayed()
    assert "90.00%" in int8.text and "below the 97.0% threshold" in int8.text
    button = dash.css("button.download[data-student='small'][data-format='onnx-int8']")
    assert button.get_attribute("data-flagged") == "true" and button.is_enabled()
    dash.shoot("job-report")


def test_a_running_job_shows_live_progress_and_is_cancelled_from_its_page(dashboard, keys, client, teacher_file,
                                                                         pause_point):
    # Held by the worker right after its epoch-1 checkpoint: "running" for as long as the test
    # needs, however fast the job is.
    dash = dashboard
    auth = {"Authorization": f"Bearer {keys['a']}"}
    teachers = client.get("/v1/teachers", headers=auth).json()["data"]
    teacher_id = teachers[0]["id"] if teachers else upload_teacher(client, auth, teacher_file).json()["id"]
    body = job_body(teacher_id, hyperparameters=TINY_HYPERPARAMETERS, budget={"epochs": 3},
                    metadata=pause_point.metadata(1))
    job_id = client.post("/v1/jobs", headers=auth, json=body).json()["id"]
    pause_point.wait_paused(job_id, lambda: client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"])

    dash.sign_in(keys["a"])
    row = dash.visible(f"tr[data-job-id='{job_id}'][data-status='running']")
    assert 0 < int(row.find_element("css selector", ".progress").get_attribute("aria-valuenow")) < 100
    dash.go(f"#/jobs/{job_id}")
    dash.visible("#job-status[data-status='running']")
    # The epoch-1 metrics arrive over the stream while the job is still running.
    dash.until(lambda: int(dash.css("#chart-loss").get_attribute("data-points") or 0) >= 1, "a live loss point")
    assert dash.css("#stream-state").text == "live"
    assert 0 < int(dash.css("#job-progress").text.rstrip("%")) < 100
    dash.shoot("job-running")
    dash.click("#cancel-job")
    dash.visible("#job-status[data-status='cancelling']")
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "cancelling"
    pause_point.release(job_id)
    dash.visible("#job-status[data-status='cancelled']", timeout=120)
    dash.until(lambda: dash.css("#stream-state").text == "stream ended: job cancelled", "the stream's end")
    assert dash.all("#cancel-job") == []
    student = dash.css("tr[data-student='resnet8']")
    assert "partial" in student.text and "cancelled" in student.text
    assert student.find_element("css selector", "button.download[data-format='safetensors']").is_enabled()
    assert dash.console_errors() == []


def test_a_jobs_budget_advice_warnings_and_flagged_student_are_on_its_page(dashboard, keys, client, teacher_file):
    # The end state a worker leaves after a seconds budget too short for the students (the run's
    # advice below the floor, a student flagged, classes never learnt), written as it writes them.
    from sqlalchemy import update
    from service_kit import wait_for

    from dfmscd_service.core.db import session_scope
    from dfmscd_service.core.measured_costs import advice_view
    from dfmscd_service.core.models import Job, JobStudent, utcnow

    dash = dashboard
    auth = {"Authorization": f"Bearer {keys['a']}"}
    teachers = client.get("/v1/teachers", headers=auth).json()["data"]
    teacher_id = teachers[0]["id"] if teachers else upload_teacher(client, auth, teacher_file).json()["id"]
    body = job_body(teacher_id, students=[{"architecture": "resnet8", "name": "small"},
                                          {"architecture": "resnet8", "name": "peer"}], budget="20s")
    job_id = client.post("/v1/jobs", headers=auth, json=body).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "cancelled", 120,
             what="the job to be cancelled")
    device = "cpu (Test CPU, 1 threads)"
    short = (f"on {device} this budget buys about 2 epochs (1 of warm-up), 20 KD steps per epoch, and KD updates per "
             "student: small 40, peer 40; below the 1000 updates per student the defaults need: give at least 9 min")
    flag = ("student 'peer' agrees with the teacher on only 12% of held-out synthetic images; too few KD updates "
            "(40, the defaults need 1000): give a larger budget")
    missing = "3 of 10 classes never reached the pool (by the teacher's argmax): 2, 5, 7; give a larger budget"
    advice = advice_view({"epochs": 2, "kd_updates": {"small": 40, "peer": 40}, "below_floor": True},
                         basis="run", device=device, measured_at=utcnow(), message=short)
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(advice=advice, warnings=[short, flag, missing],
                                                             updated_at=utcnow()))
        s.execute(update(JobStudent).where(JobStudent.job_id == job_id, JobStudent.name == "peer")
                  .values(metrics={"teacher_agreement": 0.12, "kd_updates": 40, "flag": flag}))

    dash.sign_in(keys["a"])
    dash.go(f"#/jobs/{job_id}")
    box = "#job-advice[data-below-floor='true']"
    dash.visible(box)
    # the page re-renders as it polls: each read is retried on a fresh element (Dashboard.until)
    dash.until(lambda: short in dash.css(box).text and f"measured at the start of this run on {device}" in dash.css(box).text,
               "the advice box with the run's advice")
    # the advice's own line is not repeated among the warnings
    dash.until(lambda: [li.text for li in dash.all("#job-warnings li")] == [flag, missing], "the job's warnings")
    dash.until(lambda: dash.css("tr[data-student='peer'] .badge.flag").is_displayed()
               and flag in dash.css("tr[data-student='peer']").text, "the flag on the peer student")
    assert dash.all("tr[data-student='small'] .badge.flag") == []
    dash.shoot("job-advice")
    assert dash.console_errors() == []


def test_another_tenant_sees_not_found_for_someone_elses_job(dashboard, keys, client, teacher_file):
    dash = dashboard
    auth_a = {"Authorization": f"Bearer {keys['a']}"}
    teachers = client.get("/v1/teachers", headers=auth_a).json()["data"]
    teacher_id = teachers[0]["id"] if teachers else upload_teacher(client, auth_a, teacher_file).json()["id"]
    job_id = client.post("/v1/jobs", headers=auth_a, json=job_body(teacher_id)).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth_a)  # queued: cancelled at once, no work for the worker

    dash.sign_in(keys["b"])
    dash.go(f"#/jobs/{job_id}")
    box = dash.visible("#job-not-found")
    assert f"job '{job_id}' not found" in box.text
    assert dash.all("#chart-loss") == [] and dash.all("button.download") == []
    dash.go("#/jobs")
    dash.visible("#no-jobs")
    assert job_id not in dash.css("main").text
    dash.go("#/teachers")
    dash.visible("#no-teachers")
    dash.go(f"#/jobs/{job_id}")
    dash.visible("#job-not-found")
    dash.shoot("not-found")
    # And the owner still sees it.
    dash.sign_in(keys["a"])
    dash.go(f"#/jobs/{job_id}")
    dash.visible("#job-status[data-status='cancelled']")
    assert dash.console_errors() == []


def test_the_dashboard_does_not_shadow_the_api(dashboard, client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/vendor/uplot/uPlot.iife.min.js").status_code == 200
    assert client.get("/healthz").status_code in (200, 503)
    assert client.get("/openapi.json").json()["info"]["title"] == "dfmscd"
    assert client.get("/docs").status_code == 200
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    gone = client.get("/static/nothing-here.js")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert "/" not in client.get("/openapi.json").json()["paths"]
