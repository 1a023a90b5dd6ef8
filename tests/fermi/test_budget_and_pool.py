"""The optimizer's reply budget, cut-off replies, collapsed fits and the best prompt in the pool."""

from personalign.fermi.config import FermiConfig
from personalign.fermi.memory import Candidate, Memory
from personalign.fermi.optimizer import Fermi
from personalign.runtime.prompts import profile_prompt
from personalign.runtime.llm.fake import FakeLLM

from tests.fermi.conftest import keyword_task_llm


class BudgetedOptimizer(FakeLLM):
    """Generates like the real local backends: the reply is primed with "[" and ends at
    ``max_tokens`` (4 characters a token, the fake's count) or before, at the first stop
    string (dropped). A reply cut at the budget re-encodes ``drift`` tokens shorter, as
    sampled text can."""

    def __init__(self, responder, drift: int = 0):
        super().__init__(responder=responder, model_id="budgeted")
        self.drift = drift
        self.budgets: list[int] = []

    def render(self, messages):
        return "USER: " + messages[0]["content"] + "\nASSISTANT: "

    def _generate(self, prompts, params):
        self.budgets.append(params.max_tokens)
        out = super()._generate(prompts, params)
        for gen in out:
            texts = []
            for text in gen.texts:
                stops = [text.find(s) for s in params.stop if s in text]
                if min(stops, default=len(text)) >= 4 * params.max_tokens:
                    text = text[:4 * (params.max_tokens - self.drift)]
                elif stops:
                    text = text[:min(stops)]
                texts.append(text)
            gen.texts = texts
        return out


def _words(n_chars: int, tag: str) -> str:
    text = f"Answer as the person would, version {tag}:"
    while len(text) < n_chars:
        text += " carefully"
    return text[:n_chars]


LONG = _words(240, "long")  # 60 fake tokens: longer than the initial prompt by a bit


def _fit(user, embedder, opt, **cfg):
    # last_k: the pool is what the optimizer generated, which these tests are about
    fermi = Fermi(FermiConfig(**{"iterations": 1, "num_candidates": 2, "max_retries": 0,
                                 "final_pool": "last_k", **cfg}), keyword_task_llm(), opt,
                  embedder)
    return fermi.fit(user.opinions[:20], user.profile, user_id=user.user_id)


def test_cut_off_reply_is_rejected_and_a_complete_one_accepted(user, embedder):
    replies = [LONG + "] and some words after it", "A short complete text.] more"]
    # A budget smaller than the long prompt cuts it mid-text: rejected, never kept half-written.
    opt = BudgetedOptimizer(lambda t, i: replies[i])
    fermi = _fit(user, embedder, opt, optimizer_max_tokens=40)
    assert opt.budgets == [40]
    assert fermi.result.failures["cut_off"] == 1
    assert [p.prompt for p in fermi.pool] == ["A short complete text."]
    # The derived budget fits the long prompt whole.
    opt = BudgetedOptimizer(lambda t, i: replies[i])
    fermi = _fit(user, embedder, opt)
    assert opt.budgets[0] > 60
    assert fermi.result.failures["cut_off"] == 0
    assert [p.prompt for p in fermi.pool] == [LONG, "A short complete text."]


def test_cut_off_survives_token_count_drift(user, embedder):
    """A reply cut at the budget whose re-encoded length comes out a few tokens short is
    still a cut-off (the old check, count < max - 1, accepted it half-written)."""
    opt = BudgetedOptimizer(lambda t, i: LONG + "]", drift=3)
    fermi = _fit(user, embedder, opt, optimizer_max_tokens=40, num_candidates=1)
    assert fermi.result.failures["cut_off"] == 1 and fermi.result.counts["accepted"] == 0


def test_unprimed_reply_cut_without_closing_bracket_is_rejected(user, embedder):
    """Chat backends (no render): the whole reply comes back; a closed bracket inside a reply
    cut later is fine, an open one at the budget is not."""
    replies = ["Here is a new text: [" + "word " * 60, "Sure: [A complete text.] " + "x" * 300,
               "[A short text that forgot its bracket"]
    opt = FakeLLM(responder=lambda t, i: replies[i])
    fermi = _fit(user, embedder, opt, optimizer_max_tokens=50, num_candidates=3)
    f = fermi.result.failures
    assert f["cut_off"] == 1 and f["unclosed_bracket"] == 1
    assert [p.prompt for p in fermi.pool] == ["A complete text.",
                                              "A short text that forgot its bracket"]


