"""Scoring and generation engine vs naive implementations and the machine, in one process.

    python benchmarks/engine_bench.py --data ../shared/data/opinionqa/dev.jsonl

Scoring inputs: one dev user's profile prompt as the shared prefix and 16 of their questions
(the shape of one Fermi prompt evaluation), scored by the embedded Gemma 3 270M base:
  (a) generate-and-parse per question (what reference implementations of Fermi do),
  (b) plain per-option full-sequence log-likelihood, one item at a time (full logits),
  (c) the engine (shared-prefix KV cache, batched items, pruned output projection).
(b) and (c) must give the same choices and log-probs within a tolerance, for both scoring
definitions. Also: the machine's dense matmul rate and the engine's achieved rate, generation
tokens/s (4 x 150-token samples: HF generate with n return sequences and plain linear layers
vs the engine's packed weights, single prompt pass and own decode loop; fp32 and bf16; llama.cpp
with --llamacpp), memory bandwidth (what bounds decoding), and optionally one user's Fermi
optimization at the paper preset with time per phase (--fermi).

    python benchmarks/engine_bench.py --threads 1 2 --fermi --out runs/engine_bench.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from personalign.runtime.data.opinionqa import load_opinionqa, profile_text
from personalign.runtime.llm.reference_scoring import plain_score
from personalign.runtime.llm.transformers_backend import TransformersLLM
from personalign.runtime.settings import configure_threads
from personalign.runtime.llm.types import ChoiceItem, SamplingParams

REPO = Path(__file__).resolve().parents[1]


def matmul_gflops(n: int = 1024, dtype=torch.float32, repeats: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def items_for_user(user, n_questions: int) -> list[ChoiceItem]:
    prefix = (f"A person can be described as follows: {profile_text(user.profile)}. Based on "
              "the demographic information, choose the proper answer to the given question "
              "among the given answer choices.\n\n")
    items = []
    for op in user.opinions[:n_questions]:
        choices = " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(op.options))
        items.append(ChoiceItem(prefix=prefix, options=op.options,
                                prompt=f"Question: {op.question}\nAnswer choices: {choices}\n"
                                       "Answer:"))
    return items


def timed(fn, repeats: int = 1):
    fn()  # warm-up (allocations, lazy init)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return out, (time.perf_counter() - start) / repeats


def engine_flops(llm: TransformersLLM, items: list[ChoiceItem], method: str) -> float:
    """FLOPs the engine must do: 2 x non-embedding params per processed token, plus the output
    projection where log-probs are read (attention score FLOPs are small here and left out)."""
    embed = llm.model.get_input_embeddings().weight
    non_embedding = sum(p.numel() for p in llm.model.parameters()) - embed.numel()
    vocab, dim = embed.shape
    prefix_tokens = len(llm.encode(items[0].prefix, specials=True))
    body_tokens = sum(len(llm.encode(it.prompt)) for it in items)
    projections = len(items)
    if method == "text":
        targets = [len(llm.encode(" " + o)) for it in items for o in it.options]
        body_tokens = sum(len(llm.encode(it.prompt)) * len(it.options) for it in items)
        body_tokens += sum(targets)
        projections = sum(targets)
    return 2 * non_embedding * (prefix_tokens + body_tokens) + 2 * dim * vocab * projections


def bench_scoring(llm: TransformersLLM, items: list[ChoiceItem], report: dict) -> None:
    gen_items = items[: max(4, len(items) // 4)]  # (a) is slow: time a subset, per item
    _, t_gen = timed(lambda: llm._score_by_generation(gen_items, lambda n: None))
    per_item = {"a_generate_parse": t_gen / len(gen_items)}
    for method in ("letter", "text"):
        plain, t_plain = timed(lambda: plain_score(llm, items, method))
        fast, t_fast = timed(lambda: llm._score(items, method, lambda n: None), repeats=2)
        same = [p.choice for p in plain] == [f.choice for f in fast]
        diff = max(abs(a - b) for p, f in zip(plain, fast) for a, b in zip(p.logprobs,
                                                                           f.logprobs))
        per_item[f"b_plain_{method}"] = t_plain / len(items)
        per_item[f"c_engine_{method}"] = t_fast / len(items)
        report[f"{method}_same_choices"] = same
        report[f"{method}_max_logprob_diff"] = diff
        report[f"{method}_engine_gflops"] = engine_flops(llm, items, method) / t_fast / 1e9
    report["seconds_per_item"] = per_item
    report["engine_vs_generate_letter"] = per_item["a_generate_parse"] / per_item["c_engine_letter"]
    report["engine_vs_plain_letter"] = per_item["b_plain_letter"] / per_item["c_engine_letter"]
    report["engine_vs_plain_text"] = per_item["b_plain_text"] / per_item["c_engine_text"]


def bench_generation(llm: TransformersLLM, report: dict) -> None:
    """Four 150-token samples of one optimizer-style prompt, EOS ignored so every sample
    really has 150 tokens (the optimizer's replies usually stop earlier): HF ``generate`` with
    4 return sequences and plain linear layers vs the engine (packed weights, one prompt pass,
    own decode loop)."""
    from personalign.runtime.llm.packed_linear import plain_linears

    prompt = [{"role": "user", "content": "Write a short instruction that tells a model to "
                                          "answer survey questions like a specific person."}]
    params = SamplingParams(n=4, temperature=1.0, max_tokens=150, seed=0, ignore_eos=True)
    ids = torch.tensor([llm.prompt_ids(prompt)])
    config = llm.model.generation_config
    eos = config.eos_token_id
    config.eos_token_id = None
    try:
        def hf_plain():
            torch.manual_seed(0)
            with torch.inference_mode(), plain_linears(llm.model):
                return llm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                          do_sample=True, temperature=1.0, top_k=0,
                                          num_return_sequences=4, max_new_tokens=150,
                                          pad_token_id=llm.tokenizer.pad_token_id)

        out, t_plain = timed(hf_plain)
    finally:
        config.eos_token_id = eos
    plain_tokens = int(out[:, ids.shape[1]:].numel())

    def engine():
        llm.prompt_cache.clear()  # time the prompt pass too
        return llm._generate([prompt], params)

    gen, t_engine = timed(engine)
    engine_tokens = gen[0].completion_tokens
    # Decoding is bound by reading the weights once per step: bytes per step / step time.
    weight_bytes = sum(p.numel() * p.element_size() for p in llm.model.parameters())
    steps = 150
    report[f"generation_{llm.dtype}"] = {
        "hf_generate_s": t_plain, "hf_generate_tokens_per_s": plain_tokens / t_plain,
        "engine_s": t_engine, "engine_tokens": engine_tokens,
        "engine_tokens_per_s": engine_tokens / t_engine,
        "engine_vs_hf_generate": t_plain / t_engine,
        "four_150_token_samples_s": t_engine,
        "weight_stream_gb_per_s": weight_bytes * steps / t_engine / 1e9,
    }


def bench_llamacpp_generation(threads: int, report: dict) -> None:
    """The same four 150-token samples through llama.cpp on the embedded GGUF (its own
    quantization, so only the speed is comparable). Samples run one after another."""
    from personalign.runtime.llm.llamacpp_backend import LlamaCppLLM

    llm = LlamaCppLLM("smollm2-135m-instruct", threads=threads, cache=False)
    prompt = [{"role": "user", "content": "Write a short instruction that tells a model to "
                                          "answer survey questions like a specific person."}]
    params = SamplingParams(n=4, temperature=1.0, max_tokens=150, seed=0, ignore_eos=True)
    gen, seconds = timed(lambda: llm._generate([prompt], params))
    report["generation_llamacpp"] = {"gguf": llm.path.name, "four_150_token_samples_s": seconds,
                                     "tokens": gen[0].completion_tokens,
                                     "tokens_per_s": gen[0].completion_tokens / seconds}


def memory_bandwidth_gbps(mb: int = 512, repeats: int = 5) -> float:
    """Copy bandwidth (read + write) of a large buffer: the bound for one decode step."""
    src = torch.empty(mb * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    return 2 * src.numel() * 4 * repeats / (time.perf_counter() - start) / 1e9


def bench_fermi_paper(user, threads: int) -> dict:
    """Wall time of one user's Fermi optimization at the paper preset (no call cache)."""
    from personalign.fermi.config import preset
    from personalign.fermi.optimizer import Fermi
    from personalign.runtime.embeddings import Embedder

    task = TransformersLLM("gemma3-270m", threads=threads, cache=False)
    optimizer = TransformersLLM("smollm2-135m-instruct", threads=threads, cache=False)
    start = time.perf_counter()
    fermi = Fermi(preset("paper"), task, optimizer, Embedder()).fit(list(user.opinions[:20]),
                                                                    user.profile,
                                                                    user_id=user.user_id)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "prompts_scored": fermi.result.counts.get("prompts_scored"),
            "task_usage": task.usage.as_dict(), "optimizer_usage": optimizer.usage.as_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/opinionqa/dev.jsonl"))
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--gen-dtypes", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--fermi", action="store_true",
                        help="Also time one user's Fermi optimization at the paper preset.")
    parser.add_argument("--llamacpp", action="store_true",
                        help="Also time generation with llama.cpp (the optional extra).")
    parser.add_argument("--out", default=None, help="Write the report as JSON here too.")
    args = parser.parse_args()

    user = next(u for u in load_opinionqa(args.data) if len(u.opinions) >= args.questions)
    report: dict = {"user": user.user_id, "questions": args.questions, "runs": []}
    for threads in args.threads:
        configure_threads(threads)
        run = {"threads": threads,
               "matmul_gflops_fp32": matmul_gflops(),
               "matmul_gflops_bf16": matmul_gflops(dtype=torch.bfloat16),
               "memory_copy_gb_per_s": memory_bandwidth_gbps()}
        for dtype in args.dtypes:
            gemma = TransformersLLM("gemma3-270m", dtype=dtype, threads=threads, cache=False)
            scoring: dict = {"dtype": dtype}
            bench_scoring(gemma, items_for_user(user, args.questions), scoring)
            peak = run[f"matmul_gflops_{'bf16' if dtype == 'bfloat16' else 'fp32'}"]
            scoring["engine_fraction_of_matmul_letter"] = scoring["letter_engine_gflops"] / peak
            scoring["engine_fraction_of_matmul_text"] = scoring["text_engine_gflops"] / peak
            run[f"scoring_{dtype}"] = scoring
            del gemma
        for dtype in args.gen_dtypes:
            smol = TransformersLLM("smollm2-135m-instruct", dtype=dtype, threads=threads,
                                   cache=False)
            bench_generation(smol, run)
            del smol
        if args.llamacpp:
            bench_llamacpp_generation(threads, run)
        if args.fermi:
            run["fermi_paper_one_user"] = bench_fermi_paper(user, threads)
        report["runs"].append(run)
        print(json.dumps(run, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
