"""Does the service stream? Time to the first streamed piece against the time of the whole
answer, for a personalized chat and a completion on a real model, side by side in one run.

The service runs in this process on loopback (SQLite in a temporary home), with a user fitted
by Fermi at the tiny preset; then for each route, ``--repeats`` times: the answer without
streaming (its full time), then the same request streamed (time to the first piece and to
the end). Greedy decoding, ``--max-tokens`` tokens asked for a long answer::

    python benchmarks/service_streaming.py                     # the service's default models
    python benchmarks/service_streaming.py --task-model smollm2-135m-instruct \\
        --optimizer-model smollm2-135m-instruct

Target (issue 27): the first piece before 25% of the full answer's time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from service_load import OPINIONS  # the load test's user (benchmarks/ is on the path)

ASK = "Write a long, detailed essay on the history of public transport in cities."
ADMIN = "bench-admin-key"


def timed(http, path: str, body: dict, key: str, stream: bool) -> tuple[float | None, float, int]:
    """(seconds to the first piece or None, seconds to the end, completion tokens)."""
    headers = {"Authorization": f"Bearer {key}"}
    start = time.perf_counter()
    if not stream:
        r = http.post(path, json=body, headers=headers)
        r.raise_for_status()
        return None, time.perf_counter() - start, r.json()["usage"]["completion_tokens"]
    first, tokens = None, 0
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", path, json=body, headers=headers) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            choice = (event.get("choices") or [{}])[0]
            if first is None and (choice.get("text") or (choice.get("delta") or {}).get(
                    "content")):
                first = time.perf_counter() - start
    return first, time.perf_counter() - start, tokens


def main() -> None:
    from personalign.runtime import models

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task-model", default=models.DEFAULT_TASK)
    parser.add_argument("--optimizer-model", default=models.DEFAULT_OPTIMIZER)
    parser.add_argument("--max-tokens", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from personalign.runtime import settings

    # The store and the call cache live in a temporary home; prepared models are linked in.
    real_home, home = settings.home(), tempfile.mkdtemp(prefix="pa_stream_bench_")
    for part in ("models", "gguf"):
        if (real_home / part).is_dir():
            os.symlink(real_home / part, os.path.join(home, part))
    os.environ["PERSONALIGN_HOME"] = home

    import httpx

    from personalign.runtime.llm.factory import prepare_llm
    from personalign.service.app import ServiceConfig, create_app
    from personalign.serving.openai_server import serve_in_thread

    for spec in (args.task_model, args.optimizer_model):
        prepare_llm(spec)
    app = create_app(ServiceConfig(task_model=args.task_model,
                                   optimizer_model=args.optimizer_model, admin_key=ADMIN))
    with serve_in_thread(app, timeout=600) as url:
        http = httpx.Client(base_url=url.removesuffix("/v1"), timeout=900)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        key = http.post("/v1/users", json={"user_id": "reader"}, headers=admin).json()["api_key"]
        http.post("/v1/users/reader/opinions", json={"opinions": OPINIONS}, headers=admin)
        t0 = time.perf_counter()
        job = http.post("/v1/users/reader/fit", json={"preset": "tiny"}, headers=admin).json()
        while (job := http.get(f"/v1/jobs/{job['job_id']}", headers=admin).json())[
                "status"] not in ("done", "failed"):
            time.sleep(1)
        assert job["status"] == "done", job
        print(f"task model {args.task_model}; Fermi fit (tiny) {time.perf_counter() - t0:.0f} s")
        common = {"model": "personalign", "temperature": 0, "max_tokens": args.max_tokens}
        routes = {"chat": ("/v1/chat/completions",
                           {**common, "messages": [{"role": "user", "content": ASK}]}),
                  "completion": ("/v1/completions", {**common, "prompt": ASK})}
        timed(http, *routes["chat"][:1], {**routes["chat"][1], "max_tokens": 4}, key, True)
        print(f"{'route':<11} {'tokens':>6} {'full s':>7} {'first piece s':>14} "
              f"{'streamed s':>11} {'first / full':>13}")
        for name, (path, body) in routes.items():
            rows = []
            for _ in range(args.repeats):
                _, full, tokens = timed(http, path, body, key, stream=False)
                first, streamed, streamed_tokens = timed(http, path, body, key, stream=True)
                rows.append((tokens, full, first, streamed, streamed_tokens))
            tokens = statistics.median(r[0] for r in rows)
            full = statistics.median(r[1] for r in rows)
            first = statistics.median(r[2] for r in rows)
            streamed = statistics.median(r[3] for r in rows)
            ratio = first / full
            print(f"{name:<11} {tokens:>6.0f} {full:>7.2f} {first:>14.2f} {streamed:>11.2f} "
                  f"{ratio:>12.1%}  {'met' if ratio < 0.25 else 'NOT met'} (< 25%)")
        app.state.service.close()


if __name__ == "__main__":
    main()
