"""Settlement: fee rules, sponsor waivers, payout batches, their lines and SEPA payments,
the takings each batch settles (each exactly once), reconversion requests, files and invoices.

Records that must not change once written refuse UPDATE/DELETE by trigger: invoices (numbered
gaplessly per issuer), the batch's files, the audit of state changes. Draft batches are the one
place where rows are replaced: a draft is recomputed by preparing its period again, so its
items, lines and payments may be deleted while (and only while) the batch is a draft.

Revision ID: 0005_settlement
Revises: 0002_audit
"""

from ledger.database import execute_script

revision = "0005_settlement"
down_revision = "0002_audit"
branch_labels = None
depends_on = ("0004_merchants",)

SCHEMA = r"""
ALTER TABLE programmes ADD COLUMN settlement_frequency text NOT NULL DEFAULT 'monthly'
    CHECK (settlement_frequency IN ('monthly', 'weekly', 'daily'));

-- What the issuer's invoices and SEPA files must carry about the issuer itself.
ALTER TABLE issuers
    ADD COLUMN IF NOT EXISTS vat_number text CHECK (vat_number ~ '^[A-Z]{2}[0-9A-Z]{2,13}$'),
    ADD COLUMN IF NOT EXISTS address text CHECK (length(address) <= 300),
    ADD COLUMN IF NOT EXISTS debtor_iban text CHECK (debtor_iban ~ '^[A-Z]{2}[0-9]{2}[0-9A-Z]{1,30}$'),
    ADD COLUMN IF NOT EXISTS debtor_bic text CHECK (debtor_bic ~ '^[A-Z0-9]{8}([A-Z0-9]{3})?$');

-- Accounts settlement opens for itself, found again by owner and purpose.
CREATE TABLE settlement_accounts (
    owner_type text NOT NULL,
    owner_id   bigint NOT NULL,
    purpose    text NOT NULL,
    unit       text NOT NULL REFERENCES units(code),
    account_id bigint NOT NULL UNIQUE REFERENCES accounts(id),
    PRIMARY KEY (owner_type, owner_id, purpose, unit)
);

-- A fee rule: the most specific one in force on a period's first day applies to a whole
-- merchant-programme line. Specificity: merchant (4) > category (2) > programme (1).
CREATE TABLE fee_rules (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer_id    bigint NOT NULL REFERENCES issuers(id),
    kind         text NOT NULL DEFAULT 'takings' CHECK (kind IN ('takings', 'reconversion')),
    programme_id bigint REFERENCES programmes(id),
    category     text CHECK (length(category) BETWEEN 1 AND 60),
    merchant_id  bigint REFERENCES merchants(id),
    rate_bp      integer NOT NULL CHECK (rate_bp BETWEEN 0 AND 10000),
    vat_rate_bp  integer NOT NULL DEFAULT 2000 CHECK (vat_rate_bp BETWEEN 0 AND 10000),
    fixed_cents  bigint NOT NULL DEFAULT 0 CHECK (fixed_cents BETWEEN 0 AND 100000000),
    min_cents    bigint NOT NULL DEFAULT 0 CHECK (min_cents BETWEEN 0 AND 100000000000),
    max_cents    bigint CHECK (max_cents BETWEEN 0 AND 100000000000),
    valid_from   date NOT NULL,
    valid_until  date,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (max_cents IS NULL OR max_cents >= min_cents),
    CHECK (valid_until IS NULL OR valid_until > valid_from)
);
CREATE INDEX fee_rules_issuer ON fee_rules (issuer_id, kind);
CREATE TRIGGER fee_rules_append_only BEFORE UPDATE OR DELETE ON fee_rules
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- A sponsor (the town) pays the fee of some merchants, or of a whole programme (a campaign).
CREATE TABLE fee_waivers (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer_id          bigint NOT NULL REFERENCES issuers(id),
    sponsor_name       text NOT NULL CHECK (length(sponsor_name) BETWEEN 1 AND 200),
    sponsor_account_id bigint NOT NULL REFERENCES accounts(id),
    merchant_ids       bigint[],
    programme_id       bigint REFERENCES programmes(id),
    valid_from         date NOT NULL,
    valid_until        date,
    created_by         text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (merchant_ids IS NOT NULL OR programme_id IS NOT NULL),
    CHECK (valid_until IS NULL OR valid_until > valid_from)
);
CREATE TRIGGER fee_waivers_append_only BEFORE UPDATE OR DELETE ON fee_waivers
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TABLE settlement_batches (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer_id     bigint NOT NULL REFERENCES issuers(id),
    period        text NOT NULL CHECK (length(period) BETWEEN 7 AND 10),
    frequency     text NOT NULL CHECK (frequency IN ('monthly', 'weekly', 'daily')),
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL,
    status        text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'approved', 'exported', 'paid')),
    prepared_by   bigint NOT NULL REFERENCES users(id),
    prepared_at   timestamptz NOT NULL DEFAULT now(),
    approved_by   bigint REFERENCES users(id),
    approved_at   timestamptz,
    rejected_reason text CHECK (length(rejected_reason) <= 500),
    exported_at   timestamptz,
    paid_at       timestamptz,
    UNIQUE (issuer_id, period),
    CHECK (approved_by IS NULL OR approved_by <> prepared_by)
);
CREATE UNIQUE INDEX settlement_batches_one_open ON settlement_batches (issuer_id)
    WHERE status IN ('draft', 'approved');

-- Every taking is settled by exactly one batch.
CREATE TABLE settlement_items (
    taking_id bigint PRIMARY KEY REFERENCES merchant_takings(id),
    batch_id  bigint NOT NULL REFERENCES settlement_batches(id)
);
CREATE INDEX settlement_items_batch ON settlement_items (batch_id);

-- A request to turn local-currency units back into euros; paid by the next batch.
CREATE TABLE reconversions (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id   bigint NOT NULL REFERENCES merchants(id),
    programme_id  bigint NOT NULL REFERENCES programmes(id),
    amount_cents  bigint NOT NULL CHECK (amount_cents > 0),
    transfer_id   bigint NOT NULL UNIQUE REFERENCES transfers(id),
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE settlement_reconversions (
    reconversion_id bigint PRIMARY KEY REFERENCES reconversions(id),
    batch_id        bigint NOT NULL REFERENCES settlement_batches(id)
);
CREATE INDEX settlement_reconversions_batch ON settlement_reconversions (batch_id);
CREATE TRIGGER reconversions_append_only BEFORE UPDATE OR DELETE ON reconversions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- Per merchant and programme (kind takings) or per merchant's reconversions (kind reconversion).
CREATE TABLE settlement_lines (
    batch_id       bigint NOT NULL REFERENCES settlement_batches(id),
    merchant_id    bigint NOT NULL REFERENCES merchants(id),
    programme_id   bigint NOT NULL REFERENCES programmes(id),
    kind           text NOT NULL CHECK (kind IN ('takings', 'reconversion')),
    transactions   integer NOT NULL,
    gross_cents    bigint NOT NULL,
    refunds_cents  bigint NOT NULL CHECK (refunds_cents >= 0),
    collect_cents  bigint NOT NULL,  -- negative: units given back to the programme (see pooled_collects)
    fee_rule_id    bigint REFERENCES fee_rules(id),
    fee_cents      bigint NOT NULL CHECK (fee_cents >= 0),
    vat_cents      bigint NOT NULL CHECK (vat_cents >= 0),
    waiver_id      bigint REFERENCES fee_waivers(id),
    sponsor_cents  bigint NOT NULL CHECK (sponsor_cents >= 0),
    PRIMARY KEY (batch_id, merchant_id, programme_id, kind)
);

-- Per merchant: one SEPA credit transfer (when the net is positive).
CREATE TABLE settlement_payments (
    batch_id          bigint NOT NULL REFERENCES settlement_batches(id),
    merchant_id       bigint NOT NULL REFERENCES merchants(id),
    creditor_name     text NOT NULL,
    iban              text,
    bic               text,
    carried_in_cents  bigint NOT NULL,
    counter_cents     bigint NOT NULL CHECK (counter_cents >= 0),
    payout_cents      bigint NOT NULL CHECK (payout_cents >= 0),
    carried_out_cents bigint NOT NULL CHECK (carried_out_cents <= 0),
    end_to_end_id     text NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'sent', 'paid', 'returned', 'none')),
    returned_reason   text CHECK (length(returned_reason) <= 500),
    PRIMARY KEY (batch_id, merchant_id)
);

-- A draft's rows are replaced when it is prepared again; nothing else may remove them.
CREATE FUNCTION settlement_draft_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT status FROM settlement_batches WHERE id = OLD.batch_id) <> 'draft' THEN
        RAISE EXCEPTION 'table % is append-only once its batch is approved: % refused', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'CL001';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER settlement_items_draft_only BEFORE UPDATE OR DELETE ON settlement_items
    FOR EACH ROW EXECUTE FUNCTION settlement_draft_only();
CREATE TRIGGER settlement_reconversions_draft_only BEFORE UPDATE OR DELETE ON settlement_reconversions
    FOR EACH ROW EXECUTE FUNCTION settlement_draft_only();
CREATE TRIGGER settlement_lines_draft_only BEFORE UPDATE OR DELETE ON settlement_lines
    FOR EACH ROW EXECUTE FUNCTION settlement_draft_only();
CREATE TRIGGER settlement_payments_no_delete BEFORE DELETE ON settlement_payments
    FOR EACH ROW EXECUTE FUNCTION settlement_draft_only();
-- A payment's figures and bank details are fixed when prepared; only its status moves on.
CREATE FUNCTION settlement_payment_figures_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.batch_id, NEW.merchant_id, NEW.creditor_name, NEW.iban, NEW.bic, NEW.carried_in_cents,
        NEW.counter_cents, NEW.payout_cents, NEW.carried_out_cents, NEW.end_to_end_id)
       IS DISTINCT FROM
       (OLD.batch_id, OLD.merchant_id, OLD.creditor_name, OLD.iban, OLD.bic, OLD.carried_in_cents,
        OLD.counter_cents, OLD.payout_cents, OLD.carried_out_cents, OLD.end_to_end_id) THEN
        RAISE EXCEPTION 'settlement_payments: only the status of a payment changes' USING ERRCODE = 'CL001';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER settlement_payments_figures_fixed BEFORE UPDATE ON settlement_payments
    FOR EACH ROW EXECUTE FUNCTION settlement_payment_figures_fixed();

CREATE TABLE settlement_files (
    batch_id   bigint NOT NULL REFERENCES settlement_batches(id),
    kind       text NOT NULL CHECK (kind IN ('pain.001', 'csv')),
    content    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, kind)
);
CREATE TRIGGER settlement_files_append_only BEFORE UPDATE OR DELETE ON settlement_files
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- Gapless invoice numbers: the counter row is locked by the transaction that writes the
-- invoice, so a rolled-back invoice gives its number back.
CREATE TABLE invoice_counters (
    issuer_id   bigint PRIMARY KEY REFERENCES issuers(id),
    last_number bigint NOT NULL CHECK (last_number >= 0)
);
CREATE TABLE invoices (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer_id    bigint NOT NULL REFERENCES issuers(id),
    number       bigint NOT NULL CHECK (number > 0),
    merchant_id  bigint NOT NULL REFERENCES merchants(id),
    batch_id     bigint REFERENCES settlement_batches(id),
    issued_on    date NOT NULL,
    fee_cents    bigint NOT NULL CHECK (fee_cents >= 0),
    vat_cents    bigint NOT NULL CHECK (vat_cents >= 0),
    sponsor_cents bigint NOT NULL DEFAULT 0 CHECK (sponsor_cents >= 0),
    lines        jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer_id, number),
    UNIQUE (batch_id, merchant_id)
);
CREATE TRIGGER invoices_append_only BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER invoices_no_truncate BEFORE TRUNCATE ON invoices
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
"""


def upgrade() -> None:
    execute_script(SCHEMA)
