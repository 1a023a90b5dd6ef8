"""API keys. Only the admin makes them (a leaked key must not mint keys that outlive its
revocation); a user lists and revokes their own."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from personalign.service.core import PersonalizationService, Principal
from personalign.service.routes.deps import service_of, who

router = APIRouter(tags=["keys"])


@router.get("/v1/users/{user_id}/keys")
def list_keys(user_id: str, p: Principal = Depends(who),
              service: PersonalizationService = Depends(service_of)) -> dict:
    return {"user_id": user_id, "keys": service.keys.list(service.allow(p, user_id))}


@router.post("/v1/users/{user_id}/keys", status_code=201)
def new_key(user_id: str, p: Principal = Depends(who),
            service: PersonalizationService = Depends(service_of)) -> dict:
    service.require_admin(p)
    token, key = service.keys.new_user_key(service.allow(p, user_id))
    return {"user_id": user_id, "api_key": token, "key": key}


@router.delete("/v1/users/{user_id}/keys/{key_id}")
def revoke_key(user_id: str, key_id: str, p: Principal = Depends(who),
               service: PersonalizationService = Depends(service_of)) -> dict:
    return {"user_id": user_id, "revoked": service.keys.revoke(service.allow(p, user_id), key_id)}


@router.post("/v1/users/{user_id}/keys/{key_id}/rotate", status_code=201)
def rotate_key(user_id: str, key_id: str, p: Principal = Depends(who),
               service: PersonalizationService = Depends(service_of)) -> dict:
    service.require_admin(p)
    token, key = service.keys.rotate(service.allow(p, user_id), key_id)
    return {"user_id": user_id, "api_key": token, "key": key, "revoked": key_id}


@router.get("/v1/admin/keys")
def admin_keys(p: Principal = Depends(who),
               service: PersonalizationService = Depends(service_of)) -> dict:
    service.require_admin(p)
    return {"keys": service.keys.list(None), "configured": service.keys.admin_configured}


@router.post("/v1/admin/keys/{key_id}/rotate", status_code=201)
def rotate_admin_key(key_id: str, p: Principal = Depends(who),
                     service: PersonalizationService = Depends(service_of)) -> dict:
    service.require_admin(p)
    token, key = service.keys.rotate(None, key_id)
    return {"api_key": token, "key": key, "revoked": key_id}
