"""Material library against the sandbox twins over HTTP: uploads once, expiry, 40007, refusals."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qunfa.bootstrap import Container
from qunfa.channels.http import HttpClient
from qunfa.content.mediafile import jpeg_header, mp4_header, png_header
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.services.materials import MaterialError
from tests.conftest import make_oa


def _run(coro: Any) -> Any:
    async def go() -> Any:
        async with HttpClient() as http:
            return await coro(http)

    return asyncio.run(go())


def test_upload_once_cache_expiry_and_40007(
    container: Container, sandbox: EmbeddedSandbox, admin: SandboxAdmin
) -> None:
    oa = make_oa(admin, container, sandbox.url, followers=5, sync=False)
    acc = container.accounts.get(oa.appid)
    m = container.materials
    v = m.create(kind="image", title="海报", body={"default": {}},
                 data=png_header(720, 1280) + b"\0" * 100, filename="a.png")  # fmt: skip
    assert (v.width, v.height, v.mime) == (720, 1280, "image/png") and len(v.sha256 or "") == 64

    async def twice(http: HttpClient) -> tuple[str, str]:
        a = await m.media_id(v.id, acc, "wechat_oa", http, kind="temporary")
        b = await m.media_id(v.id, acc, "wechat_oa", http, kind="temporary")
        return a, b

    first, second = _run(twice)
    assert first == second
    assert admin.get("/_sandbox/calls?path=media/upload")["calls"] == 1
    # expiry: three days later both clocks have moved; the cached id is re-uploaded
    admin.advance_clock(3 * 86400 + 10)
    real = m.clock
    m.clock = lambda: real() + 3 * 86400 + 10
    third = _run(lambda http: m.media_id(v.id, acc, "wechat_oa", http, kind="temporary"))
    assert third != first
    # 3 calls: the old token also expired in those 3 days, so one is refused (42001) and retried
    assert admin.get("/_sandbox/calls?path=media/upload")["calls"] == 3
    # the platform forgets it (40007): invalidate → the next call uploads again
    admin.post("/_sandbox/media/forget", {"media_id": third})
    assert m.invalidate(third) == 1
    fourth = _run(lambda http: m.media_id(v.id, acc, "wechat_oa", http, kind="temporary"))
    assert fourth not in (first, third)


def test_twin_refuses_bad_type_and_size_and_unknown_ids(
    container: Container, sandbox: EmbeddedSandbox, admin: SandboxAdmin
) -> None:
    oa = make_oa(admin, container, sandbox.url, followers=5, sync=False,
                 sandbox_rules={"media_video_max_bytes": 200})  # fmt: skip
    acc = container.accounts.get(oa.appid)
    m = container.materials
    big = m.create(kind="video", title="v", body={"default": {}},
                   data=mp4_header(30) + b"\0" * 400, filename="v.mp4")  # fmt: skip
    assert big.duration == 30
    with pytest.raises(MaterialError, match="45001"):
        _run(lambda http: m.media_id(big.id, acc, "wechat_oa", http))
    gif = m.create(kind="image", title="g", body={"default": {}},
                   data=b"GIF89a\x10\x00\x10\x00" + b"\0" * 50, filename="g.gif")  # fmt: skip
    ok = _run(lambda http: m.media_id(gif.id, acc, "wechat_oa", http))
    assert ok
    with pytest.raises(MaterialError, match="not an image"):
        m.create(kind="image", title="x", body={"default": {}}, data=b"%PDF-1.4 x", filename="x")


def test_resolve_variants_and_use_and_send_media_id(
    container: Container, sandbox: EmbeddedSandbox, admin: SandboxAdmin
) -> None:
    oa = make_oa(admin, container, sandbox.url, followers=5)
    acc = container.accounts.get(oa.appid)
    m = container.materials
    txt = m.create(kind="text", title="t", body={
        "default": {"text": "默认文本"}, "wechat_oa": {"text": "公众号文本"}})  # fmt: skip
    assert m.resolve_content({"material_id": txt.material_id}, "wechat_oa") == {
        "msgtype": "text", "text": {"content": "公众号文本"}}  # fmt: skip
    assert m.resolve_content({"material_id": txt.material_id}, "wecom_app")["text"] == {
        "content": "默认文本"}  # fmt: skip
    v2 = m.new_version(txt.material_id, body={"default": {"text": "第二版"}})
    assert v2.version == 2 and m.version(txt.material_id, 1).body["default"]["text"] == "默认文本"
    cover = m.create(kind="image", title="封面", body={"default": {}},
                     data=jpeg_header(900, 500), filename="c.jpg")  # fmt: skip
    news = m.create(kind="news", title="图文", body={"default": {"articles": [{
        "title": "标题", "content": "<p>正文</p>", "digest": "摘要",
        "cover_material_id": cover.material_id}]}})  # fmt: skip
    ref = {"material_id": news.material_id, "version": 1}
    content = _run(lambda http: m.content_for_send(ref, acc, "wechat_oa", http))
    media_id = content["mpnews"]["media_id"]
    assert content["msgtype"] == "mpnews" and not media_id.startswith("@media")
    camp = container.campaigns.create(name="n", channel="wechat_oa", account=oa.appid,
                                      audience="all", content=content)  # fmt: skip
    m.record_use(news.material_id, 1, camp.id)
    m.record_use(news.material_id, 1, camp.id)
    assert [(u.version, u.campaign_id) for u in m.uses(news.material_id)] == [(1, camp.id)]


# -- sending a campaign that references a material (dispatcher wiring) ----------------------------
def _sandbox_rows(sandbox: EmbeddedSandbox, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import sqlite3

    with sqlite3.connect(sandbox.state_path) as db:
        return list(db.execute(sql, args))


def _accepted(c: Container, campaign_id: int) -> bool:
    batches = c.campaigns.status(campaign_id)["batches"]
    return set(batches) <= {"accepted", "done"} and bool(batches)


def _ledger(admin: SandboxAdmin, appid: str, want: int) -> int:
    """The twin's ledger count once the mass job has completed (it runs a moment later)."""
    import time

    deadline = time.monotonic() + 10
    while (got := int(admin.ledger("wechat_oa", appid)["messages"])) < want:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return got


