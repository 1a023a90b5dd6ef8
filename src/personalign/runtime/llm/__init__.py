"""LLM backends behind one interface (see ``base.LLM``)."""

from personalign.runtime.llm.base import LLM, Generation
from personalign.runtime.llm.choice_parser import parse_choice
from personalign.runtime.llm.types import (
    ChoiceItem, ChoiceResult, Message, Prompt, SamplingParams, ScoringMethod, Usage,
)

__all__ = ["LLM", "Generation", "parse_choice", "ChoiceItem", "ChoiceResult", "Message",
           "Prompt", "SamplingParams", "ScoringMethod", "Usage"]
