"""PersonalizedModel generation parsing with a scripted stand-in for the network."""

import pytest
import torch

from personalign.fspo.train.model import PersonalizedModel, format_prompt

# The tokenizer is the real SmolLM2's, from the prepared embedded model.
pytestmark = pytest.mark.real_model


class ScriptedLM:
    """Returns the prompt ids followed by a fixed continuation."""

    def __init__(self, tokenizer, continuation):
        self.tok, self.continuation = tokenizer, continuation
        self.device = torch.device("cpu")
        self.prompts = []

    def eval(self):
        return self

    def generate(self, input_ids, **kw):
        self.prompts.append(self.tok.decode(input_ids[0]))
        extra = self.tok(self.continuation, add_special_tokens=False)["input_ids"]
        return torch.cat([input_ids, torch.tensor([extra + [self.tok.eos_token_id]])], dim=1)


def _tokenizer():
    from transformers import AutoTokenizer

    from personalign.runtime.models import resolve

    return AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct"))


def test_generate_strips_header_and_runaway_sections():
    tok = _tokenizer()
    lm = ScriptedLM(tok, "Tea, always.\n# Example 9\n## Question\nmore")
    pm = PersonalizedModel(lm, tok)
    shots = [{"question": "Tea or coffee?", "chosen": "Tea", "rejected": "Coffee"}]
    assert pm.generate(shots, "Morning drink?") == "Tea, always."
    assert lm.prompts[0].endswith(format_prompt(shots, "Morning drink?") +
                                  "## Preferred Response\n")


def test_user_description_variant_writes_description_first():
    tok = _tokenizer()
    lm = ScriptedLM(tok, "Likes tea.\n## Preferred Response\nGreen tea.\n")
    pm = PersonalizedModel(lm, tok, variant="user-description")
    description, response = pm.describe_and_respond("# Task\n## Question\nDrink?\n")
    assert (description, response) == ("Likes tea.", "Green tea.")
    assert lm.prompts[0].endswith("## User Description\n")