def test_campaign_with_a_material_sends_the_uploaded_media_id_and_reuploads_on_40007(
    container: Container, sandbox: EmbeddedSandbox, admin: SandboxAdmin
) -> None:
    from sqlalchemy import select

    from qunfa.storage.models import MediaUpload
    from tests.conftest import drain

    oa = make_oa(admin, container, sandbox.url, followers=6)
    m = container.materials
    img = m.create(kind="image", title="海报", body={"default": {}},
                   data=png_header(720, 1280) + b"\0" * 64, filename="p.png")  # fmt: skip
    camp = container.campaigns.create(
        name="poster",
        channel="wechat_oa",
        account=oa.appid,
        audience="all",
        content={"material_id": img.material_id},
    )
    # the reference is stored with its version pinned, and the use is recorded at creation
    assert camp.content == {"material_id": img.material_id, "version": 1}
    assert [(u.version, u.campaign_id) for u in m.uses(img.material_id)] == [(1, camp.id)]
    container.campaigns.start(camp.id, actor="alice")
    drain(container)
    assert _accepted(container, camp.id)
    assert _ledger(admin, oa.appid, 6) == 6
    with container.sessions() as s:
        first = s.scalars(select(MediaUpload.media_id)).one()
    # the twin only takes media ids it issued: the send carried the uploaded one, as an image
    assert _sandbox_rows(sandbox, "SELECT media_id, kind FROM media") == [(first, "permanent")]
    assert _sandbox_rows(sandbox, "SELECT msgtype FROM mass_jobs WHERE appid = ?", oa.appid) == [
        ("image",)
    ]
    assert admin.get("/_sandbox/calls?path=material/add_material")["calls"] == 1

    # The platform forgets the material (deleted in the MP console): the next campaign's first
    # send gets 40007, qunfa forgets its cached id, the retry uploads again and sends.
    admin.post("/_sandbox/media/forget", {"media_id": first})
    again = container.campaigns.create(
        name="again",
        channel="wechat_oa",
        account=oa.appid,
        audience="all",
        content={"material_id": img.material_id},
    )
    container.campaigns.start(again.id, actor="alice")
    drain(container)
    assert _accepted(container, again.id)
    assert _ledger(admin, oa.appid, 12) == 12
    # three mass sends: the first campaign's, the refused one (40007), and its retry
    assert admin.get("/_sandbox/calls?path=message/mass/sendall")["calls"] == 3
    from qunfa.storage.models import Batch

    with container.sessions() as s:
        attempts = s.scalars(select(Batch.attempts).where(Batch.campaign_id == again.id)).all()
    assert attempts == [2]  # refused once with 40007, then sent with the new upload
    assert admin.get("/_sandbox/calls?path=material/add_material")["calls"] == 2
    with container.sessions() as s:
        second = s.scalars(select(MediaUpload.media_id)).one()
    assert second != first
    assert [u.campaign_id for u in m.uses(img.material_id)] == [camp.id, again.id]


