"""The shared multiple-choice prompts and few-shot retrieval (embeddings and BM25)."""

import pytest

from personalign.runtime.prompts import (FEWSHOT_INSTRUCTION, TASK_INSTRUCTION, fewshot_items,
                                         profile_prompt)
from personalign.runtime.retrieval import retrieve
from personalign.runtime.data.records import Opinion
from personalign.runtime.errors import ConfigError

from tests.fermi.conftest import BagEmbedder

SHOTS = [Opinion("Do you support gun control laws?", ("Yes", "No"), 1),
         Opinion("Is the economy getting better?", ("Better", "Worse", "Same"), 2),
         Opinion("Should taxes on the rich rise?", ("Yes", "No"), 0)]
TEST = [Opinion("Do you support stricter gun laws?", ("Yes", "No"), 0)]


def test_instructions():
    assert "choose the proper answer" in TASK_INSTRUCTION.lower()
    assert profile_prompt("") == TASK_INSTRUCTION
    p = profile_prompt("Age: 65+, Region: South")
    assert p.startswith("A person can be described as follows: Age: 65+, Region: South.")
    assert "Based on the demographic information" in p


@pytest.mark.parametrize("retriever", ["embeddings", "bm25"])
def test_retrieve_most_similar(retriever):
    idx = retrieve(SHOTS, TEST, k=2, retriever=retriever, embedder=BagEmbedder())
    assert idx[0][0] == 0 and len(idx[0]) == 2


def test_fewshot_item_layout():
    item = fewshot_items(SHOTS, TEST, k=2, embedder=BagEmbedder())[0]
    # most similar shot last, next to the question; answers as the scored letter
    assert item.prefix.rstrip().endswith(FEWSHOT_INSTRUCTION)
    assert "Answer choices: (A) Yes (B) No\nAnswer: B\n\n" + FEWSHOT_INSTRUCTION in item.prefix
    assert item.prompt.endswith("Answer:") and item.options == ("Yes", "No")
    with pytest.raises(ConfigError):
        retrieve(SHOTS, TEST, 2, retriever="tfidf")
