"""Merchants: onboarding details, per-programme approval, staff security, and takings.

- ``merchants`` gains what onboarding collects (SIRET, IBAN/BIC, category + NAF code,
  address, contact), its review state and ``is_counter`` (exchange counters, used by wallets).
- ``merchant_categories``: the short list of categories each issuer offers.
- ``merchant_programmes``: which programmes a merchant asked for and was approved for.
- ``merchant_takings``: one row per redemption, refund or wallet payment, written in the
  same transaction as its ledger transfer. Settlement reads it; it is append-only, and a
  taking is refunded at most once (unique ``refund_of``).
- ``auth_throttle``: rate-limit windows and login lockouts, in the database so they hold
  across server processes.
- ``merchant_closures``: the shop's Z reports (day closures), append-only.

Revision ID: 0004_merchants
Revises: 0002_audit
Depends on: 0003_vouchers
"""

from ledger.database import execute_script

revision = "0004_merchants"
down_revision = "0002_audit"
branch_labels = None
depends_on = ("0003_vouchers",)  # merchant_takings.voucher_id references vouchers

SCHEMA = r"""
CREATE TABLE merchant_categories (
    issuer_id  bigint NOT NULL REFERENCES issuers(id),
    code       text NOT NULL CHECK (code ~ '^[a-z][a-z0-9_]{1,39}$'),
    label_fr   text NOT NULL CHECK (length(label_fr) BETWEEN 1 AND 100),
    label_en   text NOT NULL CHECK (length(label_en) BETWEEN 1 AND 100),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer_id, code)
);

ALTER TABLE merchants
    ADD COLUMN siret         text CHECK (siret ~ '^[0-9]{14}$'),
    ADD COLUMN iban          text CHECK (iban ~ '^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$'),
    ADD COLUMN bic           text CHECK (bic ~ '^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$'),
    ADD COLUMN category      text CHECK (category ~ '^[a-z][a-z0-9_]{1,39}$'),
    ADD COLUMN naf_code      text CHECK (naf_code ~ '^[0-9]{2}\.[0-9]{2}[A-Z]$'),
    ADD COLUMN address_line  text CHECK (length(address_line) <= 200),
    ADD COLUMN postcode      text CHECK (postcode ~ '^[0-9]{5}$'),
    ADD COLUMN commune       text CHECK (length(commune) <= 100),
    ADD COLUMN commune_insee text CHECK (commune_insee ~ '^[0-9][0-9AB][0-9]{3}$'),
    ADD COLUMN email         text CHECK (length(email) <= 254),
    ADD COLUMN phone         text CHECK (length(phone) <= 20),
    ADD COLUMN is_counter    boolean NOT NULL DEFAULT false,
    ADD COLUMN status_reason text CHECK (length(status_reason) <= 500),
    ADD COLUMN reviewed_at   timestamptz;
CREATE UNIQUE INDEX merchants_siret ON merchants (issuer_id, siret) WHERE siret IS NOT NULL;
CREATE INDEX merchants_status ON merchants (issuer_id, status);

CREATE TABLE merchant_programmes (
    merchant_id  bigint NOT NULL REFERENCES merchants(id),
    programme_id bigint NOT NULL REFERENCES programmes(id),
    status       text NOT NULL DEFAULT 'requested'
                 CHECK (status IN ('requested', 'approved', 'refused')),
    reason       text CHECK (length(reason) <= 500),
    requested_at timestamptz NOT NULL DEFAULT now(),
    decided_at   timestamptz,
    PRIMARY KEY (merchant_id, programme_id)
);
CREATE INDEX merchant_programmes_programme ON merchant_programmes (programme_id, status);

CREATE TABLE merchant_takings (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id    bigint NOT NULL REFERENCES merchants(id),
    programme_id   bigint NOT NULL REFERENCES programmes(id),
    kind           text NOT NULL CHECK (kind IN ('redeem', 'refund', 'payment')),
    amount_cents   bigint NOT NULL CHECK (amount_cents <> 0),
    transfer_id    bigint NOT NULL UNIQUE REFERENCES transfers(id),
    voucher_id     bigint REFERENCES vouchers(id),
    wallet_id      bigint REFERENCES wallets(id),
    refund_of      bigint REFERENCES merchant_takings(id),
    effective_at   timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Who took it and what the shop was told (redemptions and refunds of this capability;
    -- other writers may leave them empty).
    user_id        bigint REFERENCES users(id),
    client_key     text CHECK (length(client_key) BETWEEN 1 AND 128),
    balance_after_cents bigint,
    audit_event_id bigint,
    receipt        bytea,
    receipt_signature bytea CHECK (length(receipt_signature) = 64),
    receipt_key_id text,
    CHECK ((kind = 'refund') = (amount_cents < 0)),
    CHECK ((kind = 'refund') = (refund_of IS NOT NULL))
);
CREATE UNIQUE INDEX merchant_takings_refund_once ON merchant_takings (refund_of) WHERE refund_of IS NOT NULL;
CREATE UNIQUE INDEX merchant_takings_client_key ON merchant_takings (merchant_id, client_key) WHERE client_key IS NOT NULL;
CREATE INDEX merchant_takings_merchant ON merchant_takings (merchant_id, effective_at, id);
CREATE INDEX merchant_takings_programme ON merchant_takings (programme_id, effective_at);
CREATE INDEX merchant_takings_voucher ON merchant_takings (voucher_id) WHERE voucher_id IS NOT NULL;
CREATE TRIGGER merchant_takings_append_only BEFORE UPDATE OR DELETE ON merchant_takings
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER merchant_takings_no_truncate BEFORE TRUNCATE ON merchant_takings
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- A shop's day closure: totals per programme for one Paris day, written once.
CREATE TABLE merchant_closures (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id  bigint NOT NULL REFERENCES merchants(id),
    business_day date NOT NULL,
    totals       jsonb NOT NULL,
    count        integer NOT NULL,
    net_cents    bigint NOT NULL,
    last_taking_id bigint,
    closed_by    bigint REFERENCES users(id),
    audit_event_id bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, business_day)
);
CREATE TRIGGER merchant_closures_append_only BEFORE UPDATE OR DELETE ON merchant_closures
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER merchant_closures_no_truncate BEFORE TRUNCATE ON merchant_closures
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Staff: a TOTP secret being enrolled (confirmed by a first code), and device sessions
-- that an owner can list and revoke by a plain id.
ALTER TABLE users ADD COLUMN totp_pending_secret text;
ALTER TABLE sessions ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY UNIQUE;

-- Fixed-window counters (rate limits) and lockouts, keyed by what is limited
-- ("login:email:…", "login:ip:…", "redeem:session:…").
CREATE TABLE auth_throttle (
    key          text PRIMARY KEY CHECK (length(key) <= 300),
    window_start timestamptz NOT NULL,
    hits         integer NOT NULL,
    failures     integer NOT NULL DEFAULT 0,
    locked_until timestamptz
);
"""


def upgrade() -> None:
    execute_script(SCHEMA)
