"""Vouchers: programme rules, employers, orders and their lines, vouchers, signing keys.

Programme rules are columns on ``programmes`` (face-value limits, validity, partial
redemption, acceptance lists, texts, purchase fee). A programme's breakage account (where
expired balances go) is opened with it by ledger.programmes, or on first need for programmes
created elsewhere (ledger.programmes.breakage_account).

``vouchers`` rows are never deleted; only their lifecycle columns (status, expiry, revocation,
replacement) may change, and a trigger refuses any other edit. Order lines may change only
while their order is a draft. ``voucher_signing_keys`` are Ed25519 keys held by the database
(private part included, so every process of the service can sign); see docs/tokens.md.

Revision ID: 0003_vouchers
Revises: 0002_audit
"""

from ledger.database import execute_script

revision = "0003_vouchers"
down_revision = "0002_audit"
branch_labels = None
depends_on = None

SCHEMA = r"""
ALTER TABLE programmes
    ADD COLUMN face_value_min_cents bigint NOT NULL DEFAULT 100 CHECK (face_value_min_cents > 0),
    ADD COLUMN face_value_max_cents bigint NOT NULL DEFAULT 50000 CHECK (face_value_max_cents <= 100000000),
    ADD COLUMN validity_months      smallint DEFAULT 12 CHECK (validity_months BETWEEN 1 AND 120),
    ADD COLUMN valid_until          date,
    ADD COLUMN partial_redemption   boolean NOT NULL DEFAULT true,
    -- NULL: every category not excluded; a list: only these categories.
    ADD COLUMN categories_allowed   text[],
    ADD COLUMN categories_excluded  text[] NOT NULL DEFAULT '{}',
    -- Explicit merchant lists: a denied merchant is always refused; an allowed one is
    -- accepted whatever its category (a bookshop in a culture programme, say).
    ADD COLUMN merchants_allowed    bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN merchants_denied     bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN second_language      text NOT NULL DEFAULT 'en' CHECK (second_language ~ '^[a-z]{2,3}$'),
    -- {"fr": {"name": …, "description": …}, "<second language>": {…}}
    ADD COLUMN texts                jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(texts) = 'object'),
    -- Fee charged to the buyer of vouchers, in basis points of the face value, excl. VAT.
    ADD COLUMN purchase_fee_bp      integer NOT NULL DEFAULT 0 CHECK (purchase_fee_bp BETWEEN 0 AND 5000),
    ADD COLUMN breakage_account_id  bigint UNIQUE REFERENCES accounts(id),
    ADD COLUMN updated_at           timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT programmes_face_values CHECK (face_value_min_cents <= face_value_max_cents),
    ADD CONSTRAINT programmes_validity CHECK (num_nonnulls(validity_months, valid_until) = 1);

-- The URSSAF tolerance for gifts to employees, per calendar year: 5% of the monthly social
-- security ceiling per event per beneficiary. A new year is one INSERT.
CREATE TABLE gift_ceilings (
    year         smallint PRIMARY KEY CHECK (year BETWEEN 2000 AND 2200),
    amount_cents bigint NOT NULL CHECK (amount_cents > 0)
);
INSERT INTO gift_ceilings (year, amount_cents) VALUES (2024, 19300), (2025, 19600), (2026, 20000);

CREATE TABLE employers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer_id  bigint NOT NULL REFERENCES issuers(id),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    siret      text NOT NULL CHECK (siret ~ '^[0-9]{14}$'),
    address    text NOT NULL DEFAULT '' CHECK (length(address) <= 500),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer_id, siret)
);
-- An employer funded vouchers (lot attribution): it is never removed.
CREATE TRIGGER employers_no_delete BEFORE DELETE ON employers
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
ALTER TABLE users ADD COLUMN employer_id bigint REFERENCES employers(id);

CREATE TABLE voucher_orders (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    employer_id       bigint NOT NULL REFERENCES employers(id),
    programme_id      bigint NOT NULL REFERENCES programmes(id),
    status            text NOT NULL DEFAULT 'draft'
                      CHECK (status IN ('draft', 'confirmed', 'paid', 'issued', 'cancelled')),
    event             text NOT NULL CHECK (event ~ '^[a-z_]{2,40}$'),
    event_label       text NOT NULL DEFAULT '' CHECK (length(event_label) <= 200),
    message           text NOT NULL DEFAULT '' CHECK (length(message) <= 300),
    colour_primary    text NOT NULL DEFAULT '#1F4E79' CHECK (colour_primary ~ '^#[0-9A-F]{6}$'),
    colour_secondary  text NOT NULL DEFAULT '#F2C14E' CHECK (colour_secondary ~ '^#[0-9A-F]{6}$'),
    logo              bytea CHECK (length(logo) <= 524288),
    logo_media_type   text CHECK (logo_media_type IN ('image/png', 'image/jpeg', 'image/svg+xml')),
    -- The quote, fixed at confirmation.
    ceiling_year      smallint,
    ceiling_cents     bigint,
    lines_count       integer,
    face_value_cents  bigint,
    fee_bp            integer,
    fee_cents         bigint,
    fee_vat_cents     bigint,
    total_cents       bigint,
    payment_reference text CHECK (length(payment_reference) <= 140),
    payment_transfer_id bigint REFERENCES transfers(id),
    issue_transfer_id   bigint REFERENCES transfers(id),
    created_by        bigint REFERENCES users(id),
    created_at        timestamptz NOT NULL DEFAULT now(),
    confirmed_at      timestamptz,
    paid_at           timestamptz,
    issued_at         timestamptz,
    cancelled_at      timestamptz,
    CHECK ((logo IS NULL) = (logo_media_type IS NULL)),
    CHECK (status IN ('draft', 'cancelled') OR total_cents IS NOT NULL),
    CHECK (status NOT IN ('paid', 'issued') OR payment_transfer_id IS NOT NULL),
    CHECK (status <> 'issued' OR issue_transfer_id IS NOT NULL)
);
CREATE INDEX voucher_orders_employer ON voucher_orders (employer_id, id);
CREATE TRIGGER voucher_orders_no_delete BEFORE DELETE ON voucher_orders
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TABLE voucher_order_lines (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id          bigint NOT NULL REFERENCES voucher_orders(id),
    line_no           integer NOT NULL CHECK (line_no > 0),
    beneficiary_name  text NOT NULL CHECK (length(beneficiary_name) BETWEEN 1 AND 200),
    beneficiary_email text CHECK (length(beneficiary_email) <= 254),
    amount_cents      bigint NOT NULL CHECK (amount_cents > 0),
    UNIQUE (order_id, line_no)
);

-- Lines are the order's content: once it is confirmed they are what was quoted and paid for.
CREATE FUNCTION voucher_order_lines_draft_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
BEGIN
    SELECT status INTO v_status FROM voucher_orders
    WHERE id = CASE WHEN TG_OP = 'DELETE' THEN OLD.order_id ELSE NEW.order_id END;
    IF v_status <> 'draft' THEN
        RAISE EXCEPTION 'order lines change only while the order is a draft (it is %)', v_status
            USING ERRCODE = 'CL001';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;
CREATE TRIGGER voucher_order_lines_draft BEFORE INSERT OR UPDATE OR DELETE ON voucher_order_lines
    FOR EACH ROW EXECUTE FUNCTION voucher_order_lines_draft_only();
CREATE TRIGGER voucher_order_lines_no_truncate BEFORE TRUNCATE ON voucher_order_lines
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TABLE voucher_signing_keys (
    key_id      text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{8}$'),
    algorithm   text NOT NULL DEFAULT 'ed25519' CHECK (algorithm = 'ed25519'),
    public_key  bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    private_key bytea NOT NULL CHECK (length(private_key) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- A retired key signs nothing new; tokens it signed stay verifiable.
    retired_at  timestamptz
);
CREATE UNIQUE INDEX voucher_signing_keys_one_active ON voucher_signing_keys ((true)) WHERE retired_at IS NULL;
CREATE TRIGGER voucher_signing_keys_no_delete BEFORE DELETE OR TRUNCATE ON voucher_signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TABLE vouchers (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    programme_id      bigint NOT NULL REFERENCES programmes(id),
    account_id        bigint NOT NULL UNIQUE REFERENCES accounts(id),
    code              text NOT NULL UNIQUE CHECK (code ~ '^[0-9A-HJKMNP-TV-Y]{12}$'),
    token             text NOT NULL,
    key_id            text NOT NULL REFERENCES voucher_signing_keys(key_id),
    page_secret       text NOT NULL UNIQUE CHECK (length(page_secret) BETWEEN 20 AND 64),
    face_value_cents  bigint NOT NULL CHECK (face_value_cents > 0),
    beneficiary_name  text CHECK (length(beneficiary_name) <= 200),
    beneficiary_email text CHECK (length(beneficiary_email) <= 254),
    -- Lot attribution: who funded this value.
    employer_id       bigint REFERENCES employers(id),
    order_id          bigint REFERENCES voucher_orders(id),
    order_line_id     bigint UNIQUE REFERENCES voucher_order_lines(id),
    issue_transfer_id bigint NOT NULL REFERENCES transfers(id),
    issued_at         timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'expired')),
    revoked_at        timestamptz,
    revoke_reason     text CHECK (length(revoke_reason) <= 500),
    replaced_by       bigint REFERENCES vouchers(id),
    reissue_of        bigint UNIQUE REFERENCES vouchers(id),
    expired_at        timestamptz,
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL)),
    CHECK ((status = 'expired') = (expired_at IS NOT NULL)),
    CHECK (replaced_by IS NULL OR status = 'revoked')
);
CREATE INDEX vouchers_programme ON vouchers (programme_id, status);
CREATE INDEX vouchers_due ON vouchers (expires_at) WHERE status = 'active';
CREATE INDEX vouchers_order ON vouchers (order_id);

-- A voucher's identity and value never change; only its lifecycle does.
CREATE FUNCTION vouchers_lifecycle_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.id, NEW.programme_id, NEW.account_id, NEW.code, NEW.page_secret, NEW.face_value_cents,
        NEW.employer_id, NEW.order_id, NEW.order_line_id, NEW.issue_transfer_id, NEW.issued_at,
        NEW.reissue_of)
       IS DISTINCT FROM
       (OLD.id, OLD.programme_id, OLD.account_id, OLD.code, OLD.page_secret, OLD.face_value_cents,
        OLD.employer_id, OLD.order_id, OLD.order_line_id, OLD.issue_transfer_id, OLD.issued_at,
        OLD.reissue_of) THEN
        RAISE EXCEPTION 'a voucher''s identity and value never change' USING ERRCODE = 'CL001';
    END IF;
    IF OLD.status <> 'active' AND NEW.status <> OLD.status THEN
        RAISE EXCEPTION 'a % voucher stays %', OLD.status, OLD.status USING ERRCODE = 'CL001';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER vouchers_lifecycle BEFORE UPDATE ON vouchers
    FOR EACH ROW EXECUTE FUNCTION vouchers_lifecycle_only();
CREATE TRIGGER vouchers_no_delete BEFORE DELETE ON vouchers
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER vouchers_no_truncate BEFORE TRUNCATE ON vouchers
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
"""


def upgrade() -> None:
    execute_script(SCHEMA)
