"""The shop's side of wallets: take a payment by scanning a resident's rotating QR, credit a
wallet at an exchange counter, pay a supplier, and show the shop's own QR for residents.

Staff (owner or cashier, through the merchants capability's ``provide_staff``: an owner must
have enrolled a second factor, a suspended shop cannot act) act for their own merchant only;
every write takes an ``Idempotency-Key`` so a retry on weak shop Wi-Fi never takes the money
twice.
"""

from __future__ import annotations

import base64
import io
from typing import Annotated

import msgspec
import qrcode
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import ApiError
from api.routes.ledger import IdempotencyKey, PositiveCents, _require_key
from api.routes.wallets import MovedOut, PaymentOut, payment_out
from api.throttle import hit
from audit.chain import set_actor
from ledger import rotating_codes, wallets
from merchant_app_api.redeem import REFUND_WINDOW_DAYS
from merchant_app_api.staff import Staff, provide_staff

MERCHANT_QR_PREFIX = "CM1"
# A shop takes a payment every few seconds at most; many more attempts are guessing codes.
CODE_PAYMENTS_PER_MINUTE = 60


class CodePaymentIn(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    amount_cents: PositiveCents


class CodeIn(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class CodePreviewOut(msgspec.Struct):
    programme_id: int
    programme_name: str
    unit: str


class CounterCreditIn(msgspec.Struct, forbid_unknown_fields=True):
    """The wallet, by its number or by the rotating code on the resident's screen."""

    amount_cents: PositiveCents
    method: Annotated[str, msgspec.Meta(pattern=r"^(cash|card)$")]
    wallet_id: Annotated[int, msgspec.Meta(gt=0)] | None = None
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class SupplierPaymentIn(msgspec.Struct, forbid_unknown_fields=True):
    to_merchant_id: Annotated[int, msgspec.Meta(gt=0)]
    amount_cents: PositiveCents


class MerchantQrOut(msgspec.Struct):
    payload: str
    png_data_url: str


def merchant_qr_payload(merchant_id: int, amount_cents: int | None) -> str:
    """``CM1.<merchant id>`` or ``CM1.<merchant id>.<cents>``: what the wallet page scans."""
    return f"{MERCHANT_QR_PREFIX}.{merchant_id}" + (f".{amount_cents}" if amount_cents else "")


class WalletPaymentsController(Controller):
    path = "/merchant/wallet"
    tags = ["wallets", "merchant app"]
    dependencies = {"staff": Provide(provide_staff)}

    @post("/preview", status_code=200)
    async def preview(self, data: JSONBody[CodeIn], staff: NamedDependency[Staff],
                      db_engine: NamedDependency[AsyncEngine]) -> CodePreviewOut:
        """Is this scanned wallet code good here, now, and in which currency (nothing is used)."""
        staff.check_can_act()
        await hit(db_engine, f"wallet-code:session:{staff.session_id}", limit=CODE_PAYMENTS_PER_MINUTE, window_s=60)
        async with db_engine.connect() as conn:
            found = await wallets.preview_code(conn, merchant_id=staff.merchant_id, code=data.code)
        return CodePreviewOut(found.programme_id, found.programme_name, found.unit)

    @post("/payments")
    async def take_payment(
        self, data: JSONBody[CodePaymentIn], staff: NamedDependency[Staff],
        db_engine: NamedDependency[AsyncEngine], idempotency_key: IdempotencyKey = None,
    ) -> Response[PaymentOut]:
        """Scan the resident's rotating QR, enter the amount: the shop is credited at once."""
        key = _require_key(idempotency_key)
        staff.check_can_act()
        await hit(db_engine, f"wallet-code:session:{staff.session_id}", limit=CODE_PAYMENTS_PER_MINUTE, window_s=60)
        async with db_engine.begin() as conn:
            await set_actor(conn, staff.actor)
            payment = await wallets.take_code_payment(conn, key=key, merchant_id=staff.merchant_id, code=data.code,
                                                      amount_cents=data.amount_cents, user_id=staff.user_id)
        return payment_out(payment)

    @post("/payments/{taking_id:int}/refund")
    async def refund(
        self, taking_id: FromPath[int], staff: NamedDependency[Staff], db_engine: NamedDependency[AsyncEngine],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[PaymentOut]:
        """Give a wallet payment back to the resident (owner within the window, cashier same day)."""
        _require_key(idempotency_key)
        staff.check_can_act()
        async with db_engine.begin() as conn:
            await set_actor(conn, staff.actor)
            refund = await wallets.refund_payment(conn, merchant_id=staff.merchant_id, taking_id=taking_id,
                                                  user_id=staff.user_id, is_owner=staff.is_owner,
                                                  window_days=REFUND_WINDOW_DAYS)
        return payment_out(refund)

    @post("/counter-credits")
    async def counter_credit(
        self, data: JSONBody[CounterCreditIn], staff: NamedDependency[Staff],
        db_engine: NamedDependency[AsyncEngine], idempotency_key: IdempotencyKey = None,
    ) -> Response[MovedOut]:
        """An exchange counter took euros from a resident and credits their wallet."""
        key = _require_key(idempotency_key)
        staff.check_can_act()
        if (data.wallet_id is None) == (data.code is None):
            raise ApiError(422, "wallet_required", "Give the wallet's number or its code, not both.")
        wallet_id = data.wallet_id or rotating_codes.parse(data.code or "").wallet_id
        async with db_engine.begin() as conn:
            await set_actor(conn, staff.actor)
            result = await wallets.counter_credit(conn, key=key, merchant_id=staff.merchant_id,
                                                  wallet_id=wallet_id, amount_cents=data.amount_cents,
                                                  method=data.method)
        return Response(MovedOut(result.transfer_id), status_code=201 if result.created else 200)

    @post("/supplier-payments")
    async def pay_supplier(
        self, data: JSONBody[SupplierPaymentIn], staff: NamedDependency[Staff],
        db_engine: NamedDependency[AsyncEngine], idempotency_key: IdempotencyKey = None,
    ) -> Response[PaymentOut]:
        """The owner pays another approved merchant (a supplier) in the local currency."""
        key = _require_key(idempotency_key)
        staff.check_owner()
        staff.check_can_act()
        async with db_engine.begin() as conn:
            await set_actor(conn, staff.actor)
            payment = await wallets.pay_between_merchants(
                conn, key=key, from_merchant_id=staff.merchant_id, to_merchant_id=data.to_merchant_id,
                amount_cents=data.amount_cents)
        return payment_out(payment)

    @get("/qr")
    async def shop_qr(
        self, staff: NamedDependency[Staff],
        amount_cents: FromQuery[Annotated[int, msgspec.Meta(gt=0, le=10**9)] | None] = None,
    ) -> MerchantQrOut:
        """The shop's QR (static, or with an amount) for residents to scan and pay."""
        payload = merchant_qr_payload(staff.merchant_id, amount_cents)
        image = qrcode.make(payload, box_size=10, border=4)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return MerchantQrOut(payload, "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
