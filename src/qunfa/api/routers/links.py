"""``GET`` and ``HEAD /l/{code}``: a campaign's tracked short link (docs/compliance.md).

The code is verified against the target stored with its campaign before anything else: an
unknown, malformed or tampered code is a plain 404, never a redirect to anything the request
chose. A genuine one records the click (per person when the link carries a recipient part) and
answers 302 to the target with its UTM parameters.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from qunfa.api.deps import ContainerDep
from qunfa.services.links import LinkService, NotFound

router = APIRouter(tags=["links"])


@router.api_route("/l/{token}", methods=["GET", "HEAD"], include_in_schema=False)
def tracked_link(token: str, request: Request, c: ContainerDep) -> Response:
    """A tracked link was opened: record the click, send the reader on (302). ``HEAD`` (link
    checkers, mail scanners) gets the same answer and counts nothing."""
    try:
        url = LinkService(c).click(
            token, request.headers.get("user-agent"), record=request.method != "HEAD"
        )
    except NotFound:
        return PlainTextResponse("no such link", status_code=404)
    # Every click must reach qunfa to be counted: no cache may answer for it.
    return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})
