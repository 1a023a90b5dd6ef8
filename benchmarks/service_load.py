"""Load test of the personalization service (loopback only, bounded in count and time).

Three processes: a model backend (a stand-in OpenAI-compatible inference server whose calls
take ``--backend-ms`` each and run concurrently, as a batching server's do), the
personalign service (SQLite; a user fitted with Fermi; the task model is that backend, over
HTTP), and this load generator: ``--clients`` concurrent clients send ``--requests`` chats
of each kind, interleaved (each client alternates, so both kinds meet the same load on the machine):

- bare: straight to the backend (the call the service itself makes, without a system prompt),
- personalized: to the service (key check, rate limit, the user's personalization from the
  store, RoP prompt selection, then the same backend call),

and the report is the latency added by personalization (p50, p99 of personalized minus those
of bare; also as a share of the bare call) and the error count::

    python benchmarks/service_load.py --clients 50 --requests 1000 --backend-ms 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastapi import FastAPI, Request

MODEL = "bench-model"
ADMIN = "bench-admin-key"
OPINIONS = [
    {"question": "Should the city build more bike lanes?", "options": ["Yes", "No"], "answer": 0},
    {"question": "Do you drive to work?", "options": ["Yes", "No"], "answer": 1},
    {"question": "How often do you use public transit?",
     "options": ["Daily", "Weekly", "Rarely", "Never"], "answer": 0},
    {"question": "Should gasoline taxes rise to fund transit?", "options": ["Yes", "No"],
     "answer": 0},
]
QUESTIONS = ["Should buses run all night?", "Is a tram better than a bus?",
             "Would you pay more for cleaner air?", "Should parking be free downtown?"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sleepy(seconds: float, model_id: str = MODEL):
    import time as _time

    from personalign.runtime.llm.fake import FakeLLM

    def answer(text: str, i: int) -> str:
        _time.sleep(seconds)
        return "I would take the bus, it is cheaper and better for the city."

    return FakeLLM(responder=answer, chooser=lambda item: 0, model_id=model_id)


def run_backend(port: int, ms: float) -> None:
    """A stand-in inference server: OpenAI chat completions that take ``ms`` each and run
    concurrently (as a batching server's do); its answer is fixed."""
    import uvicorn

    app = FastAPI()
    text = "I would take the bus, it is cheaper and better for the city."

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        await asyncio.sleep(ms / 1000)
        prompt = sum(len(m["content"]) for m in body["messages"]) // 4
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": 14,
                          "total_tokens": prompt + 14}}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def run_service(port: int, backend: str, database: str) -> None:
    import uvicorn
    from fastapi.testclient import TestClient

    from personalign.runtime.llm.fake import FakeLLM
    from personalign.runtime.llm.openai_backend import OpenAILLM
    from personalign.service.app import ServiceConfig, create_app
    from personalign.service.core import ServiceLimits

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.service_helpers import BagEmbedder

    config = ServiceConfig(database=database, admin_key=ADMIN,
                           limits=ServiceLimits(requests_per_minute=100_000))
    # Fit the user with a local stand-in of the same model id (the fit is not what is timed).
    fit_app = create_app(config, task_llm=_sleepy(0), embedder=BagEmbedder(),
                         optimizer_llm=FakeLLM(responder=lambda t, i: f"[Answer as a transit "
                                                                       f"rider who cares {i}.]"))
    with TestClient(fit_app) as c:
        h = {"Authorization": f"Bearer {ADMIN}"}
        key = c.post("/v1/users", json={"user_id": "rider"}, headers=h).json()["api_key"]
        c.post("/v1/users/rider/opinions", json={"opinions": OPINIONS}, headers=h)
        job = c.post("/v1/users/rider/fit", json={"preset": "tiny"}, headers=h).json()
        while (status := c.get(f"/v1/jobs/{job['job_id']}", headers=h).json())["status"] \
                not in ("done", "failed"):
            time.sleep(0.05)
        assert status["status"] == "done", status
    fit_app.state.service.close()
    print(json.dumps({"key": key}), flush=True)
    task = OpenAILLM(MODEL, base_url=backend, timeout=120, max_retries=0)
    app = create_app(config, task_llm=task, embedder=BagEmbedder(),
                     optimizer_llm=FakeLLM(model_id="unused"))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=30)


