"""A shop applies, the operator reviews it: approval per programme, rejection, suspension."""

from __future__ import annotations

import uuid

import pyotp
import pytest
from sqlalchemy import text

from fixtures_merchants import fresh_siret
from ledger import merchants


def _form(issuer_id: int, programme_ids: list[int], **overrides) -> dict:
    form = {
        "issuer_id": issuer_id, "legal_name": "Boulangerie Saint-Martial SAS",
        "trade_name": "Boulangerie Saint-Martial", "siret": fresh_siret(),
        "iban": "FR76 3000 6000 0112 3456 7890 189", "category": "alimentation", "naf_code": "1071C",
        "address_line": "12 rue Saint-Martial", "postcode": "16000", "commune": "Angoulême",
        "commune_insee": "16015", "email": "Contact@Boulangerie.test", "phone": "+33 5 45 00 00 01",
        "programme_ids": programme_ids,
        "owner": {"email": f"owner-{uuid.uuid4().hex[:6]}@boulangerie.test", "password": "a long password 1"},
    }
    form.update(overrides)
    return form


async def _events(engine, merchant_id: int) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(
            text("SELECT event_type FROM audit_inbox WHERE payload->>'merchant_id' = :id ORDER BY id "),
            {"id": str(merchant_id)})).scalars())


async def test_shop_applies_with_checked_identity_and_owner_can_sign_in(client, engine, merchant_issuer, merchant_programme):
    form = _form(merchant_issuer, [merchant_programme.id])
    response = await client.post("/merchant-applications/", json=form)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "applied"
    assert body["iban"] == "FR7630006000011234567890189"
    assert body["bic"] == "AGRIFRPPXXX"  # found from the IBAN by the bank registry
    assert body["naf_code"] == "10.71C"
    assert body["email"] == "contact@boulangerie.test"
    assert body["phone"] == "+33545000001"
    assert [p["status"] for p in body["programmes"]] == ["requested"]
    assert await _events(engine, body["id"]) == ["merchant.applied"]

    login = await client.post("/auth/login", json={"email": form["owner"]["email"], "password": "a long password 1"})
    assert login.status_code == 200
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {login.json()['token']}"})
    assert me.json()["merchant_id"] == body["id"] and me.json()["role"] == "merchant_owner"


async def test_application_names_every_wrong_field_in_both_languages(client, merchant_issuer, merchant_programme):
    form = _form(merchant_issuer, [merchant_programme.id], siret="73282932000075", iban="FR76 3000 6000 0112 3456 7890 188",
                 naf_code="47-61", postcode="1600", phone="call me", email="nobody")
    response = await client.post("/merchant-applications/", json=form)
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid_application"
    assert body["detail_fr"].startswith("Certains champs")
    assert set(body["fields"]) == {"siret", "iban", "naf_code", "postcode", "phone", "email"}


async def test_category_must_be_from_the_issuers_list(client, merchant_issuer, merchant_programme):
    response = await client.post("/merchant-applications/", json=_form(merchant_issuer, [merchant_programme.id], category="casino"))
    assert response.status_code == 422
    assert response.json()["fields"] == {"category": "not in this issuer's list of categories"}
    categories = await client.get("/merchant-applications/categories", params={"issuer_id": merchant_issuer})
    assert {c["code"] for c in categories.json()} == {"librairie", "alimentation", "supermarche"}


async def test_same_siret_cannot_apply_twice(client, merchant_issuer, merchant_programme):
    form = _form(merchant_issuer, [merchant_programme.id])
    assert (await client.post("/merchant-applications/", json=form)).status_code == 201
    again = _form(merchant_issuer, [merchant_programme.id], siret=form["siret"])
    response = await client.post("/merchant-applications/", json=again)
    assert response.status_code == 409 and response.json()["code"] == "siret_taken"


async def test_operator_approves_per_programme_and_the_ledger_account_opens(
    client, engine, operator, merchant_issuer, merchant_programme, make_programme,
):
    bulle = await make_programme(kind="local_currency", unit="BUL", name="La Bulle (test)")
    applied = (await client.post("/merchant-applications/", json=_form(merchant_issuer, [merchant_programme.id, bulle.id]))).json()

    approved = await client.post(f"/merchants/{applied['id']}/approve", json={"programme_ids": [merchant_programme.id]}, headers=operator)
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["merchant"]["status"] == "approved"
    assert {p["programme_id"]: p["status"] for p in body["merchant"]["programmes"]} == {
        merchant_programme.id: "approved", bulle.id: "requested"}
    account_id = body["accounts"][str(merchant_programme.id)]
    account = (await client.get(f"/ledger/accounts/{account_id}", headers=operator)).json()
    assert (account["kind"], account["unit"], account["owner_id"], account["balance_cents"]) == (
        "merchant", "EUR", str(applied["id"]), 0)

    refused = await client.post(f"/merchants/{applied['id']}/programmes/{bulle.id}/refuse",
                                json={"reason": "not a local producer"}, headers=operator)
    assert {p["programme_id"]: p["status"] for p in refused.json()["programmes"]}[bulle.id] == "refused"
    assert await _events(engine, applied["id"]) == ["merchant.applied", "merchant.approved", "merchant.programme_refused"]


