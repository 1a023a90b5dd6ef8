"""Golden text of the optimizer meta-prompt (Fermi and OPRO layouts)."""

from personalign.fermi.memory import Candidate, Memory
from personalign.fermi.meta_prompt import build_meta_prompt
from personalign.runtime.data.records import Opinion

FERMI_GOLDEN = "Your task is to write a text that makes a language model answer survey questions the way a specific person would. The person can be described as follows: Age: 30-49, Sex: Female.\n\nFor each of 4 questions we know the person's answer and the model's answer when the text is placed before the question. The score of a text is the percentage of questions where the model's answer matches the person's answer; a higher score is better.\n\nBelow are previous texts with their scores and failure cases (questions the model answered differently from the person), in ascending order of score.\n\ntext: p-low\nscore: 25\nfailure cases: [2] and 2 additional newly mis-aligned examples\n\ntext: p-mid\nscore: 50\nfailure cases: [2] and 1 additional newly mis-aligned examples\n\ntext: p-high\nscore: 75\nfailure cases:\n(2) Question: Question 1?\n    The person's answer: (B) No\n    The model's answer: (A) Yes\n\nBelow are examples of how the text is used, where <INS> stands for the text, with the person's answers:\n\n<INS>\nQuestion: Demo question?\nAnswer choices: (A) Yes (B) No (C) Maybe\nAnswer: (C) Maybe\n\nWrite a new text that is different from the old ones and has a score as high as possible. Write the text in square brackets.\n"

OPRO_GOLDEN = "Your task is to write a text that makes a language model answer survey questions the way a specific person would. The person can be described as follows: Age: 30-49, Sex: Female.\n\nFor each of 4 questions we know the person's answer and the model's answer when the text is placed before the question. The score of a text is the percentage of questions where the model's answer matches the person's answer; a higher score is better.\n\nBelow are previous texts with their scores, in ascending order of score.\n\ntext: p-low\nscore: 25\n\ntext: p-mid\nscore: 50\n\ntext: p-high\nscore: 75\n\nBelow are examples of how the text is used, where <INS> stands for the text, with the person's answers:\n\n<INS>\nQuestion: Demo question?\nAnswer choices: (A) Yes (B) No (C) Maybe\nAnswer: (C) Maybe\n\nWrite a new text that is different from the old ones and has a score as high as possible. Write the text in square brackets.\n"


def _setup():
    qs = [Opinion(f"Question {i}?", ("Yes", "No"), i % 2) for i in range(4)]
    demo = [Opinion("Demo question?", ("Yes", "No", "Maybe"), 2)]
    m = Memory(3)
    m.add(Candidate("p-low", 0.25, (0, 1, 2), (1, 0, 1, 1)))
    m.add(Candidate("p-high", 0.75, (1,), (0, 0, 0, 1)))
    m.add(Candidate("p-mid", 0.5, (1, 3), (0, 0, 0, 0)))
    return qs, demo, m


def test_fermi_meta_prompt_golden():
    qs, demo, m = _setup()
    text = build_meta_prompt(profile="Age: 30-49, Sex: Female", questions=qs,
                             demonstrations=demo, entries=m.ascending(),
                             reference=m.reference("best"), mode="fermi", failure_case_cap=8)
    assert text + "\n" == FERMI_GOLDEN


def test_opro_meta_prompt_golden():
    qs, demo, m = _setup()
    text = build_meta_prompt(profile="Age: 30-49, Sex: Female", questions=qs,
                             demonstrations=demo, entries=m.ascending(), reference=None,
                             mode="opro")
    assert text + "\n" == OPRO_GOLDEN


def test_worst_reference_and_cap():
    qs, demo, m = _setup()
    text = build_meta_prompt(profile="", questions=qs, demonstrations=[],
                             entries=m.ascending(), reference=m.reference("worst"),
                             mode="fermi", failure_case_cap=2)
    # the lowest entry is the reference: two of its three failures in full, then a count
    assert "(1) Question: Question 0?" in text and "(2) Question: Question 1?" in text
    assert "(3) Question: Question 2?" not in text
    assert "... and 1 more mis-aligned examples" in text
    # p-high shares index 2 with p-low and has no new ones; p-mid shares 2, adds 4
    assert "failure cases: [2] and 0 additional newly mis-aligned examples" in text
    assert "failure cases: [2] and 1 additional newly mis-aligned examples" in text
    assert "described as follows" not in text and "<INS>" not in text
    # ascending order
    assert text.index("text: p-low") < text.index("text: p-mid") < text.index("text: p-high")
