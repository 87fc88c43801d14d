"""Merchants: onboarding and review, staff on phones, scan-and-redeem, the shop's phone app.

The HTTP side lives in ``merchant_app_api``; the domain in ``ledger.merchants`` and
``ledger.redemptions``. This module only plugs them into the app, the CLI and the demo.
"""

from __future__ import annotations

from merchant_app_api.onboarding import ApplicationController, MerchantReviewController
from merchant_app_api.app_files import shop_app
from merchant_app_api.receipts import receipt_keys
from merchant_app_api.redeem import RedeemController
from merchant_app_api.staff import StaffController
from merchant_app_api.takings import TakingsController

ROUTES = [ApplicationController, MerchantReviewController, StaffController, RedeemController, TakingsController,
          receipt_keys, shop_app]

# The phone web app's files (its data all comes from the API, behind sign-in).
PUBLIC_PATHS = ["^/shop(/|$)"]

ERROR_STATUS = {
    "merchant_not_found": 404,
    "invalid_application": 422,
    "siret_taken": 409,
    "merchant_status_conflict": 409,
    "programme_refuses_merchant": 409,
    "merchant_suspended": 403,
    "merchant_not_approved": 403,
    "unknown_voucher": 404,
    "bad_signature": 422,
    "expired": 409,
    "revoked": 409,
    "not_accepted_here": 422,  # as the vouchers capability declares it
    "insufficient_balance": 409,
    "amount_invalid": 422,
    "already_refunded": 409,
    "refund_not_allowed": 403,
    "refund_exceeds_balance": 409,
    "taking_not_found": 404,
    "day_already_closed": 409,
    "day_not_started": 422,
}
