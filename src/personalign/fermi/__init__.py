"""Fermi (Kim & Yang, NAACL 2025): few-shot personalization with mis-aligned responses.

    from personalign.fermi import Fermi, FermiConfig, preset
    fermi = Fermi(preset("quick"), task_llm, optimizer_llm, embedder).fit(user)
    fermi.predict(questions)

Choices where the paper is silent (the spec's [?] items), all options of FermiConfig:
- reference_entry="best": the top-scored memory entry (rank l = 1) has its failure cases
  listed in full; the others list indices shared with it plus a count of new ones.
- final_pool="memory": the memory's top L (measured better than "last_k", the K prompts
  generated last, on Qwen 1.5B; "memory+initial", which keeps the profile prompt that
  rewrites pushed out, changed 2% of answers at the paper preset: README).
- failure_case_cap=8; tau = 1.0 (choice, tag, rating) and 0.2 (ROUGE-L titles); rating score
  1 - |pred - gold| / 4.
- rop_include_demo=True: each pool prompt's correctness is cached on all of U_opi (the 16
  optimization opinions, reused from the loop, plus the 4 demonstrations, scored once at the
  end), so RoP retrieves neighbours among all 20 training opinions. Fermi without RoP picks
  the pool prompt with the best mean on the same 20.
- prime_bracket=True: with local backends the optimizer's reply starts with "[" and stops at
  "]" (small models keep the format; no tokens after the prompt). Replies are still parsed
  leniently, and every failure (no brackets, unclosed, empty, duplicate, too long, retries)
  is counted in FitResult.failures.
"""

from personalign.fermi.config import FermiConfig, PRESETS, preset
from personalign.fermi.optimizer import Fermi, FitResult, PoolPrompt

__all__ = ["Fermi", "FermiConfig", "FitResult", "PoolPrompt", "PRESETS", "preset"]
