"""Episodes: windows, passes, truncation, user-disjoint splits, files."""

import json

from personalign.fspo.data.episodes import (
    build_episodes, build_eval_episodes, make_episode, split_pairs, split_users, write_records,
)
from personalign.runtime.data.preferences import load_preferences
from personalign.runtime.data.records import PreferencePair


def pairs_for(user, n, desc=None):
    return [PreferencePair(user, f"{user} q{i}?", f"{user} good {i}", f"{user} bad {i}",
                           user_description=desc, meta={"i": i}) for i in range(n)]


def test_windows_and_passes():
    pairs = pairs_for("u1", 11) + pairs_for("u2", 5) + pairs_for("tiny", 2)
    eps = build_episodes(pairs, n_shots=4, passes=3, seed=1)
    # u1: 11 rows -> 2 windows of 5 per pass; u2: 1 window; tiny: none.
    assert sum(e.user_id == "u1" for e in eps) == 6
    assert sum(e.user_id == "u2" for e in eps) == 3
    assert not any(e.user_id == "tiny" for e in eps)
    for e in eps:
        assert e.n_shots == 4
        assert e.prompt.count("# Example ") == 4
        # Shots and the query all come from the episode's own user, and are distinct rows.
        assert all(f"{e.user_id} q" in line for line in e.prompt.splitlines()
                   if line.endswith("?"))
        assert len(set(e.meta["rows"])) == 5
        assert e.chosen.startswith("## Preferred Response\n")
        assert e.rejected.startswith("## Preferred Response\n")
    # Fresh shuffles per pass; deterministic given the seed.
    u1 = [tuple(e.meta["rows"]) for e in eps if e.user_id == "u1"]
    assert len(set(u1)) > 2
    again = build_episodes(pairs, n_shots=4, passes=3, seed=1)
    assert [e.prompt for e in again] == [e.prompt for e in eps]
    assert [e.prompt for e in build_episodes(pairs, 4, 3, seed=2)] != [e.prompt for e in eps]


def test_default_passes_and_zero_shots():
    eps = build_episodes(pairs_for("u", 3), n_shots=0, seed=0)
    assert len(eps) == 2 * 3  # 2 (N + 1) passes, 3 windows each
    assert eps[0].prompt.startswith("# Task\nGenerate a response to the following question.")


def test_truncation_drops_oldest_shots_and_keeps_question():
    shots = pairs_for("u", 4)
    query = PreferencePair("u", "the final question " + "x" * 50 + "?", "c", "r")
    full = make_episode(shots, query)
    budget = len(full.prompt) - 10  # count_tokens = characters
    ep = make_episode(shots, query, max_prompt_tokens=budget, count_tokens=len)
    assert ep.n_shots == 3 and ep.meta["truncated_shots"] == 1
    assert "u q0?" not in ep.prompt  # the oldest shot went first
    assert "u q1?" in ep.prompt and ep.prompt.startswith("# Example 1\n## Question\nu q1?")
    assert ep.prompt.endswith(f"## Question\n{query.prompt}\n")
    # A budget below the question alone: no shots, question whole, flagged.
    tiny = make_episode(shots, query, max_prompt_tokens=5, count_tokens=len)
    assert tiny.n_shots == 0 and tiny.meta["over_budget"]
    assert tiny.prompt.endswith(f"## Question\n{query.prompt}\n")


def test_truncation_through_build_episodes():
    eps = build_episodes(pairs_for("u", 9), n_shots=8, passes=1, seed=0,
                         max_prompt_tokens=60, count_tokens=lambda t: len(t.split()))
    assert eps[0].n_shots < 8
    assert len(eps[0].prompt.split()) <= 60


def test_split_users_disjoint_and_stable():
    ids = [f"user{i}" for i in range(20)]
    train, test = split_users(ids, test_fraction=0.25, seed=3)
    assert len(test) == 5 and not set(train) & set(test) and set(train) | set(test) == set(ids)
    assert split_users(list(reversed(ids)), 0.25, seed=3) == (train, test)
    assert split_users(ids, 0.25, seed=4) != (train, test)
    assert split_users(["a", "b"], 0.1)[1]  # never an empty side with >= 2 users
    tr, te = split_users(ids, test_users=["user1"])
    assert te == ["user1"] and "user1" not in tr
    pairs = pairs_for("a", 3) + pairs_for("b", 3) + pairs_for("c", 3)
    p_train, p_test = split_pairs(pairs, 0.34, seed=0)
    assert not {p.user_id for p in p_train} & {p.user_id for p in p_test}
    assert len(p_train) + len(p_test) == 9


def test_eval_episodes_fixed_shots_per_user():
    shots = pairs_for("u", 20)
    queries = [PreferencePair("u", f"test q{i}?", "c", "r") for i in range(3)]
    eps = build_eval_episodes(shots, queries, n_shots=8, seed=0)
    assert len(eps) == 3 and all(e.n_shots == 8 for e in eps)
    heads = {e.prompt.split("# Task")[0] for e in eps}
    assert len(heads) == 1


def test_description_variant_records_and_files(tmp_path):
    pairs = [PreferencePair("u", f"q{i}?", "c", "r", user_description="D",
                            rejected_description="E") for i in range(3)]
    eps = build_episodes(pairs, n_shots=2, passes=1, variant="user-description")
    assert eps[0].chosen == "## User Description\nD\n## Preferred Response\nc\n"
    assert eps[0].rejected == "## User Description\nE\n## Preferred Response\nr\n"
    path = write_records(eps, tmp_path / "e.jsonl")
    row = json.loads(path.read_text().splitlines()[0])
    assert {"prompt", "chosen", "rejected", "user_id", "n_shots"} <= set(row)
    pq = write_records(eps, tmp_path / "e.parquet")
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(pq), split="train")
    assert ds[0]["n_shots"] == 2
    # Pairs written here load with the reader `personalign data validate` uses; parquet keeps
    # meta as a JSON string, which loads back as a dict.
    pairs[0] = PreferencePair("u", "q0?", "c", "r", meta={"qid": "q0", "options": ["a", "b"]})
    for suffix in (".jsonl", ".parquet"):
        write_records(pairs, tmp_path / f"p{suffix}")
        assert load_preferences(tmp_path / f"p{suffix}") == pairs
