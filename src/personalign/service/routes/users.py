"""Users, their opinions and preference pairs, fit jobs, the learned personalization,
multiple-choice answers, export and deletion."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from personalign.runtime.data.records import Opinion
from personalign.runtime.data.validate import require_options
from personalign.runtime.errors import DataError
from personalign.service.core import ServiceLimits, PersonalizationService, Principal
from personalign.service.routes.deps import service_of, who
from personalign.serving.schemas import AnswerIn, FitIn, OpinionsIn, PairsIn, UserIn

router = APIRouter(tags=["users"])


# ---- input checks the schemas cannot express (limits are configurable) ----------------------
def _text(value: str, name: str, limits: ServiceLimits) -> str:
    if not value.strip():
        raise DataError("empty", field=name)
    if len(value) > limits.max_text_chars:
        raise DataError(f"{len(value)} characters; at most {limits.max_text_chars}", field=name)
    return value


def _question(q, where: str, limits: ServiceLimits) -> tuple[str, tuple[str, ...]]:
    _text(q.question, f"{where}.question", limits)
    if len(q.options) > limits.max_options:
        raise DataError(f"{len(q.options)} options; at most {limits.max_options}",
                        field=f"{where}.options")
    options = require_options(q.options, "", None, f"{where}.options")  # the loaders' rules
    for i, o in enumerate(options):
        _text(o, f"{where}.options[{i}]", limits)
    return q.question, options


def _opinions(body: OpinionsIn, limits: ServiceLimits) -> list[Opinion]:
    out = []
    for i, o in enumerate(body.opinions):
        where = f"opinions[{i}]"
        question, options = _question(o, where, limits)
        if not 0 <= o.answer < len(options):
            raise DataError(f"answer {o.answer} is out of range for {len(options)} options",
                            field=f"{where}.answer")
        out.append(Opinion(question, options, o.answer))
    return out


# ---- routes ---------------------------------------------------------------------------------
@router.post("/v1/users", status_code=201)
def create_user(body: UserIn, p: Principal = Depends(who),
                service: PersonalizationService = Depends(service_of)) -> dict:
    service.require_admin(p)
    for k, v in body.profile.items():
        _text(v, f"profile.{k}", service.limits)
    if body.description is not None:
        _text(body.description, "description", service.limits)
    key = service.create_user(body.user_id, body.profile, body.description)
    return {"user_id": body.user_id, "api_key": key}


@router.post("/v1/users/{user_id}/opinions")
def add_opinions(user_id: str, body: OpinionsIn, p: Principal = Depends(who),
                 service: PersonalizationService = Depends(service_of)) -> dict:
    service.allow(p, user_id)
    total = service.add_opinions(user_id, _opinions(body, service.limits))
    return {"user_id": user_id, "added": len(body.opinions), "opinions": total}


@router.post("/v1/users/{user_id}/pairs")
def add_pairs(user_id: str, body: PairsIn, p: Principal = Depends(who),
              service: PersonalizationService = Depends(service_of)) -> dict:
    service.allow(p, user_id)
    pairs = [tuple(_text(text, f"pairs[{i}].{k}", service.limits) for k, text in
                   (("prompt", pair.prompt), ("chosen", pair.chosen), ("rejected", pair.rejected)))
             for i, pair in enumerate(body.pairs)]
    total = service.add_pairs(user_id, pairs)
    return {"user_id": user_id, "added": len(pairs), "pairs": total}


@router.post("/v1/users/{user_id}/fit", status_code=202)
def fit(user_id: str, body: FitIn, p: Principal = Depends(who),
        service: PersonalizationService = Depends(service_of)) -> dict:
    service.allow(p, user_id)
    return service.submit_fit(user_id, body.method, body.preset)


@router.get("/v1/jobs/{job_id}")
def job(job_id: str, p: Principal = Depends(who),
        service: PersonalizationService = Depends(service_of)) -> dict:
    return service.job(p, job_id)


@router.get("/v1/users/{user_id}")
def user(user_id: str, p: Principal = Depends(who),
         service: PersonalizationService = Depends(service_of)) -> dict:
    service.allow(p, user_id)
    return service.personalization_of(user_id)


@router.get("/v1/users/{user_id}/export")
def export(user_id: str, p: Principal = Depends(who),
           service: PersonalizationService = Depends(service_of)) -> dict:
    service.allow(p, user_id)
    return service.export(user_id)


@router.delete("/v1/users/{user_id}")
def delete_user(user_id: str, p: Principal = Depends(who),
                service: PersonalizationService = Depends(service_of)) -> dict:
    service.allow(p, user_id)
    return {"user_id": user_id, "deleted": True, "removed": service.delete_user(user_id)}


@router.post("/v1/users/{user_id}/answer")
def answer(user_id: str, body: AnswerIn, p: Principal = Depends(who),
           service: PersonalizationService = Depends(service_of)) -> dict:
    service.allow(p, user_id)
    questions = [Opinion(*_question(q, f"questions[{i}]", service.limits), 0)
                 for i, q in enumerate(body.questions)]
    name, answers = service.answer(user_id, questions)
    return {"method": name, "answers": [
        {"choice": a.choice,
         "answer": None if a.choice is None else q.options[a.choice], "prompt": a.prompt}
        for q, a in zip(questions, answers)]}
