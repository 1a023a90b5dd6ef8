"""The win rate FSPO reports: every model against the plain base model without shots, over
every test record (not the first model, not the first 20 records)."""

import json

from typer.testing import CliRunner

import personalign.bench.preferences as prefs
from personalign.cli.fspo_data_cmd import app
from personalign.runtime.llm.fake import FakeLLM

from tests.fspo_data.test_cli import _users_file


def test_win_rate_against_the_plain_base_model_over_all_records(tmp_path, monkeypatch):
    data = _users_file(tmp_path / "a.jsonl", "a", 6)
    out = tmp_path / "ep"
    result = CliRunner().invoke(app, ["opinionqa", "--data", str(data), "--out", str(out),
                                      "--shots", "2", "--passes", "1", "--test-fraction",
                                      "0.5"])
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "test.jsonl").read_text().splitlines()]
    assert len(records) > 20  # more than the old cap

    asked: dict[str, list[str]] = {}

    def fake_llm(models, spec, reference=False):
        llm = FakeLLM(responder=lambda text, i: "with shots" if "Example" in text
                      else "no shots", model_id=f"fake-{spec}")
        original = llm.generate

        def generate(prompts, params):
            asked.setdefault(spec, []).extend(prompts)
            return original(prompts, params)

        llm.generate = generate
        return llm

    monkeypatch.setattr(prefs, "completion_llm", fake_llm)
    monkeypatch.setattr(prefs, "model_identity", lambda spec: spec)
    monkeypatch.setattr(prefs, "has_reference", lambda spec: False)
    models = [prefs.EpisodeModel("base", "base"), prefs.EpisodeModel("other", "other-model")]
    judge = FakeLLM(model_id="judge")
    summary = prefs.evaluate_episodes(models, records, tmp_path / "report",
                                      protocol="opinionqa-preferences", judge=judge,
                                      gen_max_tokens=4, progress=False)
    readme = (tmp_path / "report" / "README.md").read_text()
    table = readme.split("## Win rate")[1].split("\n## ")[0]
    # both models, the base with shots included, against the base without shots, n = all
    assert table.count("| base-no-shots |") == 2
    assert f"| {len(records)} |" in table
    # the baseline's prompts carry no shots; the with-shots base's do
    plain = [p for p in asked["base"] if "Example" not in p]
    assert len(plain) == len(records) and len(asked["base"]) == 2 * len(records)
    assert {m["method"] for m in summary["per_method"]} == {"base", "other"}


def test_description_first_model_scores_options_after_its_own_description(monkeypatch):
    from personalign.fspo.data.episodes import build_eval_episodes
    from personalign.runtime.data.records import PreferencePair

    def pair(i, part):
        return PreferencePair("u", f"Question {i}?\nOptions: Yes | No", "Yes", "No",
                              user_description="A farmer.", rejected_description="A banker.",
                              meta={"part": part, "options": ["Yes", "No"], "answer": 0,
                                    "qid": f"Q{i}"})

    records = [e.to_dict() for e in build_eval_episodes(
        [pair(i, "shots") for i in range(3)], [pair(i, "test") for i in range(3, 5)],
        n_shots=2, variant="user-description")]
    seen = []

    def chooser(item):
        seen.append(item)
        return 0

    llm = FakeLLM(responder=lambda text, i: "The user farms.", chooser=chooser)
    scores = prefs._score(llm, records, "as-is", {}, "x")
    assert [len(s) for s in scores] == [4, 4]  # chosen, rejected, two options
    option_items = [it for it in seen if "## Preferred Response\nYes\n" in it.options]
    assert len(option_items) == 2
    assert all(it.prefix.endswith("## User Description\nThe user farms.\n")
               for it in option_items)
    # the chosen/rejected pair is scored after the bare prompt (it carries its description)
    pair_items = [it for it in seen if it.options[0].startswith("## User Description")]
    assert len(pair_items) == 2 and all("The user farms" not in it.prefix for it in pair_items)
    # asked zero-shot, no description is written first
    seen.clear()
    prefs._score(llm, records, "zero-shot", {}, "x")
    assert len(seen) == 2 and all("The user farms" not in it.prefix for it in seen)