def test_material_upload_refused_fails_the_batch_with_the_platform_words(
    container: Container, sandbox: EmbeddedSandbox, admin: SandboxAdmin
) -> None:
    from tests.conftest import drain

    oa = make_oa(admin, container, sandbox.url, followers=4,
                 sandbox_rules={"media_image_max_bytes": 100})  # fmt: skip
    img = container.materials.create(
        kind="image",
        title="big",
        body={"default": {}},
        data=png_header(720, 1280) + b"\0" * 400,
        filename="b.png",
    )
    camp = container.campaigns.create(
        name="big",
        channel="wechat_oa",
        account=oa.appid,
        audience="all",
        content={"material_id": img.material_id},
    )
    container.campaigns.start(camp.id, actor="alice")
    drain(container)
    status = container.campaigns.status(camp.id)
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == 0
    assert status["deliveries"].get("failed", 0) == 4 or status["batches"].get("failed")


def test_unknown_material_is_refused_at_create(
    container: Container, sandbox: EmbeddedSandbox, admin: SandboxAdmin
) -> None:
    from qunfa.services.campaigns import CampaignError

    oa = make_oa(admin, container, sandbox.url, followers=2, sync=False)
    with pytest.raises(CampaignError, match="no material 999"):
        container.campaigns.create(name="x", channel="wechat_oa", account=oa.appid,
                                   audience="all", content={"material_id": 999})  # fmt: skip


def test_a_qr_code_in_the_campaign_image_needs_review_and_its_link_is_checked(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    from qunfa.services.review import GateClosed
    from tests.unit.test_qr import qr_png

    oa = make_oa(admin, container, sandbox.url, followers=6)
    m = container.materials

    def campaign(name: str, data: bytes) -> int:
        v = m.create(kind="image", title=name, body={"default": {}}, data=data, filename="q.png")
        return container.campaigns.create(
            name=name, channel="wechat_oa", account=oa.appid, audience="all",
            content={"material_id": v.material_id},
        ).id  # fmt: skip

    def report(campaign_id: int) -> dict[str, Any]:
        container.review.check(campaign_id, "alice")
        return container.campaigns.get(campaign_id).check_report or {}

    card = campaign("会员卡", qr_png("会员卡号 A100"))
    ip = campaign("带码海报", qr_png("http://8.8.8.8/关注有礼"))
    plain = campaign("海报", png_header(720, 1280) + b"\0" * 64)

    r = report(card)  # a code: a person must look at it
    assert r["verdict"] == "review"
    qr = [f for f in r["lint"] if f["rule"] == "media.qr_code"]
    assert len(qr) == 1 and "会员卡号 A100" in qr[0]["message"]
    with pytest.raises(GateClosed, match="approv"):
        container.campaigns.start(card, actor="alice")

    r = report(ip)  # the decoded link went through the link rules: a raw IP blocks
    assert r["verdict"] == "block"
    (link,) = [f for f in r["fields"] if f["path"] == "material.media.qr[0].text"]
    assert link["verdict"] == "block" and link["findings"][0]["category"] == "link_ip"

    assert not [f for f in report(plain)["lint"] if f["rule"] == "media.qr_code"]