def test_derived_budget_grows_with_the_longest_prompt_in_memory(user, embedder):
    lengths = iter([300, 400, 500])  # each fits the budget the one before it sets
    opt = BudgetedOptimizer(lambda t, i: _words(next(lengths), "grow") + "]")
    fermi = _fit(user, embedder, opt, iterations=3, num_candidates=1)
    first = opt.count_tokens(profile_prompt(fermi.profile))
    margin = fermi.config.optimizer_token_margin
    assert opt.budgets == [first + margin, 300 // 4 + margin, 400 // 4 + margin]
    assert [h["max_tokens"] for h in fermi.result.history[1:]] == opt.budgets
    assert fermi.result.failures["cut_off"] == 0 and fermi.result.counts["accepted"] == 3
    # the same from a memory directly; an explicit value is kept as given
    memory = Memory(3)
    memory.extend([Candidate("x" * 40, 0.5), Candidate("y" * 400, 0.1)])
    assert fermi.reply_budget(memory) == 100 + margin
    fermi.config = fermi.config.updated(optimizer_max_tokens=77)
    assert fermi.reply_budget(memory) == 77


def test_collapsed_fit_is_flagged(user, embedder):
    opt = BudgetedOptimizer(lambda t, i: "word " * 200)  # always runs into the budget
    fermi = _fit(user, embedder, opt, iterations=2)
    res = fermi.result
    assert res.counts["accepted"] == 0 and res.failures["cut_off"] == 4
    assert res.collapsed is True and res.to_dict()["collapsed"] is True
    assert res.pool_source == "initial"
    assert [p.prompt for p in fermi.pool] == [profile_prompt(fermi.profile)]

    opt = BudgetedOptimizer(lambda t, i: f"A careful voter, take {t.count('text:')}-{i}.]")
    fermi = _fit(user, embedder, opt, iterations=2)
    assert fermi.result.collapsed is False and fermi.result.to_dict()["collapsed"] is False
    assert fermi.result.pool_source == "last_k" and len(fermi.pool) == 2


def _improves_once():
    """Iteration 1 writes a 'careful' prompt (the fake task model's better kind), later
    iterations only worse ones, so the best prompt is not among the last K."""
    calls = []

    def responder(text, i):
        calls.append(i)
        if len(calls) == 1:
            return "Answer as a careful voter would.]"
        return f"Answer as a voter would, take {len(calls)}.]"

    return BudgetedOptimizer(responder)


def test_include_best_adds_the_best_prompt_to_the_last_k(user, embedder):
    plain = _fit(user, embedder, _improves_once(), iterations=3, num_candidates=1)
    best = plain.memory.ranked()[0]
    assert best.prompt == "Answer as a careful voter would." and best.iteration == 1
    assert [p.prompt for p in plain.pool] == ["Answer as a voter would, take 3."]

    with_best = _fit(user, embedder, _improves_once(), iterations=3, num_candidates=1,
                     include_best=True)
    assert [p.prompt for p in with_best.pool] == ["Answer as a voter would, take 3.",
                                                  "Answer as a careful voter would."]
    assert with_best.result.pool_source == "last_k+best"
    # without RoP the best-scoring pool prompt answers every question
    assert set(with_best.select(user.opinions[20:25], use_rop=False)) == {1}


def test_include_best_adds_nothing_when_the_best_is_already_there(user, embedder):
    fermi = _fit(user, embedder, _improves_once(), iterations=1, num_candidates=1,
                 include_best=True)
    assert [p.prompt for p in fermi.pool] == ["Answer as a careful voter would."]
    assert fermi.result.pool_source == "last_k"


def test_memory_plus_initial_keeps_the_profile_prompt_the_rewrites_pushed_out(user, embedder):
    def careful_rewrites():  # every rewrite beats the initial prompt on the fake task model
        return BudgetedOptimizer(lambda t, i: f"Answer as a careful voter would, take {i}.]")

    rewrites = ["Answer as a careful voter would, take 0.",
                "Answer as a careful voter would, take 1."]
    memory = _fit(user, embedder, careful_rewrites(), memory_size=2, final_pool="memory")
    initial = profile_prompt(memory.profile)
    assert [p.prompt for p in memory.pool] == rewrites  # the initial prompt was pushed out
    assert memory.result.pool_source == "memory"

    kept = _fit(user, embedder, careful_rewrites(), memory_size=2, final_pool="memory+initial")
    assert [p.prompt for p in kept.pool] == rewrites + [initial]
    assert kept.result.pool_source == "memory+initial"
    assert len(kept.pool) == kept.config.pool_size == 3
    # scored like the others on all 20 past opinions, so Retrieval-of-Prompt can pick it
    assert all(len(p.correctness) == 20 for p in kept.pool)
    assert kept.pool[2].correctness != kept.pool[0].correctness

    # a memory that still holds the initial prompt gets nothing added
    roomy = _fit(user, embedder, careful_rewrites(), memory_size=5, final_pool="memory+initial")
    assert [p.prompt for p in roomy.pool] == rewrites + [initial]
    assert roomy.result.pool_source == "memory"
