"""FSPO data: synthetic users and preferences, real-user preferences, few-shot episodes.

Main entry points: :func:`build_episodes` / :func:`split_users` (episodes.py), the FSPO
serialization (serialization.py), :class:`SyntheticPipeline` (pipeline.py), the data card
(card.py), protocol opinionqa-preferences (opinionqa_prefs.py) and the released FSPO schemas
(released.py).
"""

from personalign.fspo.data.episodes import (
    Episode, build_episodes, build_eval_episodes, make_episode, split_pairs,
    split_users, write_records,
)
from personalign.fspo.data.serialization import (
    VARIANTS, Shot, serialize_completions, serialize_prompt,
)

__all__ = ["Episode", "build_episodes", "build_eval_episodes", "make_episode", "split_pairs",
           "split_users", "write_records", "VARIANTS", "Shot", "serialize_completions",
           "serialize_prompt"]
