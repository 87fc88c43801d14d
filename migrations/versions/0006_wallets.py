"""Wallets: residents' contact and tier, tier limits, rotating-code uses, town campaigns,
online top-up intents, the payment provider's webhook events, and gift vouchers kept in a wallet.

wallet_code_uses, wallet_campaigns and topup_events refuse UPDATE, DELETE and TRUNCATE:
a used code stays used, a campaign stays as it was funded, a provider's event stays seen.

Revision ID: 0006_wallets
Revises: 0002_audit
Depends on: 0003_vouchers (wallet_vouchers references vouchers), 0004_merchants (merchant_takings,
is_counter, merchant_programmes are read and written)
"""

from ledger.database import execute_script

revision = "0006_wallets"
down_revision = "0002_audit"
branch_labels = None
depends_on = ("0003_vouchers", "0004_merchants")

SCHEMA = r"""
-- Holding and receiving limits per verification tier, in cents of the programme's unit.
-- Rows are the scheme's configuration: the operator changes them (audited).
CREATE TABLE wallet_tiers (
    tier                    text PRIMARY KEY CHECK (tier ~ '^[a-z][a-z_]{1,31}$'),
    hold_max_cents          bigint NOT NULL CHECK (hold_max_cents >= 0),
    receive_month_max_cents bigint NOT NULL CHECK (receive_month_max_cents >= 0),
    description             text NOT NULL DEFAULT '' CHECK (length(description) <= 200)
);
INSERT INTO wallet_tiers (tier, hold_max_cents, receive_month_max_cents, description) VALUES
    ('unverified', 15000, 25000, 'email or phone only'),
    ('verified', 250000, 500000, 'identity checked at a counter or by the operator');

CREATE TABLE wallet_campaigns (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    programme_id bigint NOT NULL REFERENCES programmes(id),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    key          text NOT NULL UNIQUE CHECK (length(key) BETWEEN 1 AND 100),
    wallets      integer NOT NULL CHECK (wallets > 0),
    total_cents  bigint NOT NULL CHECK (total_cents >= 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER wallet_campaigns_append_only BEFORE UPDATE OR DELETE ON wallet_campaigns
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER wallet_campaigns_no_truncate BEFORE TRUNCATE ON wallet_campaigns
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Minimal personal data: a name to greet and confirm transfers with, and one way to reach
-- the resident (email or phone) that is also how they sign in.
ALTER TABLE wallets
    ADD COLUMN email       text CHECK (email ~ '^[^@\s]+@[^@\s]+$' AND length(email) <= 254),
    ADD COLUMN phone       text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    ADD COLUMN tier        text NOT NULL DEFAULT 'unverified' REFERENCES wallet_tiers(tier),
    ADD COLUMN totp_secret text CHECK (totp_secret ~ '^[A-Z2-7]{32}$'),
    ADD COLUMN campaign_id bigint REFERENCES wallet_campaigns(id);
CREATE UNIQUE INDEX wallets_email ON wallets (programme_id, lower(email)) WHERE email IS NOT NULL;
CREATE UNIQUE INDEX wallets_phone ON wallets (programme_id, phone) WHERE phone IS NOT NULL;

-- A rotating code is single-use: the (wallet, TOTP counter) pair it stands for is written
-- once, in the payment's transaction; a second use meets the primary key.
CREATE TABLE wallet_code_uses (
    wallet_id   bigint NOT NULL REFERENCES wallets(id),
    counter     bigint NOT NULL,
    transfer_id bigint NOT NULL REFERENCES transfers(id),
    used_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (wallet_id, counter)
);
CREATE TRIGGER wallet_code_uses_append_only BEFORE UPDATE OR DELETE ON wallet_code_uses
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER wallet_code_uses_no_truncate BEFORE TRUNCATE ON wallet_code_uses
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- An online top-up: the resident's intent, paid by a provider, confirmed by its webhook.
-- Only status and paid_* change, once, from pending (the trigger says so).
CREATE TABLE topup_intents (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id    text NOT NULL UNIQUE CHECK (public_id ~ '^ti_[A-Za-z0-9_-]{16,40}$'),
    wallet_id    bigint NOT NULL REFERENCES wallets(id),
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'paid')),
    transfer_id  bigint UNIQUE REFERENCES transfers(id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    paid_at      timestamptz,
    CHECK ((status = 'paid') = (transfer_id IS NOT NULL AND paid_at IS NOT NULL))
);
CREATE FUNCTION topup_intent_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR OLD.status <> 'pending'
       OR (NEW.id, NEW.public_id, NEW.wallet_id, NEW.amount_cents, NEW.created_at)
          IS DISTINCT FROM (OLD.id, OLD.public_id, OLD.wallet_id, OLD.amount_cents, OLD.created_at) THEN
        RAISE EXCEPTION 'table % is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'CL001';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER topup_intents_guard BEFORE UPDATE OR DELETE ON topup_intents
    FOR EACH ROW EXECUTE FUNCTION topup_intent_change();
CREATE TRIGGER topup_intents_no_truncate BEFORE TRUNCATE ON topup_intents
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Every provider event seen, once: a replayed event id meets the primary key.
CREATE TABLE topup_events (
    event_id    text PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 200),
    intent_id   bigint NOT NULL REFERENCES topup_intents(id),
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER topup_events_append_only BEFORE UPDATE OR DELETE ON topup_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER topup_events_no_truncate BEFORE TRUNCATE ON topup_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Gift vouchers a resident added to their wallet page (by the code printed or sent to them):
-- shown with their balance and QR. A voucher sits in one wallet at most.
CREATE TABLE wallet_vouchers (
    voucher_id bigint PRIMARY KEY REFERENCES vouchers(id),
    wallet_id  bigint NOT NULL REFERENCES wallets(id),
    added_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wallet_vouchers_wallet ON wallet_vouchers (wallet_id);
"""


def upgrade() -> None:
    execute_script(SCHEMA)
