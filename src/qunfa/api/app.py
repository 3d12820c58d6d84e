"""The FastAPI application factory (``qunfa serve`` runs it with uvicorn)."""

from __future__ import annotations

from fastapi import FastAPI

from qunfa.api.routers import (
    accounts,
    advise,
    callbacks,
    callbacks_receipts,
    callbacks_wecom,
    campaigns,
    consent,
    contacts,
    events,
    links,
    materials,
    personal_wechat,
    quota,
    review,
    segments,
    tags,
)
from qunfa.bootstrap import Container
from qunfa.console import pages


def create_app(container: Container) -> FastAPI:
    app = FastAPI(
        title="qunfa",
        version="0.1.0",
        description="群发 — mass messaging across the WeChat ecosystem, exactly once.",
    )
    app.state.container = container
    app.include_router(callbacks.router)
    app.include_router(callbacks_wecom.router)
    app.include_router(callbacks_receipts.router)
    app.include_router(quota.router)  # before campaigns: POST …/{id}/plan
    app.include_router(campaigns.router)
    app.include_router(campaigns.check_router)
    app.include_router(review.router)
    app.include_router(__import__("qunfa.api.routers.timing").api.routers.timing.router)
    app.include_router(accounts.router)
    app.include_router(tags.router)
    app.include_router(personal_wechat.router)
    app.include_router(links.router)  # GET /l/{code}: tracked short links
    app.include_router(contacts.router)
    app.include_router(advise.router)
    app.include_router(segments.router)
    app.include_router(consent.router)
    app.include_router(events.router)
    app.include_router(materials.router)
    app.include_router(pages.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app
