"""A method added from outside: one class and one registry line, and the benchmark, the cost
projection and the service (fit, chat, delete) run it with no other change (issue 25)."""

import json
from collections import Counter
from typing import Any, Sequence

import pytest
from fastapi.testclient import TestClient

from personalign.bench.projection import project_run
from personalign.bench.runner import BenchConfig, run_benchmark, select_users
from personalign.methods import _REGISTERED, MethodSettings, parse_specs, register
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.errors import ConfigError
from personalign.runtime.personalizer import Answer, Personalizer, SharedModels, check_questions
from personalign.runtime.prompts import letter

from tests.fermi.conftest import BagEmbedder, keyword_task_llm, make_user, scripted_optimizer
from tests.service_helpers import ADMIN, OPINIONS, make_app


class Habit(Personalizer):
    """A toy: answers every question with the option position the user picked most often."""

    name, label = "toy-habit", "Toy habit"
    depends_on = ()
    min_opinions = 3

    def __init__(self, models, fallback: int = 0):
        super().__init__(models)
        self.fallback = fallback
        self.position = fallback

    def fit(self, user: User) -> "Habit":
        user = self.check_data(user)
        self.position = Counter(o.answer for o in user.opinions).most_common(1)[0][0]
        self.user_id = user.user_id
        return self

    def predict(self, questions: Sequence[Opinion]) -> list[Answer]:
        self._require_fitted()
        out = []
        for q in check_questions(questions):
            pick = min(self.position, len(q.options) - 1)
            out.append(Answer(pick, [0.0 if i == pick else -30.0 for i in range(len(q.options))]))
        return out

    def system_prompt(self, query: str) -> str | None:
        return f"This person usually picks option {letter(self.position)}."

    def state(self) -> dict[str, Any]:
        return {"position": self.position}

    def set_state(self, state: dict[str, Any]) -> None:
        self.position = state["position"]


@pytest.fixture()
def habit():
    register(Habit)
    yield Habit
    _REGISTERED.pop(Habit.name)


def test_registry_refuses_what_is_not_a_method():
    with pytest.raises(ConfigError, match="taken"):
        register(type("Fake", (Habit,), {"name": "fermi"}))
    with pytest.raises(ConfigError, match="Personalizer"):
        register(dict)


def test_a_registered_method_runs_through_benchmark_and_projection(tmp_path, habit):
    users = [make_user(f"u{i}", 40) for i in range(2)]
    cfg = BenchConfig(data="synthetic", out=str(tmp_path / "run"), users=2,
                      methods=parse_specs("vanilla,toy-habit"),
                      settings=MethodSettings(preset="tiny"))
    models = SharedModels.of(keyword_task_llm(), scripted_optimizer(), BagEmbedder())
    result = run_benchmark(cfg, users, models=models, progress=False)
    rows = [json.loads(x) for x in (result.out / "results.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r["method"] == "toy-habit"]
    assert len(mine) == 2 * 20
    splits, _ = select_users(users, cfg)
    for split in splits:  # fit on the user's training opinions alone
        habit = Counter(o.answer for o in split.train.opinions).most_common(1)[0][0]
        assert {r["choice"] for r in mine if r["user_id"] == split.user_id} == {habit}
    assert "Toy habit" in result.summary["per_method_md"]
    projected = project_run(["toy-habit"], splits, cfg.settings)
    assert projected["toy-habit"]["toy-habit/predict"]["calls_per_user"] == 20
    # its parameters come back from its constructor
    fitted = Habit(models, fallback=2).fit(users[0])
    assert fitted.params() == {"fallback": 2}


def test_a_registered_method_is_served(tmp_path, habit):
    app = make_app(f"sqlite:///{tmp_path / 'service.db'}", methods=("fermi", "toy-habit"))
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with TestClient(app) as http:
        key = http.post("/v1/users", json={"user_id": "ann"}, headers=admin).json()["api_key"]
        mine = {"Authorization": f"Bearer {key}"}
        # its minimum data is the method's own rule, checked before a job is queued
        r = http.post("/v1/users/ann/fit", json={"method": "toy-habit"}, headers=mine)
        assert r.status_code == 422 and "at least 3" in r.json()["error"]["message"], r.text
        assert http.post("/v1/users/ann/opinions", json={"opinions": OPINIONS},
                         headers=mine).status_code == 200
        job = http.post("/v1/users/ann/fit", json={"method": "toy-habit"}, headers=mine).json()
        assert app.state.service._queue.wait_idle(timeout=60)
        done = http.get(f"/v1/jobs/{job['job_id']}", headers=mine).json()
        assert done["status"] == "done", done
        assert http.get("/v1/users/ann", headers=mine).json() == {"user_id": "ann",
                                                                  "method": "toy-habit"}
        chat = http.post("/v1/chat/completions", headers=mine, json={
            "model": "personalign", "messages": [{"role": "user", "content": "Bikes?"}]})
        assert chat.status_code == 200, chat.text
        applied = chat.json()["personalization"]
        assert applied["method"] == "toy-habit"
        assert applied["system_prompt"] == "This person usually picks option A."
        gone = http.delete("/v1/users/ann", headers=mine).json()
        assert gone["deleted"] and gone["removed"]["personalizations"] == 1
        assert http.get("/v1/users/ann", headers=admin).status_code == 404
        # a method a server does not serve is refused by name
        r = http.post("/v1/users", json={"user_id": "bob"}, headers=admin)
        r = http.post("/v1/users/bob/fit", json={"method": "vanilla"}, headers=admin)
        assert r.status_code == 422 and "toy-habit" in r.json()["error"]["message"]


def test_a_service_refuses_to_serve_an_unknown_method(tmp_path):
    with pytest.raises(ConfigError, match="unknown method"):
        make_app(f"sqlite:///{tmp_path / 'service.db'}", methods=("fermi", "nope"))
