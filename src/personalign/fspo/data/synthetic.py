"""Questions and diverse candidate responses for synthetic preference data.

Diversity comes from (1) persona steering: one response per steering instruction (for ELIX:
one per education level, each with a persona variant's style drawn per question); (2) view
conditioning after it, as FSPO's pipeline does: the generator lists possible views of the
question, and each steered response also takes one of them (drawn per question and steer), so
a view varies a response within its persona instead of replacing the persona; (3) an ensemble
of generators and temperatures, assigned round-robin to responses.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from personalign.fspo.data.users import ELIX_LEVELS, ELIX_VARIANTS, SyntheticUser
from personalign.runtime.data.splits import derive_seed
from personalign.runtime.data.validate import read_jsonl, read_text
from personalign.runtime.errors import DataError
from personalign.runtime.llm.types import SamplingParams
from personalign.runtime.storage import atomic_write_text

log = logging.getLogger(__name__)

#: The protocol of evaluations on this data (``fspo eval``'s report), beside OpinionQA's
#: ``opinionqa-preferences``.
PROTOCOL = "fspo-synthetic"

# Seed topics for generated questions (the generator writes the question itself).
TOPICS = {
    "elix": ["photosynthesis", "gravity", "rainbows", "vaccines", "volcanoes", "the internet",
             "black holes", "electricity", "the water cycle", "DNA", "earthquakes",
             "inflation in economics", "the immune system", "tides", "climate change",
             "how airplanes fly", "magnets", "the moon's phases", "batteries", "sleep",
             "digestion", "recycling", "seasons", "clouds", "computers", "money", "bees",
             "the heart", "sound", "light"],
    "reviews": ["a space adventure movie", "a romantic comedy", "a horror film",
                "a historical drama", "an animated family movie", "a heist thriller",
                "a superhero movie", "a documentary about oceans", "a musical",
                "a courtroom drama", "a western", "a coming-of-age film"],
    "roleplay": ["careers", "travel", "food", "parenting", "technology", "money", "health",
                 "education", "hobbies", "city versus country life", "friendship", "pets"],
}

_QUESTION_PROMPTS = {
    "elix": "Write one question a curious person might ask to have {topic} explained. "
            "Reply with the question only.",
    "reviews": "Write one short request asking for a review of {topic}, giving the movie a "
               "made-up title. Reply with the request only.",
    "roleplay": "Write one open-ended question about {topic} that different people would "
                "answer differently. Reply with the question only.",
}


@dataclass
class Question:
    qid: str
    text: str
    topic: str | None = None


@dataclass
class Response:
    rid: str
    qid: str
    text: str
    # How it was made: steer source (level/variant/user), view, generator, temperature.
    meta: dict[str, Any] = field(default_factory=dict)


def _first_question(text: str) -> str:
    """The question in a generation: a quoted question if any, else the first line or sentence
    ending with "?", else the first substantial line."""
    text = text.strip()
    quoted = re.findall(r'["\u201c]([^"\u201d]{10,}?\?)["\u201d]?', text)
    if quoted:
        return quoted[0].strip()
    for line in text.splitlines():
        line = re.sub(r"^\s*(\d+[.)]|[-*]|Question:)\s*", "", line).strip().strip('"')
        m = re.search(r"([^.!?]*\?)", line)
        if m and len(m.group(1).strip()) > 10:
            return m.group(1).strip()
    for line in text.splitlines():
        line = line.strip().strip('"')
        if len(line) > 10:
            return line
    return ""


def load_questions(path: str | Path) -> list[Question]:
    """Questions from a text file (one per line) or JSONL with a "question" field."""
    path = Path(path)
    if path.suffix == ".jsonl":
        out = []
        for line, obj in read_jsonl(path):
            text = obj.get("question") or obj.get("prompt")
            if not isinstance(text, str) or not text.strip():
                raise DataError("missing", path=str(path), line=line, field="question")
            out.append(Question(str(obj.get("qid", f"q{len(out):04d}")), text.strip(),
                                obj.get("topic")))
        return out
    lines = [ln.strip() for ln in read_text(path).splitlines() if ln.strip()]
    if not lines:
        raise DataError("no questions", path=str(path))
    return [Question(f"q{i:04d}", t) for i, t in enumerate(lines)]


def generate_questions(llm, domain: str, n: int, seed: int = 0, temperature: float = 0.7,
                       topics: Sequence[str] | None = None) -> list[Question]:
    """``n`` distinct questions, one generation call each (topics cycled; a duplicate or empty
    answer is retried with another seed, at most ``n`` extra calls in all)."""
    topics = list(topics or TOPICS[domain])
    random.Random(seed).shuffle(topics)
    template = _QUESTION_PROMPTS[domain]
    out: list[Question] = []
    seen: set[str] = set()
    attempt = 0
    while len(out) < n and attempt < 2 * n:
        topic = topics[attempt % len(topics)]
        params = SamplingParams(temperature=temperature, max_tokens=40,
                                seed=seed * 100003 + attempt)
        text = _first_question(llm.generate(
            [[{"role": "user", "content": template.format(topic=topic)}]], params)[0][0])
        attempt += 1
        if text and text.lower() not in seen:
            seen.add(text.lower())
            out.append(Question(f"q{len(out):04d}", text, topic))
    if len(out) < n:
        log.warning("generated %d of %d questions", len(out), n)
    return out


def dump_questions(questions: Sequence[Question], path: str | Path) -> None:
    atomic_write_text(path, "".join(json.dumps(q.__dict__, ensure_ascii=False) + "\n"
                                    for q in questions))


def read_questions_jsonl(path: str | Path) -> list[Question]:
    return [Question(o["qid"], o["text"], o.get("topic")) for _, o in read_jsonl(path)]


# ------------------------------------------------------------------ steering sources
@dataclass
class Steer:
    """An instruction that makes the generator write for one kind of user."""

    name: str
    instruction: str
    meta: dict[str, Any] = field(default_factory=dict)


def elix_steers(users: Sequence[SyntheticUser], qid: str, seed: int) -> list[Steer]:
    """One steer per education level; its style is a persona variant of the users drawn per
    (question, level), so responses differ in level and in style."""
    variants = sorted({u.attributes.get("variant", "plain") for u in users}) or ["plain"]
    levels = [lv for lv in ELIX_LEVELS if any(u.attributes.get("level") == lv for u in users)]
    steers = []
    for level in levels:
        variant = random.Random(derive_seed(seed, qid, level)).choice(variants)
        who, instruction = ELIX_LEVELS[level]
        extra = ELIX_VARIANTS[variant][1]
        steers.append(Steer(f"{level}/{variant}", f"{instruction} {extra}".strip(),
                            {"level": level, "variant": variant,
                             "steer_user": f"elix-{level.replace(' ', '_')}-{variant}"}))
    return steers


def user_steers(users: Sequence[SyntheticUser], qid: str, seed: int, k: int) -> list[Steer]:
    """``k`` users drawn per question; each one's steer instruction (Reviews, Roleplay)."""
    pool = list(users)
    random.Random(derive_seed(seed, qid, "steers")).shuffle(pool)
    return [Steer(u.user_id, u.steer or f"Write for this person: {u.description}",
                  {"steer_user": u.user_id}) for u in pool[:k]]


