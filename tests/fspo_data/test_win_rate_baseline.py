"""The win rate FSPO reports: every model against its own base model without shots, over
every test record (not the first model, not the first 20 records), with the judge's order
consistency beside it."""

import json

import pytest
from typer.testing import CliRunner

import personalign.bench.preferences as prefs
from personalign.cli.fspo_data_cmd import app
from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.fake import FakeLLM

from tests.fspo_data.test_cli import _users_file


def test_win_rate_against_each_models_own_base_over_all_records(tmp_path, monkeypatch):
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

        def generate(prompts, params, **kw):
            asked.setdefault(spec, []).extend(prompts)
            return original(prompts, params, **kw)

        llm.generate = generate
        return llm

    monkeypatch.setattr(prefs, "completion_llm", fake_llm)
    monkeypatch.setattr(prefs, "model_identity", lambda spec: spec)
    monkeypatch.setattr(prefs, "has_reference", lambda spec: False)
    # "base" and "small-run" were trained from model-s, "big-run" from model-b
    bases = {"base": "model-s", "small-run": "model-s", "big-run": "model-b"}
    monkeypatch.setattr(prefs, "base_model", lambda spec: bases.get(spec, spec))
    monkeypatch.setattr(prefs, "model_files", lambda spec: (bases.get(spec, spec),
                                                            [spec] if spec in bases else []))
    models = [prefs.EpisodeModel("base", "base"), prefs.EpisodeModel("small", "small-run"),
              prefs.EpisodeModel("big", "big-run")]
    # the judge prefers whichever response was written with the shots, in either position
    judge = FakeLLM(model_id="judge", chooser=lambda item: 0 if "Response A:\nwith shots"
                    in item.prompt else 1)
    summary = prefs.evaluate_episodes(models, records, tmp_path / "report",
                                      protocol="opinionqa-preferences", judge=judge,
                                      gen_max_tokens=4, progress=False)
    readme = (tmp_path / "report" / "README.md").read_text()
    table = readme.split("## Win rate")[1].split("\n## ")[0]
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
             for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    # every model against its own base without shots, n = every record
    assert lines["base"][1] == lines["small"][1] == "base-no-shots (model-s)"
    assert lines["big"][1] == "base-no-shots (model-b)"
    head = lines["Model"]
    for name in ("base", "small", "big"):
        row = dict(zip(head, lines[name]))
        assert row["n"] == str(len(records)) and row["judge"] == "judge"
        assert row["calibration"] == "calibrated"  # the default
        # the judge sides with the shots in both orders: every item won, none a tie
        assert row["Win rate"] == "1.000" and row["ties"] == "0"
        assert row["order-consistent, raw"] == row["order-consistent, as judged"] == "1.00"
    # each base generated once, without shots, with the same token budget as its models
    for base in ("model-s", "model-b"):
        assert len(asked[base]) == len(records)
        assert all("Example" not in p for p in asked[base])
    assert all("Example" in p for p in asked["base"])
    assert {m["method"] for m in summary["per_method"]} == {"base", "small", "big"}
    # the judge's calls are in the report's usage, by model judged
    judged = judge.usage.as_dict()
    assert set(judged["by_phase"]) == {"base/judge", "small/judge", "big/judge"}

    def reported_judge_usage():
        usage = json.loads((tmp_path / "report" / "usage.json").read_text())
        return usage["total"]["judge"]
    assert reported_judge_usage() == judged and judged["calls"] > 0
    assert "| judge | small/judge |" in readme

    # A rerun reuses the win rates; a changed judge prompt is a changed input, refused.
    def judged_items(**patch):
        for name, value in patch.items():
            monkeypatch.setattr(prefs, name, value)
        counting = FakeLLM(model_id="judge", chooser=judge.chooser)
        prefs.evaluate_episodes(models, records, tmp_path / "report",
                                protocol="opinionqa-preferences", judge=counting,
                                gen_max_tokens=4, progress=False)
        return counting.usage.calls

    assert judged_items() == 0
    assert reported_judge_usage() == judged  # what the saved units cost when they ran
    with pytest.raises(ConfigError, match="win-rate was computed from other inputs"):
        judged_items(JUDGE_PROMPT="Which fits? {question} {a} {b}")


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


def test_each_model_is_compared_with_the_model_it_was_trained_from(tmp_path):
    from personalign.fspo.train.model import MANIFEST, base_model, model_files
    from personalign.runtime.errors import ModelError
    from personalign.runtime.models import FAST_GENERATOR

    def folder(name: str, manifest: dict):
        (tmp_path / name).mkdir()
        (tmp_path / name / MANIFEST).write_text(json.dumps(manifest))
        return str(tmp_path / name)

    lora = folder("lora", {"finetune": "lora", "base": "qwen2.5-coder-0.5b-instruct",
                           "sft_adapter": "sft_adapter", "adapter": "adapter"})
    full = folder("full", {"finetune": "full", "model": "model", "base": "gemma3-270m"})
    old = folder("old", {"finetune": "full", "model": "model", "reference_model": "gemma3-270m"})
    bare = folder("bare", {"finetune": "full", "model": "model"})
    assert base_model(lora) == "qwen2.5-coder-0.5b-instruct"
    assert base_model(full) == base_model(old) == "gemma3-270m"
    assert base_model("base") == FAST_GENERATOR
    assert base_model("gemma3-270m") == "gemma3-270m"  # a base is its own base
    assert model_files("gemma3-270m") == ("gemma3-270m", [])
    with pytest.raises(ModelError, match="names no base model"):
        base_model(bare)
    baseline = prefs.baseline_of(prefs.EpisodeModel("fspo", lora))
    assert baseline == prefs.EpisodeModel("base-no-shots (qwen2.5-coder-0.5b-instruct)",
                                          "qwen2.5-coder-0.5b-instruct", "zero-shot")


def test_a_training_run_folder_is_not_taken_for_a_plain_model(tmp_path):
    """A run folder holds the run's config.json beside final/: it names its final model, not
    a base model folder (a plain model folder has weights beside its config)."""
    from personalign.fspo.train.model import MANIFEST, model_files, read_manifest

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "smollm2-135m-instruct"}))
    (run / "final" / MANIFEST).write_text(json.dumps(
        {"finetune": "lora", "base": "smollm2-135m-instruct", "sft_adapter": "sft_adapter",
         "adapter": "adapter", "rejected_rule": "uniform-other"}))
    assert model_files(str(run)) == ("smollm2-135m-instruct",
                                     [str(run / "final" / "sft_adapter"),
                                      str(run / "final" / "adapter")])
    assert read_manifest(str(run))["rejected_rule"] == "uniform-other"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    (plain / "model.safetensors").write_bytes(b"")
    assert model_files(str(plain)) == (str(plain), []) and read_manifest(str(plain)) == {}