async def test_approval_respects_the_programmes_acceptance_rules(client, operator, merchant_issuer, make_programme):
    no_supermarkets = await make_programme(name="Cœur de ville", categories_excluded=["supermarche"])
    shop = (await client.post("/merchant-applications/", json=_form(
        merchant_issuer, [no_supermarkets.id], category="supermarche"))).json()
    response = await client.post(f"/merchants/{shop['id']}/approve", json={"programme_ids": [no_supermarkets.id]}, headers=operator)
    assert response.status_code == 409
    assert (response.json()["code"], response.json()["rule"]) == ("programme_refuses_merchant", "category_excluded")
    still = (await client.get(f"/merchants/{shop['id']}", headers=operator)).json()
    assert still["status"] == "applied"


async def test_reject_suspend_reinstate_follow_the_review_rules(client, engine, operator, merchant_issuer, merchant_programme):
    rejected = (await client.post("/merchant-applications/", json=_form(merchant_issuer, [merchant_programme.id]))).json()
    no_reason = await client.post(f"/merchants/{rejected['id']}/reject", json={"reason": ""}, headers=operator)
    assert no_reason.status_code == 400
    response = await client.post(f"/merchants/{rejected['id']}/reject", json={"reason": "SIRET closed"}, headers=operator)
    assert response.json()["status"] == "rejected" and response.json()["status_reason"] == "SIRET closed"
    late = await client.post(f"/merchants/{rejected['id']}/approve", json={"programme_ids": [merchant_programme.id]}, headers=operator)
    assert late.status_code == 409 and late.json()["code"] == "merchant_status_conflict"

    shop = (await client.post("/merchant-applications/", json=_form(merchant_issuer, [merchant_programme.id]))).json()
    cannot = await client.post(f"/merchants/{shop['id']}/suspend", json={"reason": "complaints"}, headers=operator)
    assert cannot.status_code == 409  # only an approved shop can be suspended
    await client.post(f"/merchants/{shop['id']}/approve", json={"programme_ids": [merchant_programme.id]}, headers=operator)
    suspended = await client.post(f"/merchants/{shop['id']}/suspend", json={"reason": "complaints"}, headers=operator)
    assert suspended.json()["status"] == "suspended"
    reinstated = await client.post(f"/merchants/{shop['id']}/reinstate", json={}, headers=operator)
    assert reinstated.json()["status"] == "approved"
    assert await _events(engine, shop["id"]) == [
        "merchant.applied", "merchant.approved", "merchant.suspended", "merchant.reinstated"]
    actors = await _actors(engine, shop["id"])
    assert actors[0].startswith("applicant:") and all(actor.startswith("user:") for actor in actors[1:])


async def _actors(engine, merchant_id: int) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(
            text("SELECT actor FROM audit_inbox WHERE payload->>'merchant_id' = :id ORDER BY id"),
            {"id": str(merchant_id)})).scalars())


async def test_review_is_for_operators_only(client, approved_merchant, merchant_programme):
    shop = await approved_merchant()
    response = await client.post(f"/merchants/{shop.id}/suspend", json={"reason": "me"}, headers=shop.headers)
    assert response.status_code == 403


async def test_fixture_merchant_is_approved_with_an_owner_using_totp(client, approved_merchant):
    shop = await approved_merchant()
    me = await client.get("/auth/me", headers=shop.headers)
    assert me.json()["merchant_id"] == shop.id
    assert set(shop.accounts) == {"EUR"}
    without_code = await client.post("/auth/login", json={"email": shop.owner_email, "password": shop.owner_password})
    assert without_code.json()["code"] == "totp_required"
    assert pyotp.TOTP(shop.totp_secret).now().isdigit()


@pytest.mark.parametrize("iban", ["US12345678901234567890", "FR76 3000 6000 0112 3456 7890 18"])
def test_iban_must_be_a_valid_sepa_account(iban, merchant_issuer=1):
    from fixtures_merchants import application

    with pytest.raises(merchants.InvalidApplication) as refused:
        merchants.normalise(application(merchant_issuer, [1], iban=iban))
    assert "iban" in refused.value.details["fields"]
