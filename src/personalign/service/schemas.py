"""Request bodies of the service. Management bodies are strict (no "2" or true for an int,
unknown fields refused); the OpenAI-compatible bodies accept the fields OpenAI clients send,
with strict roles and content shapes."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class UserIn(Strict):
    user_id: str
    profile: dict[str, str] = Field(default_factory=dict, max_length=64)
    description: str | None = None


class OpinionIn(Strict):
    question: str
    options: list[str]
    answer: int


class OpinionsIn(Strict):
    opinions: list[OpinionIn] = Field(min_length=1)


class PairIn(Strict):
    prompt: str
    chosen: str
    rejected: str


class PairsIn(Strict):
    pairs: list[PairIn] = Field(min_length=1)


class FitIn(Strict):
    method: str = "fermi"
    preset: Literal["paper", "quick", "tiny"] = "quick"


class QuestionIn(Strict):
    question: str
    options: list[str]


class AnswerIn(Strict):
    questions: list[QuestionIn] = Field(min_length=1, max_length=64)


# ---- OpenAI-compatible ----------------------------------------------------------------------
class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class OpenAICommon(BaseModel):
    model: str
    n: int = Field(1, ge=1, le=8)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    stop: Union[str, list[str], None] = None
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatIn(OpenAICommon):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionIn(OpenAICommon):
    prompt: Union[str, list[str]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
