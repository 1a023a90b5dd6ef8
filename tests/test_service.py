"""The personalization service through real HTTP on loopback (uvicorn in a thread, or a
server process for the restart test), on SQLite and on PostgreSQL when
``PERSONALIGN_TEST_DATABASE_URL`` names a server (``.ci/postgres.sh`` starts one).

Models are fakes (the logic under test is the service's); ``test_fspo_chat_on_the_real_model``
runs the real embedded SmolLM2."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from personalign.runtime import settings
from personalign.service.core import ServiceLimits
from personalign.serving.openai_server import serve_in_thread
from personalign.service.store.models import Base
from tests.service_helpers import ADMIN, CANARY, OPINIONS, PROMPT, each_database, make_app

REPO = Path(__file__).resolve().parents[1]
ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """A fresh, empty database URL of each kind."""
    yield from each_database(request.param, tmp_path)


class Server:
    def __init__(self, app, url: str):
        self.app, self.url = app, url.removesuffix("/v1")
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def as_(self, key: str | None) -> dict:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def user(self, user_id: str, opinions=OPINIONS) -> str:
        r = self.http.post("/v1/users", json={"user_id": user_id, "profile": {"AGE": "30-49"}},
                           headers=ADMIN_H)
        assert r.status_code == 201, r.text
        key = r.json()["api_key"]
        if opinions:
            r = self.http.post(f"/v1/users/{user_id}/opinions", json={"opinions": opinions},
                               headers=self.as_(key))
            assert r.status_code == 200, r.text
        return key

    def wait(self, job_id: str, key: str = ADMIN, until=("done", "failed"), timeout=60) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.http.get(f"/v1/jobs/{job_id}", headers=self.as_(key)).json()
            if job.get("status") in until:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not reach {until}: {job}")

    def idle(self) -> None:
        """Wait until the fit worker has nothing left."""
        assert self.app.state.service._queue.wait_idle(timeout=60)


def _serve(database: str, **kw):
    app = make_app(database, **kw)
    cm = serve_in_thread(app)
    server = Server(app, cm.__enter__())
    return server, cm


@pytest.fixture()
def server(database):
    server, cm = _serve(database)
    yield server
    server.app.state.service.close()
    cm.__exit__(None, None, None)


def _error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code",
                                                             "request_id"}
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    return body["error"]


def test_keys_are_required_and_reach_only_their_user(server):
    http, as_ = server.http, server.as_
    alice, bob = server.user("alice"), server.user("bob")
    for headers in ({}, as_("wrong-key"), {"Authorization": "Basic abc"}):
        r = http.get("/v1/users/alice/export", headers=headers)
        assert r.status_code == 401 and _error(r)["type"] == "authentication_error"
    assert http.get("/v1/users/alice/export", headers=as_(alice)).status_code == 200
    # Bob's key cannot read, change, fit, answer as, chat as or delete Alice.
    attempts = [("GET", "/v1/users/alice/export", None), ("GET", "/v1/users/alice", None),
                ("POST", "/v1/users/alice/opinions", {"opinions": OPINIONS[:1]}),
                ("POST", "/v1/users/alice/pairs",
                 {"pairs": [{"prompt": "p", "chosen": "c", "rejected": "r"}]}),
                ("POST", "/v1/users/alice/fit", {"method": "fermi", "preset": "tiny"}),
                ("POST", "/v1/users/alice/answer",
                 {"questions": [{"question": "q?", "options": ["a", "b"]}]}),
                ("POST", "/v1/chat/completions", {"model": "personalign/alice", "messages": [
                    {"role": "user", "content": "hi"}]}),
                ("DELETE", "/v1/users/alice", None),
                ("POST", "/v1/users", {"user_id": "mallory"}),
                ("POST", "/v1/users/bob/keys", None)]
    for method, path, body in attempts:
        r = http.request(method, path, json=body, headers=as_(bob))
        assert r.status_code == 403, (method, path, r.text)
        assert _error(r)["type"] == "permission_error"
    assert len(server.http.get("/v1/users/alice/export", headers=ADMIN_H).json()["opinions"]) \
        == len(OPINIONS)
    # A job id does not open another user's job either.
    job = http.post("/v1/users/alice/fit", json={"preset": "tiny"}, headers=as_(alice)).json()
    assert http.get(f"/v1/jobs/{job['job_id']}", headers=as_(bob)).status_code == 403
    server.idle()
    # The store keeps hashes, never the keys.
    export = http.get("/v1/users/alice/export", headers=ADMIN_H).json()
    assert alice not in str(export)
    scheme = http.get("/openapi.json").json()["components"]["securitySchemes"]
    assert list(scheme.values())[0]["scheme"].lower() == "bearer"


def test_inputs_are_strict_and_named(server):
    http = server.http
    key = server.user("carol", opinions=None)
    h = server.as_(key)

    def bad(body, path="/v1/users/carol/opinions", status=422):
        r = http.post(path, json=body, headers=ADMIN_H if path == "/v1/users" else h)
        assert r.status_code == status, r.text
        return _error(r)

    op = OPINIONS[0]
    for answer in ("1", True, 1.0, None):
        assert bad({"opinions": [dict(op, answer=answer)]})["param"] == "opinions[0].answer"
    e = bad({"opinions": [dict(op, answer=2)]})
    assert e["param"] == "opinions[0].answer" and "out of range for 2 options" in e["message"]
    e = bad({"opinions": [dict(op, options=["Yes", "Yes"])]})
    assert e["param"] == "opinions[0].options[1]" and "duplicate option" in e["message"]
    assert bad({"opinions": [dict(op, options=["Yes"])]})["param"] == "opinions[0].options"
    assert bad({"opinions": [dict(op, question="   ")]})["param"] == "opinions[0].question"
    assert bad({"opinions": [dict(op, extra=1)]})["param"] == "opinions[0].extra"
    e = bad({"opinions": [dict(op, question="x" * 5000)]})
    assert e["param"] == "opinions[0].question" and "at most 4000" in e["message"]
    e = bad({"opinions": [dict(op, options=[f"o{i}" for i in range(30)], answer=0)]})
    assert e["param"] == "opinions[0].options" and "at most 26" in e["message"]
    for user_id in ("alice\n", "a b", "", "x" * 129, "é"):
        e = bad({"user_id": user_id}, path="/v1/users")
        assert e["param"] == "user_id", user_id
    r = http.post("/v1/users", headers={**ADMIN_H, "content-type": "application/json"},
                  content=b'{"user_id": ')
    assert r.status_code == 422 and "malformed JSON" in _error(r)["message"]
    r = http.post("/v1/users/carol/opinions", headers=h, content=b"x" * 1_100_000)
    assert r.status_code == 413 and _error(r)["code"] == "body_too_large"
    chunked = iter([b'{"opinions": [' + b" " * 600_000, b" " * 600_000 + b"]}"])  # no length
    r = http.post("/v1/users/carol/opinions", headers={**h, "content-type": "application/json"},
                  content=chunked)
    assert r.status_code == 413 and _error(r)["code"] == "body_too_large"
    # Opinions per user are bounded (500 by default).
    many = [dict(op, question=f"Question {i}?") for i in range(250)]
    assert http.post("/v1/users/carol/opinions", json={"opinions": many}, headers=h).json()[
        "opinions"] == 250
    assert http.post("/v1/users/carol/opinions", json={"opinions": many}, headers=h).json()[
        "opinions"] == 500
    e = bad({"opinions": many[:1]})
    assert e["param"] == "opinions" and "at most 500" in e["message"]
    assert bad({"method": "vanilla"}, path="/v1/users/carol/fit")["param"] == "method"
    # A method names no server path: an existing folder and a missing one get the same answer.
    probes = [bad({"method": f"fspo:{path}"}, path="/v1/users/carol/fit")
              for path in ("/etc", "/nonexistent/run", str(REPO))]
    assert all(e["param"] == "method" and "serves: fermi, fspo" in e["message"]
               and "fspo_model.json" not in e["message"] for e in probes)
    assert bad({"preset": "huge"}, path="/v1/users/carol/fit")["param"] == "preset"


def test_requests_per_key_are_limited(database):
    server, cm = _serve(database, limits=ServiceLimits(requests_per_minute=5))
    try:
        key = server.user("dave", opinions=None)  # the admin's 1 request
        codes = [server.http.get("/v1/users/dave/export", headers=server.as_(key)).status_code
                 for _ in range(7)]
        assert codes == [200] * 5 + [429] * 2
        r = server.http.get("/v1/users/dave/export", headers=server.as_(key))
        assert _error(r)["type"] == "rate_limit_error"
        # Another key has its own budget.
        assert server.http.get("/v1/users/dave/export", headers=ADMIN_H).status_code == 200
    finally:
        server.app.state.service.close()
        cm.__exit__(None, None, None)


def _canary_hits(database: str, folders: list[Path], canary: str) -> list[str]:
    """Every file under ``folders`` and every stored row that contains ``canary``."""
    hits = []
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                path = Path(root) / name
                if canary.encode() in path.read_bytes():
                    hits.append(str(path))
    engine = sa.create_engine(database)
    with engine.connect() as c:
        for table in Base.metadata.sorted_tables:
            for row in c.execute(table.select()):
                if canary in repr(tuple(row)):
                    hits.append(f"{table.name}: {row}")
    engine.dispose()
    return hits


def test_fit_chat_export_then_delete_leaves_nothing(server, database, tmp_path):
    canary = f"{CANARY}{uuid.uuid4().hex[:6]}"
    opinions = [dict(OPINIONS[0], question=f"Is {canary} a good bus route?")] + OPINIONS[1:]
    key = server.user("erin", opinions=opinions)
    h, http = server.as_(key), server.http
    assert http.post("/v1/users/erin/pairs", headers=h, json={"pairs": [
        {"prompt": f"Plan a {canary} trip", "chosen": "By bus", "rejected": "By car"}]}
    ).json()["pairs"] == 1
    # quick: a pool of several prompts, so RoP embeds the chat query to pick one
    r = http.post("/v1/users/erin/fit", json={"method": "fermi", "preset": "quick"}, headers=h)
    assert r.status_code == 202 and r.json()["status"] == "queued"
    job = server.wait(r.json()["job_id"], key)
    assert job["status"] == "done" and job["progress"] == 1.0, job
    assert job["summary"]["prompts"] >= 1
    stored = http.get("/v1/users/erin", headers=h).json()
    assert stored["method"] == "fermi" and PROMPT in stored["prompts"][0]["prompt"]
    chat = http.post("/v1/chat/completions", headers=h, json={
        "model": "personalign", "messages": [{"role": "user", "content": f"Ride {canary}?"}]})
    assert chat.status_code == 200, chat.text
    assert PROMPT in chat.json()["personalization"]["system_prompt"]
    export = http.get("/v1/users/erin/export", headers=h).json()
    assert canary in export["opinions"][0]["question"] and export["pairs"][0]["chosen"] == \
        "By bus"
    assert export["jobs"][0]["job_id"] == job["job_id"]
    assert export["personalization"]["saved"]["state"]
    folders = [tmp_path, settings.home()]
    assert _canary_hits(database, folders, canary)  # the search finds it while it is there
    embedder = server.app.state.fakes[2]
    held = [t for t in embedder.memo if canary in t]
    assert held  # the chat's retrieval embedded the user's text: deletion has work to do

    r = http.delete("/v1/users/erin", headers=h)
    assert r.status_code == 200
    removed = r.json()["removed"]
    assert removed["users"] == 1 and removed["opinions"] == len(OPINIONS)
    assert removed["preference_pairs"] == 1 and removed["personalizations"] == 1
    assert removed["jobs"] == 1 and removed["api_keys"] == 1
    assert _canary_hits(database, folders, canary) == []
    assert not [t for t in embedder.memo if canary in t]
    assert removed["embedding_cache_entries"] >= len(held)
    assert http.get(f"/v1/jobs/{job['job_id']}", headers=ADMIN_H).status_code == 404
    assert http.get("/v1/users/erin/export", headers=h).status_code == 401  # key gone too
    assert http.get("/v1/users/erin/export", headers=ADMIN_H).status_code == 404
    engine = sa.create_engine(database)
    with engine.connect() as c:
        log = c.execute(sa.text("SELECT removed FROM deletion_log")).all()
    engine.dispose()
    assert len(log) == 1 and "erin" not in str(log)


def test_delete_during_a_running_fit_is_final(database, tmp_path):
    server, cm = _serve(database, delay=0.3)  # each optimizer call takes 0.3 s per sample
    try:
        canary = f"{CANARY}{uuid.uuid4().hex[:6]}"
        key = server.user("frank", opinions=[dict(OPINIONS[0], question=f"{canary}?")]
                          + OPINIONS[1:])
        job = server.http.post("/v1/users/frank/fit", json={"preset": "quick"},
                               headers=server.as_(key)).json()
        running = server.wait(job["job_id"], until=("running",))
        assert running["stage"] == "loading models" or running["stage"].startswith("fitting")
        optimizer = server.app.state.fakes[1]
        deadline = time.time() + 30
        while not optimizer.prompts_seen:  # the fit is in its first optimizer call
            assert time.time() < deadline
            time.sleep(0.02)
        removed = server.http.delete("/v1/users/frank", headers=ADMIN_H).json()["removed"]
        calls_at_delete = len(optimizer.prompts_seen)
        assert removed["cancelled_jobs"] == 1 and removed["jobs"] == 1
        server.idle()  # the fit has stopped: it must not have written back
        # Stopped at its next model call: the second round (quick: 2) never asked.
        assert len(optimizer.prompts_seen) == calls_at_delete == 1
        assert server.http.get("/v1/users/frank", headers=ADMIN_H).status_code == 404
        assert server.http.get(f"/v1/jobs/{job['job_id']}", headers=ADMIN_H).status_code == 404
        assert _canary_hits(database, [tmp_path, settings.home()], canary) == []
        # The id is free again, and a new user of that name starts empty.
        server.user("frank", opinions=None)
        assert server.http.get("/v1/users/frank/export", headers=ADMIN_H).json()[
            "personalization"] is None
    finally:
        server.app.state.service.close()
        cm.__exit__(None, None, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(database: str, port: int, delay: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    proc = subprocess.Popen([sys.executable, "-m", "tests.service_helpers", "--database",
                             database, "--port", str(port), "--delay", str(delay)], cwd=REPO,
                            env=env, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server process did not start")


def test_a_job_survives_a_restart(database):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(database, port, delay=0.4)
    http = httpx.Client(timeout=30)
    try:
        r = http.post(f"{url}/v1/users", json={"user_id": "gina"}, headers=ADMIN_H)
        h = {"Authorization": f"Bearer {r.json()['api_key']}"}
        http.post(f"{url}/v1/users/gina/opinions", json={"opinions": OPINIONS}, headers=h)
        job_id = http.post(f"{url}/v1/users/gina/fit", json={"preset": "tiny"},
                            headers=h).json()["job_id"]
        deadline = time.time() + 30
        while http.get(f"{url}/v1/jobs/{job_id}", headers=h).json()["status"] != "running":
            assert time.time() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
        proc.wait()
        proc = _start(database, port, delay=0.0)
        deadline = time.time() + 60
        while (job := http.get(f"{url}/v1/jobs/{job_id}", headers=h).json())["status"] \
                not in ("done", "failed"):
            assert time.time() < deadline, job
            time.sleep(0.1)
        assert job["status"] == "done", job
        assert job["attempts"] == 2 and job["summary"]["resumed"] is True
        assert http.get(f"{url}/v1/users/gina", headers=h).json()["method"] == "fermi"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_job_interrupted_too_often_fails_with_a_reason(database):
    from personalign.service.store import Store
    from personalign.service.store.models import JobRow, UserRow

    store = Store(database)
    with store.session() as s:
        s.add(UserRow(id="hal", profile={}))
        s.flush()
        s.add(JobRow(id="j1", user_id="hal", method="fermi", preset="tiny", status="running",
                     attempts=2, summary={}))
    store.close()
    server, cm = _serve(database)
    try:
        job = server.http.get("/v1/jobs/j1", headers=ADMIN_H).json()
        assert job["status"] == "failed" and "restart 2 times" in job["error"]
    finally:
        server.app.state.service.close()
        cm.__exit__(None, None, None)


def test_fspo_is_served_through_the_method_protocol(server):
    """FSPO (shots) behind the same endpoints; the fit itself needs no model."""
    key = server.user("ivy", opinions=None)
    h = server.as_(key)
    server.http.post("/v1/users/ivy/pairs", headers=h, json={"pairs": [
        {"prompt": f"Question {i}?", "chosen": f"Good {i}", "rejected": f"Bad {i}"}
        for i in range(3)]})
    job = server.http.post("/v1/users/ivy/fit", json={"method": "fspo"}, headers=h).json()
    job = server.wait(job["job_id"], key)
    assert job["status"] == "done" and job["summary"]["shots"] == 3, job
    stored = server.http.get("/v1/users/ivy", headers=h).json()
    assert stored["method"] == "fspo" and stored["shots"] == 3
    export = server.http.get("/v1/users/ivy/export", headers=h).json()
    shots = export["personalization"]["saved"]["state"]["shots"]
    assert sorted(s[0] for s in shots) == [f"Question {i}?" for i in range(3)]
