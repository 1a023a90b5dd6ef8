"""The personalization service over HTTP (FastAPI TestClient)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from personalign.runtime.llm.fake import FakeLLM
from personalign.service.app import ServiceConfig, create_app

OPINIONS = [
    {"question": "Should the city build more bike lanes?", "options": ["Yes", "No"], "answer": 0},
    {"question": "Do you drive to work?", "options": ["Yes", "No"], "answer": 1},
    {"question": "How often do you use public transit?",
     "options": ["Daily", "Weekly", "Rarely", "Never"], "answer": 0},
    {"question": "Should gasoline taxes rise to fund transit?", "options": ["Yes", "No"],
     "answer": 0},
    {"question": "Is climate change a serious problem?", "options": ["Yes", "No"], "answer": 0},
]


def _wait(client: TestClient, job_id: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError("job did not finish")


@pytest.fixture()
def fake_client(tmp_path, embedder):
    optimizer = FakeLLM(responder=lambda text, i: f"[Answer as a transit-loving city person {i}.]")
    app = create_app(ServiceConfig(store=tmp_path, serve_openai=False),
                     task_llm=FakeLLM(chooser=lambda item: 0), optimizer_llm=optimizer,
                     embedder=embedder)
    return TestClient(app)


@pytest.mark.real_model  # the fixture loads the real MiniLM embedder
def test_fit_then_answer(fake_client):
    r = fake_client.post("/v1/users/alice/fit",
                         json={"profile": {"AGE": "18-29"}, "opinions": OPINIONS,
                               "preset": "tiny"})
    assert r.status_code == 202
    job = _wait(fake_client, r.json()["job_id"])
    assert job["status"] == "done", job
    stored = fake_client.get("/v1/users/alice").json()
    assert stored["prompts"]
    answer = fake_client.post("/v1/users/alice/answer", json={"questions": [
        {"question": "Should buses run all night?", "options": ["Yes", "No"]}]}).json()
    assert answer["answers"][0]["answer"] == "Yes"
    assert fake_client.delete("/v1/users/alice").json()["deleted"] is True
    assert fake_client.get("/v1/users/alice").status_code == 404


@pytest.mark.real_model  # the fixture loads the real MiniLM embedder
def test_bad_input_is_rejected_with_field(fake_client):
    bad = [dict(OPINIONS[0], answer=5)] + OPINIONS[1:]
    r = fake_client.post("/v1/users/bob/fit", json={"opinions": bad})
    assert r.status_code == 422 and "out of range" in r.text
    r = fake_client.post("/v1/users/bob/fit", json={"opinions": OPINIONS, "preset": "nope"})
    assert r.status_code == 422 and "preset" in r.text
    assert fake_client.post("/v1/users/a%20b/fit", json={"opinions": OPINIONS}).status_code \
        == 422
    assert fake_client.get("/v1/users/nobody").status_code == 404


@pytest.mark.real_model
def test_service_with_real_models(tmp_path, gemma, smollm, embedder):
    client = TestClient(create_app(ServiceConfig(store=tmp_path), task_llm=gemma,
                                   optimizer_llm=smollm, embedder=embedder))
    r = client.post("/v1/users/carol/fit", json={"opinions": OPINIONS, "preset": "tiny"})
    job = _wait(client, r.json()["job_id"], timeout=300)
    assert job["status"] == "done", job
    answers = client.post("/v1/users/carol/answer", json={"questions": [
        {"question": "Should the city add more bus routes?", "options": ["Yes", "No"]}]}).json()
    assert answers["answers"][0]["answer"] in ("Yes", "No")
    models = client.get("/openai/v1/models").json()
    assert {m["id"] for m in models["data"]} == {"gemma3-270m", "smollm2-135m-instruct"}
    chat = client.post("/openai/v1/chat/completions", json={
        "model": "smollm2-135m-instruct", "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say hi."}]}).json()
    assert chat["choices"][0]["message"]["content"].strip()
