"""The employer's ZIP of a whole order is rendered once, off the request path, through HTTP:
202 with Retry-After until it is ready, then the same file for every request; one server
process at a time renders an order; a revoked voucher's replacement gets a new ZIP."""

from __future__ import annotations

import csv
import io
import zipfile

import pytest
from sqlalchemy import text

from fixtures_vouchers import download_order_zip, valid_siret

pytestmark = pytest.mark.usefixtures("voucher_zip_dir")

SIREN = "732829320"


@pytest.fixture(scope="module")
async def scheme(client, operator):
    issuer = (await client.post("/issuers", json={"name": "Office", "siren": SIREN}, headers=operator)).json()
    programme = (await client.post("/programmes", headers=operator, json={
        "issuer_id": issuer["id"], "kind": "gift", "name": "Chèque cadeau", "face_value_min_cents": 1000,
        "face_value_max_cents": 20000})).json()
    employers = []
    for number, email in enumerate(("rh@zip-one.example", "rh@zip-two.example"), start=1):
        employer = (await client.post("/employers", headers=operator, json={
            "issuer_id": issuer["id"], "name": email, "siret": valid_siret(number)})).json()
        await client.post(f"/employers/{employer['id']}/users", headers=operator,
                          json={"email": email, "password": "a long employer password"})
        login = await client.post("/auth/login", json={"email": email, "password": "a long employer password"})
        employers.append({"Authorization": f"Bearer {login.json()['token']}"})
    return {"programme_id": programme["id"], "employer": employers[0], "other": employers[1]}


async def _confirmed_order(client, scheme, names: list[str]) -> tuple[int, int]:
    order = await client.post("/voucher-orders", headers=scheme["employer"], json={
        "programme_id": scheme["programme_id"], "event": "christmas",
        "lines": [{"beneficiary_name": name, "amount_cents": 2500} for name in names]})
    assert order.status_code == 201, order.text
    confirmed = await client.post(f"/voucher-orders/{order.json()['id']}/confirm", headers=scheme["employer"])
    return order.json()["id"], confirmed.json()["quote"]["total_cents"]


async def _pay(client, operator, order_id: int, total_cents: int) -> None:
    paid = await client.post(f"/voucher-orders/{order_id}/payment", headers=operator,
                             json={"amount_cents": total_cents, "reference": f"VIR {order_id}"})
    assert paid.json()["status"] == "issued", paid.text


def _codes(response) -> set[str]:
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    rows = csv.DictReader(io.StringIO(archive.read("codes.csv").decode("utf-8-sig")), delimiter=";")
    return {row["code"] for row in rows}


async def test_the_zip_is_rendered_once_at_issue_and_then_served_as_a_file(client, operator, scheme, voucher_zip_dir):
    order_id, total = await _confirmed_order(client, scheme, ["Ane", "Beñat", "Camille"])
    await _pay(client, operator, order_id, total)  # issuance starts the rendering
    ready = await download_order_zip(client, order_id, scheme["employer"])
    assert ready.status_code == 200, ready.text
    assert ready.headers["content-type"] == "application/zip"
    assert ready.headers["content-disposition"] == f'attachment; filename="order-{order_id}-vouchers.zip"'
    vouchers = (await client.get(f"/voucher-orders/{order_id}/vouchers", headers=scheme["employer"])).json()
    assert _codes(ready) == {v["code"] for v in vouchers}
    (kept,) = voucher_zip_dir.glob(f"order-{order_id}-*.zip")
    rendered_at = kept.stat().st_mtime_ns
    again = await client.get(f"/voucher-orders/{order_id}/vouchers.zip", headers=scheme["employer"])
    assert again.status_code == 200 and again.content == ready.content
    assert kept.stat().st_mtime_ns == rendered_at, "served from the file, not rendered again"


async def test_while_another_process_renders_the_order_the_answer_is_202(client, operator, engine, scheme,
                                                                          voucher_zip_dir):
    order_id, total = await _confirmed_order(client, scheme, ["Dominique", "Eneko"])
    lock = f"circuit.voucher-order-zip:{order_id}"
    async with engine.connect() as other_process:  # holds the order's rendering lock, as a busy server would
        assert await other_process.scalar(text("SELECT pg_try_advisory_lock(hashtextextended(:lock, 0))"),
                                          {"lock": lock})
        await _pay(client, operator, order_id, total)
        for _ in range(3):
            pending = await client.get(f"/voucher-orders/{order_id}/vouchers.zip", headers=scheme["employer"])
            assert pending.status_code == 202, pending.text
            assert int(pending.headers["retry-after"]) >= 1
            assert pending.json() == {"status": "rendering", "retry_after_s": int(pending.headers["retry-after"])}
        assert not list(voucher_zip_dir.glob(f"order-{order_id}-*.zip")), "nobody else rendered it meanwhile"
        await other_process.execute(text("SELECT pg_advisory_unlock(hashtextextended(:lock, 0))"), {"lock": lock})
    ready = await download_order_zip(client, order_id, scheme["employer"])
    assert ready.status_code == 200 and len(_codes(ready)) == 2


async def test_a_revoked_voucher_gives_a_new_zip_with_its_replacement(client, operator, scheme, voucher_zip_dir):
    order_id, total = await _confirmed_order(client, scheme, ["Fanny", "Gorka"])
    await _pay(client, operator, order_id, total)
    before = await download_order_zip(client, order_id, scheme["employer"])
    lost = (await client.get(f"/voucher-orders/{order_id}/vouchers", headers=scheme["employer"])).json()[0]
    abandoned = voucher_zip_dir / f".order-{order_id}-0123abcd.zip.4242.part"  # a worker killed mid-way
    abandoned.write_bytes(b"PK half a zip")
    revoked = await client.post(f"/vouchers/{lost['id']}/revoke", headers=operator, json={"reason": "lost"})
    replacement = revoked.json()["replacement"]["code"]
    after = await download_order_zip(client, order_id, scheme["employer"])
    assert after.status_code == 200
    assert lost["code"] in _codes(before) and lost["code"] not in _codes(after) and replacement in _codes(after)
    assert len(list(voucher_zip_dir.glob(f"order-{order_id}-*.zip"))) == 1, "the stale ZIP is gone"
    assert not abandoned.exists()


async def test_no_zip_before_issue_nor_for_another_employer(client, operator, scheme):
    order_id, total = await _confirmed_order(client, scheme, ["Haizea"])
    early = await client.get(f"/voucher-orders/{order_id}/vouchers.zip", headers=scheme["employer"])
    assert early.status_code == 409 and early.json()["code"] == "order_not_issued"
    await _pay(client, operator, order_id, total)
    stranger = await client.get(f"/voucher-orders/{order_id}/vouchers.zip", headers=scheme["other"])
    assert stranger.status_code == 404