# ------------------------------------------------------------------ responses
def _response_prompt(question: str, instruction: str) -> list[dict[str, str]]:
    # The steer goes in the system message: small models otherwise answer the instruction.
    return [{"role": "system", "content": instruction}, {"role": "user", "content": question}]


def _views_prompt(question: str, k: int) -> list[dict[str, str]]:
    return [{"role": "user", "content":
             f"List {k} different points of view someone could take when answering this "
             f"question (for example a practical, a historical or a personal angle), one per "
             f"line, each in two to six words. Do not answer the question.\n\n"
             f"Question: {question}"}]


def parse_views(text: str, k: int) -> list[str]:
    views = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(\d+[.)]|[-*•])\s*", "", line).strip().strip("*").strip()
        if 3 <= len(line) <= 200 and line.lower() not in {v.lower() for v in views}:
            views.append(line)
    return views[:k]


@dataclass
class GeneratorSpec:
    """A generator model and temperature used for a share of the responses."""

    llm: Any
    temperature: float = 0.8
    name: str = ""

    def label(self) -> str:
        return self.name or getattr(self.llm, "model_id", "llm")


def clean_response(text: str) -> str:
    return text.strip()


def generate_responses(question: Question, steers: Sequence[Steer],
                       generators: Sequence[GeneratorSpec], seed: int = 0,
                       max_tokens: int = 160, views: int = 0) -> list[Response]:
    """One response per steer (round-robin over generators). With ``views > 0`` the first
    generator lists that many views of the question first, and each steer's response also
    takes one of them (drawn with a seed from (seed, question, steer))."""
    listed: list[str] = []
    if views > 0:
        gen = generators[0]
        listing = gen.llm.generate([_views_prompt(question.text, views)], SamplingParams(
            temperature=gen.temperature, max_tokens=96, seed=derive_seed(seed, question.qid,
                                                                          "views"))
        )[0][0]
        listed = parse_views(listing, views) or ["a balanced view"]
    out = []
    for j, steer in enumerate(steers):
        instruction, meta = steer.instruction, {"steer": steer.name, **steer.meta}
        if listed:
            view = random.Random(derive_seed(seed, question.qid, steer.name)).choice(listed)
            instruction = f"{instruction} Answer from this point of view: {view}".strip()
            meta["view"] = view
        gen = generators[j % len(generators)]
        params = SamplingParams(temperature=gen.temperature, max_tokens=max_tokens,
                                seed=derive_seed(seed, question.qid, j))
        text = clean_response(gen.llm.generate([_response_prompt(question.text, instruction)],
                                               params)[0][0])
        if not text:
            log.warning("empty response for %s (%s)", question.qid, meta)
            continue
        out.append(Response(f"{question.qid}-r{j}", question.qid, text,
                            {**meta, "generator": gen.label(), "temperature": gen.temperature}))
    return out
