"""Wallets over HTTP: residents (their own wallet), the operator (tiers, campaigns, town
payments), the public opening form, and the payment provider's top-up webhook.

Every write takes an ``Idempotency-Key`` header; a retried request returns the first
result and moves nothing twice. Refusals are the domain's typed errors (api/errors.py).
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime, timedelta
from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.auth import AuthUser, Role, create_user, issue_token, requires
from api.errors import ApiError
from api.routes.ledger import IdempotencyKey, PositiveCents, _require_key
from audit.chain import set_actor
from ledger import rotating_codes, topups, wallets
from api.throttle import client_ip, hit

WALLET_TOKEN_TTL = timedelta(days=365)
OPENINGS_PER_IP_PER_HOUR = 20
VOUCHER_ADDS_PER_HOUR = 30  # a code is a bearer secret: no guessing them through this door
WEBHOOK_SECRET_ENV = "CIRCUIT_TOPUP_WEBHOOK_SECRET"


class CodeSetup(msgspec.Struct):
    """What the wallet page needs to compute rotating codes with no network."""

    secret: str
    prefix: str
    step_seconds: int
    digits: int


class WalletOut(msgspec.Struct):
    id: int
    programme_id: int
    display_name: str
    email: str | None
    phone: str | None
    tier: str
    unit: str
    balance_cents: int
    received_month_cents: int
    hold_max_cents: int
    receive_month_max_cents: int
    campaign_id: int | None


class MyWalletOut(msgspec.Struct):
    wallet: WalletOut
    code: CodeSetup


class OpenIn(msgspec.Struct, forbid_unknown_fields=True):
    display_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    email: Annotated[str, msgspec.Meta(max_length=254)] | None = None
    phone: Annotated[str, msgspec.Meta(max_length=30)] | None = None
    password: Annotated[str, msgspec.Meta(min_length=10, max_length=256)] | None = None
    programme_id: int | None = None


class AdminOpenIn(msgspec.Struct, forbid_unknown_fields=True):
    display_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    email: Annotated[str, msgspec.Meta(max_length=254)] | None = None
    phone: Annotated[str, msgspec.Meta(max_length=30)] | None = None
    programme_id: int | None = None
    tier: str = "unverified"


class OpenedOut(msgspec.Struct):
    wallet: WalletOut
    token: str
    expires_at: datetime | None


class PayIn(msgspec.Struct, forbid_unknown_fields=True):
    merchant_id: Annotated[int, msgspec.Meta(gt=0)]
    amount_cents: PositiveCents


class TransferIn(msgspec.Struct, forbid_unknown_fields=True):
    to_wallet_id: Annotated[int, msgspec.Meta(gt=0)]
    amount_cents: PositiveCents


class TopupIn(msgspec.Struct, forbid_unknown_fields=True):
    amount_cents: PositiveCents


class PaymentOut(msgspec.Struct):
    transfer_id: int
    merchant_id: int
    wallet_id: int | None
    amount_cents: int
    programme_id: int
    unit: str


class MovedOut(msgspec.Struct):
    transfer_id: int


class TopupOut(msgspec.Struct):
    intent_id: str
    wallet_id: int
    amount_cents: int
    status: str
    transfer_id: int | None
    created_at: datetime
    paid_at: datetime | None


class HistoryOut(msgspec.Struct):
    transfer_id: int
    kind: str
    amount_cents: int
    at: datetime
    merchant_id: int | None
    merchant_name: str | None
    other_wallet_id: int | None


class GiftVoucherIn(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]


class GiftVoucherOut(msgspec.Struct):
    voucher_id: int
    code: str
    programme_name: str
    unit: str
    balance_cents: int
    expires_at: datetime
    status: str
    token: str


class MerchantCardOut(msgspec.Struct):
    id: int
    trade_name: str


class TierIn(msgspec.Struct, forbid_unknown_fields=True):
    hold_max_cents: Annotated[int, msgspec.Meta(ge=0)]
    receive_month_max_cents: Annotated[int, msgspec.Meta(ge=0)]
    description: Annotated[str, msgspec.Meta(max_length=200)] = ""


class TierOut(msgspec.Struct):
    tier: str
    hold_max_cents: int
    receive_month_max_cents: int
    description: str


class WalletTierIn(msgspec.Struct, forbid_unknown_fields=True):
    tier: Annotated[str, msgspec.Meta(max_length=32)]


class BatchOut(msgspec.Struct):
    key: str
    transfer_id: int | None
    count: int
    total_cents: int
    campaign_id: int | None


def wallet_out(state: wallets.WalletState) -> WalletOut:
    w = state.wallet
    return WalletOut(w.id, w.programme_id, w.display_name, w.email, w.phone, w.tier, state.unit, state.balance_cents,
                     state.received_month_cents, state.limits.hold_max_cents, state.limits.receive_month_max_cents,
                     w.campaign_id)


def payment_out(payment: wallets.Payment) -> Response[PaymentOut]:
    body = PaymentOut(payment.transfer_id, payment.merchant_id, payment.wallet_id, payment.amount_cents,
                      payment.programme_id, payment.unit)
    return Response(body, status_code=201 if payment.created else 200)


def topup_out(intent: topups.TopupIntent) -> TopupOut:
    return TopupOut(intent.public_id, intent.wallet_id, intent.amount_cents, intent.status, intent.transfer_id,
                    intent.created_at, intent.paid_at)


def _my_wallet(user: AuthUser) -> int:
    if user.wallet_id is None:
        raise ApiError(403, "no_wallet", "This user has no wallet.")
    return user.wallet_id


async def _acting(conn: AsyncConnection, user: AuthUser) -> None:
    await set_actor(conn, f"user:{user.id}")


async def _resident_login(conn: AsyncConnection, wallet: wallets.Wallet, password: str | None) -> tuple[str, datetime | None]:
    """The resident's user (login = email or phone) and a long-lived token for their phone."""
    user_id = await conn.scalar(text("SELECT id FROM users WHERE wallet_id = :w ORDER BY id LIMIT 1"), {"w": wallet.id})
    if user_id is None:
        user_id = await create_user(
            conn, email=wallet.email or wallet.phone or "", password=password or secrets.token_urlsafe(24),
            role=Role.RESIDENT, display_name=wallet.display_name, wallet_id=wallet.id,
        )
    return await issue_token(conn, user_id=user_id, kind="api", label="wallet page", ttl=WALLET_TOKEN_TTL)


