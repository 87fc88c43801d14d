"""Online top-ups: a resident's intent, then the payment provider's signed confirmation.

Units are issued only when a webhook event passes every check: an HMAC-SHA256 signature over
``<timestamp>.<raw body>`` with the shared secret (compared in constant time), a timestamp
within the tolerance window, an event id never seen before, a known pending intent of the
same amount, and the wallet's tier limits. One transaction records the event, issues the
units (bank → reserve, float → wallet) and marks the intent paid, or does none of it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.errors import DomainError, InvalidInput, NotFound
from ledger.scheme import get_programme, issue
from ledger.transfers import Posting
from ledger.wallets import get_wallet, guard_credits

SIGNATURE_TOLERANCE_SECONDS = 300
SIGNATURE_HEADER = "Circuit-Signature"
EVENT_SUCCEEDED = "topup.succeeded"
_HEADER = re.compile(r"^t=([0-9]{1,12}),v1=([0-9a-f]{64})$")


class WebhookSignatureInvalid(DomainError):
    code = "webhook_signature_invalid"
    message = "The webhook signature is missing or does not match the body."
    message_fr = "La signature du webhook est absente ou ne correspond pas au contenu."


class WebhookTimestampStale(DomainError):
    code = "webhook_timestamp_stale"
    message = f"The webhook timestamp is more than {SIGNATURE_TOLERANCE_SECONDS} seconds from now."
    message_fr = "L'horodatage du webhook est trop éloigné de l'heure actuelle."


class WebhookReplayed(DomainError):
    code = "webhook_replayed"
    message = "This event was already received; nothing was done again."
    message_fr = "Cet événement a déjà été reçu ; rien n'a été refait."


class TopupIntentNotFound(NotFound):
    code = "topup_intent_not_found"
    message = "No top-up intent has this id."
    message_fr = "Aucune demande de rechargement ne correspond."


class TopupAlreadyPaid(DomainError):
    code = "topup_already_paid"
    message = "This top-up was already paid; units are issued once."
    message_fr = "Ce rechargement est déjà payé ; les unités ne sont émises qu'une fois."


class TopupAmountMismatch(DomainError):
    code = "topup_amount_mismatch"
    message = "The amount paid differs from the top-up's amount."
    message_fr = "Le montant payé diffère de celui du rechargement."


@dataclass(frozen=True, slots=True)
class TopupIntent:
    public_id: str
    wallet_id: int
    amount_cents: int
    status: str
    transfer_id: int | None
    created_at: datetime
    paid_at: datetime | None


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    event_id: str
    type: str
    intent_id: str
    amount_cents: int


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header a provider sends (what a provider adapter must produce)."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, header: str | None, body: bytes, *, now: float | None = None) -> WebhookEvent:
    """Check the signature and its freshness, then parse the event; refuses anything else."""
    match = _HEADER.match((header or "").strip())
    if match is None:
        raise WebhookSignatureInvalid()
    timestamp, given = int(match.group(1)), match.group(2)
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, given):
        raise WebhookSignatureInvalid()
    if abs((time.time() if now is None else now) - timestamp) > SIGNATURE_TOLERANCE_SECONDS:
        raise WebhookTimestampStale(timestamp=timestamp)
    try:
        payload = json.loads(body)
        event = WebhookEvent(str(payload["event_id"]), str(payload["type"]), str(payload["intent_id"]),
                             payload["amount_cents"])
    except (ValueError, KeyError, TypeError):
        raise InvalidInput("the event is JSON with event_id, type, intent_id and amount_cents") from None
    if type(event.amount_cents) is not int or not 1 <= len(event.event_id) <= 200:
        raise InvalidInput("amount_cents is an integer and event_id 1 to 200 characters")
    return event


_INTENT_COLUMNS = "public_id, wallet_id, amount_cents, status, transfer_id, created_at, paid_at"


async def create_intent(conn: AsyncConnection, *, wallet_id: int, amount_cents: int) -> TopupIntent:
    """Record what the resident wants to pay; refused now if it would break the tier."""
    if type(amount_cents) is not int or amount_cents <= 0:
        raise InvalidInput("the amount is a positive whole number of cents")
    wallet = await get_wallet(conn, wallet_id)
    await guard_credits(conn, [Posting(wallet.account_id, amount_cents)])
    row = (
        await conn.execute(
            text(f"INSERT INTO topup_intents (public_id, wallet_id, amount_cents) VALUES (:p, :w, :a) "
                 f"RETURNING {_INTENT_COLUMNS}"),
            {"p": "ti_" + secrets.token_urlsafe(18), "w": wallet.id, "a": amount_cents},
        )
    ).one()
    return TopupIntent(*row)


async def get_intent(conn: AsyncConnection, public_id: str) -> TopupIntent:
    row = (await conn.execute(text(f"SELECT {_INTENT_COLUMNS} FROM topup_intents WHERE public_id = :p"),
                              {"p": public_id})).one_or_none()
    if row is None:
        raise TopupIntentNotFound(intent_id=public_id)
    return TopupIntent(*row)


async def apply_event(conn: AsyncConnection, event: WebhookEvent) -> TopupIntent:
    """Issue the units of a verified ``topup.succeeded`` event, once."""
    if event.type != EVENT_SUCCEEDED:
        raise InvalidInput(f"only {EVENT_SUCCEEDED} events are handled", type=event.type)
    intent = (
        await conn.execute(
            text("SELECT id, wallet_id, amount_cents, status FROM topup_intents WHERE public_id = :p FOR UPDATE"),
            {"p": event.intent_id},
        )
    ).one_or_none()
    if intent is None:
        raise TopupIntentNotFound(intent_id=event.intent_id)
    seen = (
        await conn.execute(
            text("INSERT INTO topup_events (event_id, intent_id) VALUES (:e, :i) ON CONFLICT DO NOTHING RETURNING 1"),
            {"e": event.event_id, "i": intent.id},
        )
    ).scalar()
    if seen is None:
        raise WebhookReplayed(event_id=event.event_id)
    if intent.status != "pending":
        raise TopupAlreadyPaid(intent_id=event.intent_id)
    if event.amount_cents != intent.amount_cents:
        raise TopupAmountMismatch(intent_id=event.intent_id, expected_cents=intent.amount_cents,
                                  paid_cents=event.amount_cents)
    wallet = await get_wallet(conn, intent.wallet_id)
    programme = await get_programme(conn, wallet.programme_id)
    await guard_credits(conn, [Posting(wallet.account_id, intent.amount_cents)])
    result = await issue(conn, key=f"topup:{event.intent_id}", programme=programme,
                         to_account_id=wallet.account_id, amount_cents=intent.amount_cents,
                         metadata={"wallet_id": wallet.id, "channel": "online", "event_id": event.event_id})
    await conn.execute(
        text("UPDATE topup_intents SET status = 'paid', transfer_id = :t, paid_at = now() WHERE id = :i"),
        {"t": result.transfer_id, "i": intent.id},
    )
    return await get_intent(conn, event.intent_id)
