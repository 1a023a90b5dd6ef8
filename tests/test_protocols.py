"""globalopinionqa-individual: substantive options, renormalized shares, the W1 metric, and
one run through the benchmark with the same report as opinionqa-individual."""

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personalign.bench.protocols import (
    GLOBALOPINIONQA, answer_distribution, distribution_similarity, is_substantive,
    load_globalopinionqa_users, substantive,
)
from personalign.bench.runner import BenchConfig, run_benchmark
from personalign.methods import MethodSettings
from personalign.runtime.data.records import Opinion
from personalign.runtime.personalizer import SharedModels

from tests.fermi.conftest import BagEmbedder, keyword_task_llm, scripted_optimizer

GOQA_DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "globalopinionqa" \
    / "dev.csv"


@pytest.mark.parametrize("text", ["Don't know", "DK/Refused", "No answer", "Refused",
                                  "Missing; Not available", "Other missing; Multiple answers "
                                  "Mail (EVS)", "No answer/refused", " don't know "])
def test_non_substantive_options(text):
    assert not is_substantive(text)


@pytest.mark.parametrize("text", ["Agree", "Missing out on life", "No", "Knowledge is power"])
def test_substantive_options(text):
    # an answer that merely starts with "Missing" is kept: only WVS's "Missing; ..." codes go
    assert is_substantive(text)


def test_substantive_renormalizes_and_recomputes_the_majority():
    op = Opinion("Q?", ("Yes", "No", "Don't know"), answer=2, qid="goqa_2",
                 distribution=(0.2, 0.3, 0.5))
    kept = substantive(op)
    assert kept.options == ("Yes", "No")
    assert kept.distribution == pytest.approx((0.4, 0.6))
    assert kept.answer == 1 and kept.qid == "goqa_2"


def test_substantive_drops_questions_without_two_options_or_any_share():
    assert substantive(Opinion("Q?", ("Yes", "Refused"), 0, distribution=(1.0, 0.0))) is None
    assert substantive(Opinion("Q?", ("A", "B", "No answer"), 2,
                               distribution=(0.0, 0.0, 1.0))) is None


def test_distribution_similarity_is_one_minus_normalized_w1():
    assert distribution_similarity([1, 0, 0], [0, 0, 1]) == pytest.approx(0.0)
    assert distribution_similarity([0.2, 0.8], [0.2, 0.8]) == pytest.approx(1.0)
    # half the mass moved by one position of three: W1 = 0.5, max 2
    assert distribution_similarity([0.5, 0.5, 0], [0, 1, 0]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        distribution_similarity([1.0], [1.0])


def test_answer_distribution():
    assert answer_distribution(None, [0.0, 0.0], 2) == pytest.approx([0.5, 0.5])
    assert answer_distribution(1, [], 3) == [0.0, 1.0, 0.0]


def _csv(tmp_path, n_questions=30, countries=("Aland", "Borduria")) -> Path:
    path = tmp_path / "goqa.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "selections", "options", "source"])
        for i in range(n_questions):
            shares = {c: [0.1 + 0.01 * j, 0.6 - 0.01 * j, 0.3] for j, c in enumerate(countries)}
            if i % 2:  # every other question: the "Don't know" share is the largest
                shares = {c: [0.2, 0.1, 0.7] for c in countries}
            writer.writerow([f"Question {i} ok?", f"defaultdict(<class 'list'>, {shares!r})",
                             repr(["yes A", "no B", "Don't know"]), "GAS"])
    return path


def test_loader_keeps_only_substantive_options(tmp_path):
    users = load_globalopinionqa_users(_csv(tmp_path))
    assert [u.user_id for u in users] == ["Aland", "Borduria"]
    for u in users:
        assert len(u.opinions) == 30
        assert all(o.options == ("yes A", "no B") for o in u.opinions)
        assert all(sum(o.distribution) == pytest.approx(1.0) for o in u.opinions)
    # "Don't know" was the raw majority of the odd questions: the answer is now "yes A"
    assert users[0].opinions[1].answer == 0 and users[0].opinions[0].answer == 1


def test_benchmark_globalopinionqa_report(tmp_path):
    data = _csv(tmp_path)
    cfg = BenchConfig(data=str(data), out=str(tmp_path / "run"), protocol=GLOBALOPINIONQA,
                      users=None, methods=["random", "vanilla", "fermi"],
                      settings=MethodSettings(preset="tiny"), min_opinions=25, n_test=10)
    models = SharedModels.of(keyword_task_llm(), scripted_optimizer(), BagEmbedder())
    res = run_benchmark(cfg, models=models, progress=False)
    rows = [json.loads(x) for x in (res.out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 * 10
    assert {r["protocol"] for r in rows} == {GLOBALOPINIONQA}
    assert all(0.0 <= r["distribution_similarity"] <= 1.0 for r in rows)
    rand = [r["distribution_similarity"] for r in rows if r["method"] == "random"]
    # uniform over two options vs. the renormalized shares: 1 - |p_A - 0.5|
    assert rand[0] != pytest.approx(1.0)
    per_method = {r["method"]: r for r in res.summary["per_method"]}
    assert 0.0 < per_method["vanilla"]["distribution_similarity"] <= 1.0
    assert "1 - W1/(n-1)" in (res.out / "README.md").read_text()
    assert json.loads((res.out / "config.json").read_text())["protocol"] == GLOBALOPINIONQA


def test_cli_has_the_same_options_for_both_protocols():
    from personalign.cli.bench_cmd import app

    runner = CliRunner()
    helps = [runner.invoke(app, [name, "--help"], terminal_width=200).output
             for name in ("opinionqa", "globalopinionqa")]
    options = [{w for w in h.split() if w.startswith("--")} for h in helps]
    assert options[0] == options[1] and "--preset" in options[0]
    assert "--protocol" not in options[0]


@pytest.mark.skipif(not GOQA_DEV.exists(), reason="shared GlobalOpinionQA data not found")
def test_dev_countries_are_substantive():
    users = load_globalopinionqa_users(GOQA_DEV)
    assert sum(len(u.opinions) >= 25 for u in users) >= 20
    for u in users:
        for o in u.opinions:
            assert all(is_substantive(x) for x in o.options)
            assert o.answer == max(range(len(o.options)), key=lambda i: o.distribution[i])