class WalletOpeningController(Controller):
    """Anyone may open a wallet in the local currency: an unverified tier keeps it small."""

    path = "/wallets"
    tags = ["wallets"]

    @post("/open", exclude_from_auth=True, status_code=201)
    async def open(self, data: JSONBody[OpenIn], request: Request, db_engine: NamedDependency[AsyncEngine]) -> OpenedOut:
        await hit(db_engine, f"wallet-open:ip:{client_ip(request)}", limit=OPENINGS_PER_IP_PER_HOUR, window_s=3600)
        async with db_engine.begin() as conn:
            wallet = await wallets.open_wallet(conn, programme_id=data.programme_id, display_name=data.display_name,
                                               email=data.email, phone=data.phone)
            token, expires_at = await _resident_login(conn, wallet, data.password)
            return OpenedOut(wallet_out(await wallets.wallet_state(conn, wallet.id)), token, expires_at)


class ResidentWalletController(Controller):
    """A resident's own wallet: balance, rotating-code setup, history, paying, top-ups."""

    path = "/wallets/me"
    tags = ["wallets"]
    guards = [requires(Role.RESIDENT)]

    @get("/")
    async def mine(self, request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine]) -> MyWalletOut:
        wallet_id = _my_wallet(request.user)
        async with db_engine.begin() as conn:
            secret = await wallets.wallet_secret(conn, wallet_id)
            state = await wallets.wallet_state(conn, wallet_id)
        return MyWalletOut(wallet_out(state), CodeSetup(secret, rotating_codes.PREFIX, rotating_codes.STEP_SECONDS,
                                                        rotating_codes.DIGITS))

    @get("/history")
    async def history(
        self, request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine],
        limit: FromQuery[Annotated[int, msgspec.Meta(ge=1, le=500)]] = 50,
    ) -> list[HistoryOut]:
        async with db_engine.connect() as conn:
            entries = await wallets.history(conn, _my_wallet(request.user), limit=limit)
        return [HistoryOut(*(getattr(e, f) for f in HistoryOut.__struct_fields__)) for e in entries]

    @get("/vouchers")
    async def vouchers(self, request: Request[AuthUser, str, object],
                       db_engine: NamedDependency[AsyncEngine]) -> list[GiftVoucherOut]:
        """Gift vouchers kept in this wallet, with what is left and the QR's token."""
        async with db_engine.connect() as conn:
            kept = await wallets.gift_vouchers(conn, _my_wallet(request.user))
        return [GiftVoucherOut(*(getattr(g, f) for f in GiftVoucherOut.__struct_fields__)) for g in kept]

    @post("/vouchers", status_code=201)
    async def add_voucher(self, data: JSONBody[GiftVoucherIn], request: Request[AuthUser, str, object],
                          db_engine: NamedDependency[AsyncEngine]) -> GiftVoucherOut:
        """Add a voucher received as a gift, by its printed code."""
        await hit(db_engine, f"wallet-voucher:user:{request.user.id}", limit=VOUCHER_ADDS_PER_HOUR, window_s=3600)
        async with db_engine.begin() as conn:
            await _acting(conn, request.user)
            kept = await wallets.add_gift_voucher(conn, wallet_id=_my_wallet(request.user), code=data.code)
        return GiftVoucherOut(*(getattr(kept, f) for f in GiftVoucherOut.__struct_fields__))

    @get("/merchants/{merchant_id:int}")
    async def merchant(
        self, merchant_id: FromPath[int], request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine],
    ) -> MerchantCardOut:
        """Who a scanned merchant QR would pay, shown before the resident confirms."""
        async with db_engine.connect() as conn:
            wallet = await wallets.get_wallet(conn, _my_wallet(request.user))
            programme = await wallets.local_programme(conn, wallet.programme_id)
            _, name = await wallets.merchant_account(conn, merchant_id=merchant_id, programme=programme)
        return MerchantCardOut(merchant_id, name)

    @post("/payments")
    async def pay(
        self, data: JSONBody[PayIn], request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[PaymentOut]:
        """Pay a merchant whose QR the resident scanned (after confirming on screen)."""
        key = _require_key(idempotency_key)
        async with db_engine.begin() as conn:
            await _acting(conn, request.user)
            payment = await wallets.pay_merchant(conn, key=key, wallet_id=_my_wallet(request.user),
                                                 merchant_id=data.merchant_id, amount_cents=data.amount_cents,
                                                 channel="merchant_qr")
        return payment_out(payment)

    @post("/transfers")
    async def transfer(
        self, data: JSONBody[TransferIn], request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[MovedOut]:
        key = _require_key(idempotency_key)
        async with db_engine.begin() as conn:
            await _acting(conn, request.user)
            result = await wallets.transfer_between_wallets(
                conn, key=key, from_wallet_id=_my_wallet(request.user), to_wallet_id=data.to_wallet_id,
                amount_cents=data.amount_cents)
        return Response(MovedOut(result.transfer_id), status_code=201 if result.created else 200)

    @post("/topups", status_code=201)
    async def topup(self, data: JSONBody[TopupIn], request: Request[AuthUser, str, object],
                    db_engine: NamedDependency[AsyncEngine]) -> TopupOut:
        """An online top-up intent: the provider's checkout takes the euros; its webhook issues."""
        async with db_engine.begin() as conn:
            await _acting(conn, request.user)
            return topup_out(await topups.create_intent(conn, wallet_id=_my_wallet(request.user),
                                                        amount_cents=data.amount_cents))

    @get("/topups/{intent_id:str}")
    async def topup_status(self, intent_id: FromPath[str], request: Request[AuthUser, str, object],
                           db_engine: NamedDependency[AsyncEngine]) -> TopupOut:
        async with db_engine.connect() as conn:
            intent = await topups.get_intent(conn, intent_id)
        if intent.wallet_id != _my_wallet(request.user):
            raise topups.TopupIntentNotFound(intent_id=intent_id)
        return topup_out(intent)


class TopupWebhookController(Controller):
    """The payment provider's confirmation of an online top-up (signed; see docs/wallets.md)."""

    path = "/webhooks/topups"
    tags = ["wallets"]

    @post("/", exclude_from_auth=True, status_code=200)
    async def receive(self, request: Request, db_engine: NamedDependency[AsyncEngine]) -> TopupOut:
        secret = os.environ.get(WEBHOOK_SECRET_ENV, "")
        if len(secret) < 16:
            raise ApiError(503, "webhook_not_configured",
                           f"Set {WEBHOOK_SECRET_ENV} (16 characters or more) to accept top-up webhooks.")
        body = await request.body()
        event = topups.verify(secret.encode(), request.headers.get(topups.SIGNATURE_HEADER), body)
        async with db_engine.begin() as conn:
            await set_actor(conn, "payment-provider")
            return topup_out(await topups.apply_event(conn, event))


class WalletAdminController(Controller):
    """The operator: open wallets, set tiers and limits, town campaigns and payments by CSV."""

    path = "/wallet-admin"
    tags = ["wallets"]
    guards = [requires(Role.OPERATOR)]

    @post("/wallets", status_code=201)
    async def open(self, data: JSONBody[AdminOpenIn], request: Request[AuthUser, str, object],
                   db_engine: NamedDependency[AsyncEngine]) -> WalletOut:
        async with db_engine.begin() as conn:
            await _acting(conn, request.user)
            wallet = await wallets.open_wallet(conn, programme_id=data.programme_id, display_name=data.display_name,
                                               email=data.email, phone=data.phone, tier=data.tier)
            return wallet_out(await wallets.wallet_state(conn, wallet.id))

    @get("/wallets/{wallet_id:int}")
    async def wallet(self, wallet_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> WalletOut:
        async with db_engine.connect() as conn:
            return wallet_out(await wallets.wallet_state(conn, wallet_id))

    @put("/wallets/{wallet_id:int}/tier")
    async def set_wallet_tier(self, wallet_id: FromPath[int], data: JSONBody[WalletTierIn],
                              request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine]) -> WalletOut:
        async with db_engine.begin() as conn:
            await _acting(conn, request.user)
            await wallets.set_wallet_tier(conn, wallet_id=wallet_id, tier=data.tier)
            return wallet_out(await wallets.wallet_state(conn, wallet_id))

    @post("/wallets/{wallet_id:int}/access", status_code=201)
    async def access(self, wallet_id: FromPath[int], request: Request[AuthUser, str, object],
                     db_engine: NamedDependency[AsyncEngine]) -> OpenedOut:
        """A sign-in token for a wallet opened by a campaign, to send to its resident."""
        async with db_engine.begin() as conn:
            await _acting(conn, request.user)
            wallet = await wallets.get_wallet(conn, wallet_id)
            token, expires_at = await _resident_login(conn, wallet, None)
            return OpenedOut(wallet_out(await wallets.wallet_state(conn, wallet_id)), token, expires_at)

    @get("/tiers")
    async def tiers(self, db_engine: NamedDependency[AsyncEngine]) -> list[TierOut]:
        async with db_engine.connect() as conn:
            return [TierOut(t.tier, t.hold_max_cents, t.receive_month_max_cents, t.description)
                    for t in await wallets.tiers(conn)]

    @put("/tiers/{tier:str}")
    async def set_tier(self, tier: FromPath[str], data: JSONBody[TierIn], request: Request[AuthUser, str, object],
                       db_engine: NamedDependency[AsyncEngine]) -> TierOut:
        async with db_engine.begin() as conn:
            await _acting(conn, request.user)
            saved = await wallets.set_tier(conn, wallets.Tier(tier, data.hold_max_cents, data.receive_month_max_cents,
                                                              data.description))
        return TierOut(saved.tier, saved.hold_max_cents, saved.receive_month_max_cents, saved.description)

    @post("/campaigns")
    async def campaign(
        self, request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine],
        name: FromQuery[Annotated[str, msgspec.Meta(min_length=1, max_length=200)]],
        programme_id: FromQuery[int | None] = None, tier: FromQuery[str] = "unverified",
        idempotency_key: IdempotencyKey = None,
    ) -> Response[BatchOut]:
        """Open and fund many wallets from a CSV body (``name,email,phone,amount``)."""
        key = _require_key(idempotency_key)
        rows = wallets.parse_campaign_csv(await _csv_body(request))
        async with db_engine.begin() as conn:
            await _acting(conn, request.user)
            result = await wallets.open_campaign(conn, key=key, programme_id=programme_id, name=name, rows=rows,
                                                 tier=tier)
        return _batch_out(result)

    @post("/town-payments")
    async def town_payments(
        self, request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine],
        programme_id: FromQuery[int | None] = None, idempotency_key: IdempotencyKey = None,
    ) -> Response[BatchOut]:
        """Pay many wallets or merchants from a CSV body (``recipient_type,recipient_id,amount,label``)."""
        key = _require_key(idempotency_key)
        rows = wallets.parse_payout_csv(await _csv_body(request))
        async with db_engine.begin() as conn:
            await _acting(conn, request.user)
            result = await wallets.town_payments(conn, key=key, programme_id=programme_id, rows=rows)
        return _batch_out(result)


async def _csv_body(request: Request) -> str:
    try:
        return (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise wallets.CsvInvalid(errors=[{"line": 1, "error": "the file is not UTF-8 text"}]) from None


def _batch_out(result: wallets.BatchResult) -> Response[BatchOut]:
    return Response(BatchOut(result.key, result.transfer_id, result.count, result.total_cents, result.campaign_id),
                    status_code=201 if result.created else 200)
