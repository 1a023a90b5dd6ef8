"""Privacy claims checked on the real objects, not on what the API shows.

- "Keys are stored as SHA-256 hashes": after users are created through the HTTP app, the store
  itself is read (the SQLite database file's bytes, journal included; on PostgreSQL every
  table's rows as text) and holds each key's SHA-256 hex digest but never the key.
- "DELETE forgets the user's texts in the embedding cache": the real MiniLM ``Embedder``, its
  own memo, emptied of exactly the user's texts (and the embedder keeps nothing on disk).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from personalign.runtime import settings
from tests.service_helpers import ADMIN, CANARY, OPINIONS, each_database, make_app

ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """A fresh, empty database URL of each kind (as ``test_service.py`` makes them)."""
    yield from each_database(request.param, tmp_path)


def _stored_text(database: str) -> bytes:
    """What the store holds: the SQLite file and its side files byte for byte, or on
    PostgreSQL every row of every table in the database's schemas, as text."""
    if database.startswith("sqlite"):
        folder = Path(database.removeprefix("sqlite:///")).parent
        files = sorted(folder.iterdir())
        assert any(f.name == "service.db" for f in files), files
        return b"".join(f.read_bytes() for f in files)
    engine = sa.create_engine(database)
    chunks = []
    with engine.connect() as c:
        tables = c.execute(sa.text(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type ="
            " 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')")).all()
        assert any(name == "api_keys" for _, name in tables), tables
        for schema, name in tables:
            rows = c.execute(sa.text(f'SELECT t::text FROM "{schema}"."{name}" AS t')).scalars()
            chunks += [f"{name}: {row}".encode() for row in rows]
    engine.dispose()
    return b"\n".join(chunks)


def test_the_store_keeps_key_hashes_never_keys(database):
    app = make_app(database)
    with TestClient(app) as http:
        keys = []
        for user in ("alice", "bob"):
            r = http.post("/v1/users", json={"user_id": user}, headers=ADMIN_H)
            assert r.status_code == 201, r.text
            keys.append(r.json()["api_key"])
        # The keys work (so they are what the store must recognise by their hash).
        r = http.post("/v1/users/alice/opinions", json={"opinions": OPINIONS},
                      headers={"Authorization": f"Bearer {keys[0]}"})
        assert r.status_code == 200, r.text
        assert http.get("/v1/users/bob/export",
                        headers={"Authorization": f"Bearer {keys[1]}"}).status_code == 200
    app.state.service.close()
    stored = _stored_text(database)
    # The scan reads what was stored (an opinion's text is there).
    assert OPINIONS[0]["question"].encode() in stored, "the scan found no stored text"
    for key in (ADMIN, *keys):
        # Not the key, nor its secret part without its listed head (at most its first 10
        # characters are kept, to tell keys apart)...
        assert key.encode() not in stored, f"the key {key[:6]}... is in the store"
        assert key[10:].encode() not in stored, f"the key {key[:6]}...'s tail is in the store"
        # ...but its SHA-256, by which the store recognises it.
        digest = hashlib.sha256(key.encode()).hexdigest()
        assert digest.encode() in stored, f"the hash of {key[:6]}... is not in the store"


def test_the_real_embedder_forgets_exactly_the_matching_texts(embedder, monkeypatch):
    canary = f"{CANARY}{uuid.uuid4().hex[:6]}"
    mine = [f"Is {canary} a good bus route?", f"Plan a {canary} trip"]
    others = ["Should the city build more bike lanes?", "Do you drive to work?"]
    before = embedder.embed(mine + others)
    assert all(t in embedder._memo for t in mine + others)

    assert embedder.forget(lambda t: canary in t) == 2
    assert not [t for t in embedder._memo if canary in t]
    assert all(t in embedder._memo for t in others)
    # Nothing of the texts was written to disk (the embedder's memo is its only cache).
    home = settings.home()
    for root, _, files in os.walk(home):  # the links to the prepared models are not followed
        for name in files:
            assert canary.encode() not in (Path(root) / name).read_bytes(), name

    # Asked again, the model encodes the forgotten texts afresh (and only those), to the
    # same vectors.
    model = embedder._load()
    encoded: list[list[str]] = []
    real_encode = model.encode
    monkeypatch.setattr(model, "encode", lambda texts, **kw: (encoded.append(list(texts)),
                                                              real_encode(texts, **kw))[1])
    again = embedder.embed(mine + others)
    assert encoded == [mine]
    assert again == pytest.approx(before, abs=1e-5)


def test_deleting_a_user_empties_the_real_embedders_memo_of_their_texts(embedder, tmp_path):
    """The service's deletion (``DELETE /v1/users/ID``) with the real embedder behind it."""
    from personalign.service.app import ServiceConfig, create_app
    from tests.service_helpers import fake_models

    task, optimizer, _ = fake_models()
    app = create_app(ServiceConfig(database=f"sqlite:///{tmp_path / 'service.db'}",
                                   admin_key=ADMIN),
                     task_llm=task, optimizer_llm=optimizer, embedder=embedder)
    canary = f"{CANARY}{uuid.uuid4().hex[:6]}"
    opinions = [dict(OPINIONS[0], question=f"Is {canary} a good bus route?")] + OPINIONS[1:]
    keep = f"A text of nobody's {uuid.uuid4().hex[:6]}"
    with TestClient(app) as http:
        r = http.post("/v1/users", json={"user_id": "erin"}, headers=ADMIN_H)
        key = r.json()["api_key"]
        h = {"Authorization": f"Bearer {key}"}
        assert http.post("/v1/users/erin/opinions", json={"opinions": opinions},
                         headers=h).status_code == 200
        # What retrieval over this user's opinions leaves in the embedder's memo.
        embedder.embed([o["question"] for o in opinions] + [keep])
        assert [t for t in embedder._memo if canary in t]
        r = http.delete("/v1/users/erin", headers=h)
        assert r.status_code == 200, r.text
        removed = r.json()["removed"]
    app.state.service.close()
    assert not [t for t in embedder._memo if canary in t]
    assert keep in embedder._memo
    # Every question of the user was the user's text: all of them went.
    assert not [o["question"] for o in opinions if o["question"] in embedder._memo]
    assert removed["embedding_cache_entries"] >= len(opinions)