def _wait_up(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


async def _load(targets: dict[str, tuple[str, dict, list[dict]]], clients: int,
                deadline: float) -> dict[str, tuple[list[float], list[str], int]]:
    """``clients`` concurrent clients; each alternates between the targets (bare and
    personalized requests interleaved, so both meet the same load on the machine)."""
    import httpx

    out = {name: ([], [], 0) for name in targets}
    queue = [(name, body) for i in range(max(len(t[2]) for t in targets.values()))
             for name, t in targets.items() if i < len(t[2]) for body in [t[2][i]]]
    queue.reverse()
    limits = httpx.Limits(max_connections=2 * clients, max_keepalive_connections=2 * clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def worker() -> None:
            while queue and time.monotonic() < deadline:
                name, body = queue.pop()
                url, headers, _ = targets[name]
                latencies, errors, _ = out[name]
                start = time.perf_counter()
                try:
                    r = await client.post(url, json=body, headers=headers)
                    ok = r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
                    if not ok:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                        continue
                except Exception as e:  # counted, not raised: the report has the count
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(clients)))
    unsent: dict[str, int] = {}
    for name, _ in queue:
        unsent[name] = unsent.get(name, 0) + 1
    return {name: (lat, err, unsent.get(name, 0)) for name, (lat, err, _) in out.items()}


def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000,
                        help="requests of each kind (bare, personalized), interleaved")
    parser.add_argument("--backend-ms", type=float, default=200.0,
                        help="time the stand-in model takes per call")
    parser.add_argument("--time-limit", type=float, default=300.0,
                        help="stop sending after this many seconds")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON")
    parser.add_argument("--role", choices=["backend", "service"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "backend":
        return run_backend(args.port, args.backend_ms)
    if args.role == "service":
        return run_service(args.port, args.backend, args.database)

    tmp = Path(tempfile.mkdtemp(prefix="personalign-load-"))
    env = dict(os.environ, PERSONALIGN_HOME=str(tmp / "home"))
    env.setdefault("PERSONALIGN_THREADS", "1")
    bport, sport = _port(), _port()
    backend_url = f"http://127.0.0.1:{bport}/v1"
    me = [sys.executable, str(Path(__file__).resolve())]
    procs = [subprocess.Popen(me + ["--role", "backend", "--port", str(bport),
                                    "--backend-ms", str(args.backend_ms)], env=env)]
    try:
        _wait_up(f"http://127.0.0.1:{bport}/health")
        service = subprocess.Popen(me + ["--role", "service", "--port", str(sport), "--backend",
                                         backend_url, "--database",
                                         f"sqlite:///{tmp / 'service.db'}"],
                                   env=env, stdout=subprocess.PIPE, text=True)
        procs.append(service)
        key = json.loads(service.stdout.readline())["key"]
        _wait_up(f"http://127.0.0.1:{sport}/health")

        def bodies(model: str) -> list[dict]:
            return [{"model": model, "max_tokens": 32, "messages": [
                {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
                for i in range(args.requests)]

        report: dict = {"clients": args.clients, "requests_per_mode": args.requests,
                        "backend_ms": args.backend_ms, "cpus": os.cpu_count(),
                        "loadavg_1m_before": os.getloadavg()[0]}
        targets = {
            "bare": (f"{backend_url}/chat/completions", {}, bodies(MODEL)),
            "personalized": (f"http://127.0.0.1:{sport}/v1/chat/completions",
                             {"Authorization": f"Bearer {key}"}, bodies("personalign"))}
        start = time.monotonic()
        results = asyncio.run(_load(targets, args.clients, start + args.time_limit))
        report["seconds"] = round(time.monotonic() - start, 1)
        for mode, (lat, errors, unsent) in results.items():
            report[mode] = {"ok": len(lat), "errors": len(errors), "not_sent": unsent,
                            "p50_ms": round(_pct(lat, 50), 1), "p99_ms": round(_pct(lat, 99), 1),
                            "first_errors": errors[:3]}
        bare, pers = report["bare"], report["personalized"]
        for q in ("p50", "p99"):
            added = pers[f"{q}_ms"] - bare[f"{q}_ms"]
            report[f"added_{q}_ms"] = round(added, 1)
            report[f"added_{q}_share_of_bare"] = round(added / bare[f"{q}_ms"], 3)
        report["errors"] = bare["errors"] + pers["errors"]
        report["targets_met"] = (report["added_p50_share_of_bare"] <= 0.10
                                 and report["added_p99_share_of_bare"] <= 0.20
                                 and report["errors"] == 0)
        report["loadavg_1m_after"] = os.getloadavg()[0]
        text = json.dumps(report, indent=1)
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n", encoding="utf-8")
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
