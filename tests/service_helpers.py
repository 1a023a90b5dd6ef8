"""Shared pieces of the service tests: fake models, a database per test (SQLite, and
PostgreSQL when ``PERSONALIGN_TEST_DATABASE_URL`` names a server), and a server process.

Run as a module it serves the fake-model service on loopback (the restart test kills it)::

    python -m tests.service_helpers --database URL --port P --admin-key K [--delay S]
"""

from __future__ import annotations

import argparse
import math
import os
import time
import uuid

import numpy as np

from personalign.runtime.llm.fake import FakeLLM
from tests.fermi.conftest import BagEmbedder as FermiBagEmbedder

PG_ENV = "PERSONALIGN_TEST_DATABASE_URL"
ADMIN = "admin-test-key"
CANARY = "zebracanary7731"

OPINIONS = [
    {"question": "Should the city build more bike lanes?", "options": ["Yes", "No"], "answer": 0},
    {"question": "Do you drive to work?", "options": ["Yes", "No"], "answer": 1},
    {"question": "How often do you use public transit?",
     "options": ["Daily", "Weekly", "Rarely", "Never"], "answer": 0},
    {"question": "Should gasoline taxes rise to fund transit?", "options": ["Yes", "No"],
     "answer": 0},
    {"question": "Is climate change a serious problem?", "options": ["Yes", "No"], "answer": 0},
]
PROMPT = "Answer as a transit-loving city person."


class BagEmbedder(FermiBagEmbedder):
    """The Fermi tests' bag-of-words embedder with a memo of what it embedded, which the
    service's deletion must empty (``forget``)."""

    model_name = "bag-of-words"

    def __init__(self):
        self.memo: dict[str, np.ndarray] = {}

    def embed(self, texts):
        out = super().embed(texts)
        self.memo.update(zip(texts, out))
        return out

    def forget(self, matches) -> int:
        gone = [t for t in self.memo if matches(t)]
        for t in gone:
            del self.memo[t]
        return len(gone)


class LogprobLLM(FakeLLM):
    """A fake task model with the next-token log-prob hook (for ``logprobs``)."""

    def next_token_logprobs(self, prompt, top_k: int = 20):
        top = [("Sure", math.log(0.6)), ("Yes", math.log(0.3)), ("No", math.log(0.1))]
        return top[:top_k]


def fake_models(delay: float = 0.0):
    """(task, optimizer, embedder): the optimizer writes a transit prompt, taking ``delay``
    seconds per call (a fit that runs long enough to be interrupted)."""
    def write(text: str, i: int) -> str:
        if delay:
            time.sleep(delay)
        return f"[{PROMPT} ({i})]"

    def choose(item) -> int:
        # Under the written prompt the model answers as this transit user does (no car, yes
        # to the rest), otherwise "No" throughout: the rewrite outscores the initial prompt,
        # so it heads the pool and Retrieval-of-Prompt picks it.
        if PROMPT in item.prefix + item.prompt:
            return int("drive" in item.prompt.lower())
        return 1

    task = LogprobLLM(responder=lambda text, i: f"Sure. {text[-40:]}", chooser=choose,
                      model_id="fake-task")
    return task, FakeLLM(responder=write, model_id="fake-optimizer"), BagEmbedder()


def make_app(database: str, delay: float = 0.0, **config):
    from personalign.service.app import ServiceConfig, create_app

    task, optimizer, embedder = fake_models(delay)
    app = create_app(ServiceConfig(database=database, admin_key=ADMIN, **config),
                     task_llm=task, optimizer_llm=optimizer, embedder=embedder)
    app.state.fakes = (task, optimizer, embedder)
    return app


def each_database(kind: str, folder):
    """A fresh, empty database URL of ``kind`` (a generator, for the tests' ``database``
    fixtures): SQLite in ``folder``/store (the file and its journal only), or a new database
    on the PostgreSQL server of ``PERSONALIGN_TEST_DATABASE_URL``, dropped afterwards."""
    import pytest

    if kind == "sqlite":
        (folder / "store").mkdir()
        yield f"sqlite:///{folder / 'store' / 'service.db'}"
        return
    server = os.environ.get(PG_ENV)
    if not server:
        pytest.skip(f"{PG_ENV} is not set (.ci/postgres.sh starts a PostgreSQL server)")
    url, drop = fresh_postgres(server)
    yield url
    drop()


def fresh_postgres(server_url: str) -> tuple[str, callable]:
    """A new empty database on the server and a function that drops it."""
    import sqlalchemy as sa

    name = f"pa_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    os.environ.setdefault("PERSONALIGN_THREADS", "1")
    uvicorn.run(make_app(args.database, args.delay), host="127.0.0.1", port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
