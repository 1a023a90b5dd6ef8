"""Request bodies of the service, and the one input policy every text field follows: valid
Unicode only (no lone surrogate, no NUL), bounded lengths, range-checked integers. Management
bodies are strict (no "2" or true for an int, unknown fields refused); the OpenAI-compatible
bodies accept the fields OpenAI clients send, with strict roles and content shapes."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


def clean_text(value: str) -> str:
    """A text a store and a tokenizer can take: a lone surrogate cannot be encoded as UTF-8
    (SQLite and PostgreSQL refuse it), and a NUL ends strings in C libraries."""
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode (it holds a lone surrogate)") from None
    return value


#: any text a user sends (its length is checked against the service's limits elsewhere)
Text = Annotated[str, AfterValidator(clean_text)]
#: names: profile keys, model names, stop strings, the OpenAI ``user`` field
Name = Annotated[str, StringConstraints(max_length=256), AfterValidator(clean_text)]
ProfileKey = Annotated[str, StringConstraints(min_length=1, max_length=64),
                       AfterValidator(clean_text)]
#: a seed any backend takes (reduced modulo 2**31 where a backend needs fewer bits)
Seed = Annotated[int, Field(ge=-(2 ** 63), le=2 ** 63 - 1)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class UserIn(Strict):
    user_id: Name
    profile: dict[ProfileKey, Text] = Field(default_factory=dict, max_length=64)
    description: Text | None = None


class OpinionIn(Strict):
    question: Text
    options: list[Text] = Field(max_length=64)
    answer: int = Field(ge=0, le=63)


class OpinionsIn(Strict):
    opinions: list[OpinionIn] = Field(min_length=1, max_length=500)


class PairIn(Strict):
    prompt: Text
    chosen: Text
    rejected: Text


class PairsIn(Strict):
    pairs: list[PairIn] = Field(min_length=1, max_length=500)


class FitIn(Strict):
    method: Name = "fermi"
    preset: Literal["paper", "quick", "tiny"] = "quick"


class QuestionIn(Strict):
    question: Text
    options: list[Text] = Field(max_length=64)


class AnswerIn(Strict):
    questions: list[QuestionIn] = Field(min_length=1, max_length=64)


# ---- OpenAI-compatible ----------------------------------------------------------------------
class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[Text, list[TextPart]] = Field(union_mode="left_to_right")
    name: Name | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class OpenAICommon(BaseModel):
    model: Name
    n: int = Field(1, ge=1, le=8)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    stop: Union[Name, list[Name], None] = Field(None, max_length=4)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Name | None = None


class ChatIn(OpenAICommon):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionIn(OpenAICommon):
    prompt: Union[Text, list[Text]] = Field(union_mode="left_to_right")
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
