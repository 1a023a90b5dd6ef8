"""Golden strings of the FSPO serialization variants."""

import pytest

from personalign.fspo.data.serialization import Shot, serialize_completions, serialize_prompt
from personalign.runtime.errors import ConfigError

SHOTS = [Shot("Q1?", "good 1", "bad 1"), Shot("Q2?", "good 2", "bad 2")]


def test_default_prompt_and_completions():
    assert serialize_prompt(SHOTS, "Q?") == (
        "# Example 1\n## Question\nQ1?\n## Preferred Response\ngood 1\n"
        "## Dispreferred Response\nbad 1\n"
        "\n"
        "# Example 2\n## Question\nQ2?\n## Preferred Response\ngood 2\n"
        "## Dispreferred Response\nbad 2\n"
        "\n"
        "# Task\nGiven the examples above, generate a preferred response to the following "
        "question.\n## Question\nQ?\n")
    assert serialize_completions("yes", "no") == ("## Preferred Response\nyes\n",
                                                  "## Preferred Response\nno\n")


def test_preferred_only():
    assert serialize_prompt(SHOTS[:1], "Q?", "preferred-only") == (
        "# Example 1\n## Question\nQ1?\n## Response\ngood 1\n"
        "\n"
        "# Task\nGiven the examples above, generate a response to the following question.\n"
        "## Question\nQ?\n")
    assert serialize_completions("yes", "no", "preferred-only") == ("## Response\nyes\n",
                                                                    "## Response\nno\n")


def test_zero_shots():
    assert serialize_prompt([], "Q?") == (
        "# Task\nGenerate a response to the following question.\n## Question\nQ?\n")


def test_user_description_chain_of_thought():
    assert serialize_prompt(SHOTS[:1], "Q?", "user-description").endswith(
        "bad 1\n\n# Task\nGenerate a user description based on the examples above. Then, "
        "generate a preferred response to the following question.\n## Question\nQ?\n")
    chosen, rejected = serialize_completions("yes", "no", "user-description",
                                             user_description="The user is a child.",
                                             rejected_description="The user is an expert.")
    assert chosen == "## User Description\nThe user is a child.\n## Preferred Response\nyes\n"
    assert rejected == "## User Description\nThe user is an expert.\n## Preferred Response\nno\n"
    # No different description for the rejected side: refused, never the user's own twice.
    for other in (None, "D"):
        with pytest.raises(ConfigError, match="different description"):
            serialize_completions("yes", "no", "user-description", user_description="D",
                                  rejected_description=other)
    with pytest.raises(ConfigError):
        serialize_completions("yes", "no", "user-description")


def test_oracle_description_first():
    assert serialize_prompt(SHOTS[:1], "Q?", "oracle", user_description="The user is a child.") \
        == ("# User Description\nThe user is a child.\n\n"
            "# Example 1\n## Question\nQ1?\n## Preferred Response\ngood 1\n"
            "## Dispreferred Response\nbad 1\n\n"
            "# Task\nGiven the examples above, generate a preferred response to the following "
            "question.\n## Question\nQ?\n")
    with pytest.raises(ConfigError):
        serialize_prompt(SHOTS, "Q?", "oracle")


def test_unknown_variant():
    with pytest.raises(ConfigError):
        serialize_prompt(SHOTS, "Q?", "cot")
