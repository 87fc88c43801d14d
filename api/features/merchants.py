"""Merchants: onboarding and review, staff on phones, scan-and-redeem, the shop's phone app.

The HTTP side lives in ``merchant_app_api``; the domain in ``ledger.merchants`` and
``ledger.redemptions``. This module only plugs them into the app, the CLI and the demo.
"""

from __future__ import annotations

from merchant_app_api.onboarding import ApplicationController, MerchantReviewController

ROUTES = [ApplicationController, MerchantReviewController]

ERROR_STATUS = {
    "merchant_not_found": 404,
    "invalid_application": 422,
    "siret_taken": 409,
    "merchant_status_conflict": 409,
    "programme_refuses_merchant": 409,
}
