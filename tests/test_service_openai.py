"""The official ``openai`` client against the service's personalized OpenAI-compatible API
(real HTTP on loopback): chat, completions, streaming, log-probs, content parts, usage,
errors; and one chat on the real embedded SmolLM2 (FSPO shots)."""

from __future__ import annotations

import httpx
import openai
import pytest

from personalign.serving.openai_server import serve_in_thread
from tests.service_helpers import ADMIN, OPINIONS, PROMPT, make_app

ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}


def _wait(http: httpx.Client, job_id: str) -> dict:
    import time

    deadline = time.time() + 60
    while time.time() < deadline:
        job = http.get(f"/v1/jobs/{job_id}", headers=ADMIN_H).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server with a fitted Fermi user (alice), an unfitted one (bob), and their keys."""
    app = make_app(f"sqlite:///{tmp_path_factory.mktemp('svc') / 'service.db'}")
    with serve_in_thread(app) as url:
        http = httpx.Client(base_url=url.removesuffix("/v1"), timeout=30)
        keys = {}
        for user in ("alice", "bob"):
            keys[user] = http.post("/v1/users", json={"user_id": user},
                                   headers=ADMIN_H).json()["api_key"]
        http.post("/v1/users/alice/opinions", json={"opinions": OPINIONS}, headers=ADMIN_H)
        job = http.post("/v1/users/alice/fit", json={"preset": "tiny"}, headers=ADMIN_H).json()
        assert _wait(http, job["job_id"])["status"] == "done"
        yield url, keys, app
        app.state.service.close()


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)


def plain_and_streamed(c: openai.OpenAI, model: str, messages: list) -> tuple:
    """The plain chat answer, the streamed chunks of the same request, and their text."""
    plain = c.chat.completions.create(model=model, messages=messages)
    chunks = list(c.chat.completions.create(model=model, messages=messages, stream=True,
                                            stream_options={"include_usage": True}))
    return plain, chunks, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_chat_is_personalized(served):
    url, keys, app = served
    task = app.state.fakes[0]
    alice = client(url, keys["alice"])
    r = alice.chat.completions.create(model="personalign", messages=[
        {"role": "user", "content": "Should buses run all night?"}], max_tokens=32)
    assert r.choices[0].message.content.startswith("Sure.")
    assert r.choices[0].message.role == "assistant"
    applied = r.model_extra["personalization"]
    assert applied["user_id"] == "alice" and applied["method"] == "fermi"
    assert PROMPT in applied["system_prompt"]
    assert PROMPT in task.prompts_seen[-1]  # the system message reached the model
    assert "Should buses run all night?" in task.prompts_seen[-1]
    # The same request twice: the same usage.
    again = alice.chat.completions.create(model="personalign", messages=[
        {"role": "user", "content": "Should buses run all night?"}], max_tokens=32)
    assert again.usage.prompt_tokens == r.usage.prompt_tokens > 0
    assert again.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # The admin names the user.
    admin = client(url, ADMIN)
    r = admin.chat.completions.create(model="personalign/alice", messages=[
        {"role": "user", "content": "Hi"}])
    assert r.model_extra["personalization"]["user_id"] == "alice"


def test_content_parts_and_completions(served):
    url, keys, app = served
    task = app.state.fakes[0]
    alice = client(url, keys["alice"])
    r = alice.chat.completions.create(model="personalign", messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Trains"},
                                     {"type": "text", "text": "or buses?"}]}])
    assert "Trains\nor buses?" in task.prompts_seen[-1]
    assert r.choices[0].message.content
    c = alice.completions.create(model="personalign", prompt="Ride the tram?", max_tokens=20)
    assert c.choices[0].text.startswith("Sure.")
    assert PROMPT in c.model_extra["personalization"]["system_prompt"]
    assert c.usage.prompt_tokens > 0


def test_streaming_matches_the_plain_answer(served):
    url, keys, _ = served
    alice = client(url, keys["alice"])
    messages = [{"role": "user", "content": "Is a city better with trams?"}]
    plain, chunks, text = plain_and_streamed(alice, "personalign", messages)
    assert text == plain.choices[0].message.content
    assert len([c for c in chunks if c.choices]) > 3  # streamed in pieces, not one blob
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert chunks[0].model_extra["personalization"]["method"] == "fermi"
    pieces = list(alice.completions.create(model="personalign", prompt="Trams?", stream=True))
    assert "".join(p.choices[0].text for p in pieces).startswith("Sure.")


def test_the_openai_backend_streams_from_a_streaming_server(served):
    """The project's OpenAI backend reads the service's stream piece by piece (the service is
    a real streaming OpenAI-compatible server); the pieces join to the plain answer."""
    from personalign.runtime.llm.base import Generation
    from personalign.runtime.llm.openai_backend import OpenAILLM
    from personalign.runtime.llm.types import SamplingParams

    url, keys, _ = served
    llm = OpenAILLM("personalign", url, api_key=keys["alice"], cache=False, max_retries=0)
    messages = [{"role": "user", "content": "Are trams good for a city?"}]
    usage = Generation([])
    pieces = list(llm.stream(messages, SamplingParams(max_tokens=64), usage))
    plain, prompt_tokens, completion_tokens = llm.generate_one(messages,
                                                               SamplingParams(max_tokens=64))
    assert len(pieces) > 3 and "".join(pieces) == plain[0]
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens, completion_tokens)


def test_logprobs(served):
    url, keys, _ = served
    r = client(url, keys["alice"]).chat.completions.create(
        model="personalign", messages=[{"role": "user", "content": "Bus?"}], logprobs=True,
        top_logprobs=2)
    first = r.choices[0].logprobs.content[0]
    assert first.token == "Sure" and first.logprob == pytest.approx(-0.5108, abs=1e-3)
    assert [t.token for t in first.top_logprobs] == ["Sure", "Yes"]
    c = client(url, keys["alice"]).completions.create(model="personalign", prompt="Bus?",
                                                      logprobs=3, max_tokens=4)
    assert c.choices[0].logprobs.tokens == ["Sure"]
    assert set(c.choices[0].logprobs.top_logprobs[0]) == {"Sure", "Yes", "No"}


def test_errors_are_openai_error_objects(served):
    url, keys, _ = served
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        client(url, "nope").chat.completions.create(model="personalign", messages=[
            {"role": "user", "content": "x"}])
    with pytest.raises(openai.PermissionDeniedError, match="does not reach"):
        client(url, keys["bob"]).chat.completions.create(model="personalign/alice", messages=[
            {"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]\.role") as e:
        client(url, keys["alice"]).chat.completions.create(model="personalign", messages=[
            {"role": "banana", "content": "x"}])
    assert e.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError, match="unknown model") as e:
        client(url, keys["alice"]).chat.completions.create(model="gpt-4o", messages=[
            {"role": "user", "content": "x"}])
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError, match="must name the user"):
        client(url, ADMIN).chat.completions.create(model="personalign", messages=[
            {"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError, match="no personalization yet"):
        client(url, keys["bob"]).chat.completions.create(model="personalign", messages=[
            {"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="at least one user message"):
        client(url, keys["alice"]).chat.completions.create(model="personalign", messages=[
            {"role": "system", "content": "x"}])


@pytest.mark.real_model
def test_fspo_chat_on_the_real_model(tmp_path):
    """FSPO shots on the real embedded SmolLM2, through the official client."""
    from personalign.service.app import ServiceConfig, create_app

    app = create_app(ServiceConfig(database=f"sqlite:///{tmp_path / 's.db'}", admin_key=ADMIN))
    with serve_in_thread(app) as url:
        http = httpx.Client(base_url=url.removesuffix("/v1"), timeout=120)
        key = http.post("/v1/users", json={"user_id": "kim"}, headers=ADMIN_H).json()["api_key"]
        http.post("/v1/users/kim/pairs", headers=ADMIN_H, json={"pairs": [
            {"prompt": "What should I eat?", "chosen": "A vegan curry.", "rejected": "Steak."},
            {"prompt": "Plan my weekend.", "chosen": "A vegan food market.",
             "rejected": "A barbecue."}]})
        job = http.post("/v1/users/kim/fit", json={"method": "fspo"}, headers=ADMIN_H).json()
        assert _wait(http, job["job_id"])["status"] == "done"
        r = client(url, key).chat.completions.create(model="personalign", max_tokens=12,
                                                     messages=[{"role": "user",
                                                                "content": "What is for lunch?"}])
        assert r.choices[0].message.content.strip()
        applied = r.model_extra["personalization"]
        assert applied["method"] == "fspo" and applied["shots"] == 2
        assert r.usage.prompt_tokens > 20 and r.usage.completion_tokens > 0
        app.state.service.close()


@pytest.mark.real_model
def test_fermi_fit_and_chat_on_the_real_models(tmp_path, gemma, smollm, embedder):
    """Fermi fit (Gemma answers, SmolLM2 writes prompts) through the service, then a
    personalized chat and a multiple-choice answer."""
    from personalign.service.app import ServiceConfig, create_app

    app = create_app(ServiceConfig(database=f"sqlite:///{tmp_path / 's.db'}", admin_key=ADMIN),
                     task_llm=gemma, optimizer_llm=smollm, embedder=embedder)
    with serve_in_thread(app) as url:
        http = httpx.Client(base_url=url.removesuffix("/v1"), timeout=300)
        key = http.post("/v1/users", json={"user_id": "lee"}, headers=ADMIN_H).json()["api_key"]
        http.post("/v1/users/lee/opinions", json={"opinions": OPINIONS}, headers=ADMIN_H)
        job = http.post("/v1/users/lee/fit", json={"preset": "tiny"}, headers=ADMIN_H).json()
        import time

        deadline = time.time() + 600
        while (job := http.get(f"/v1/jobs/{job['job_id']}", headers=ADMIN_H).json())[
                "status"] not in ("done", "failed"):
            assert time.time() < deadline
            time.sleep(0.5)
        assert job["status"] == "done", job
        answers = http.post("/v1/users/lee/answer", headers=ADMIN_H, json={"questions": [
            {"question": "Should the city add more bus routes?", "options": ["Yes", "No"]}]})
        assert answers.json()["answers"][0]["answer"] in ("Yes", "No")
        r = client(url, key).chat.completions.create(model="personalign", max_tokens=8,
                                                     messages=[{"role": "user",
                                                                "content": "Bus or car?"}])
        applied = r.model_extra["personalization"]
        assert applied["method"] == "fermi" and applied["system_prompt"]
        assert r.usage.prompt_tokens > 10
        app.state.service.close()


def test_the_bare_model_server_streams_as_the_service_does():
    """``personalign serve openai`` streams through the same code: the official client's
    chunks join to the plain answer, for chat and for completions."""
    from personalign.runtime.llm.fake import FakeLLM
    from personalign.serving.openai_server import create_openai_app

    llm = FakeLLM(responder=lambda text, i: "Trams run on rails through the city.",
                  model_id="bare")
    with serve_in_thread(create_openai_app({"bare": llm})) as url:
        bare = client(url, "unused")
        messages = [{"role": "user", "content": "Trams?"}]
        plain, chunks, text = plain_and_streamed(bare, "bare", messages)
        assert text == plain.choices[0].message.content and len(chunks) > 4
        assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
        assert "personalization" not in (chunks[0].model_extra or {})
        pieces = list(bare.completions.create(model="bare", prompt="Trams?", stream=True))
        assert "".join(p.choices[0].text for p in pieces) == text
