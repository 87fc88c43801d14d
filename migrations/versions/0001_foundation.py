"""Foundation: units, accounts, append-only transfers and postings, holds, the audit inbox,
users, sessions, and the minimal scheme tables (issuers, programmes, merchants, wallets).

Every write of value goes through ledger_transfer() or ledger_resolve_hold(): they check
idempotency, balance per unit and balance floors with the account rows locked in id order,
so no caller can bypass them. Transfers and postings refuse UPDATE, DELETE and TRUNCATE.

Refusals raise SQLSTATEs of class CL (mapped to ledger.errors in one place):
  CL001 append_only        CL100 invalid_transfer     CL101 unbalanced_transfer
  CL102 account_not_found  CL103 insufficient_funds   CL104 idempotency_conflict
  CL105 hold_not_found     CL106 hold_not_pending     CL107 hold_expired
  CL108 already_reversed   CL109 not_reversible       CL110 amount_exceeds_hold

Revision ID: 0001_foundation
"""

from ledger.database import execute_script

revision = "0001_foundation"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'CL001';
END $$;

CREATE TABLE units (
    code         text PRIMARY KEY CHECK (code ~ '^[A-Z]{3,8}$'),
    name         text NOT NULL,
    minor_digits smallint NOT NULL DEFAULT 2 CHECK (minor_digits BETWEEN 0 AND 4)
);
INSERT INTO units (code, name) VALUES ('EUR', 'Euro');

-- The kinds of holding, and the floor an account of that kind gets unless told otherwise
-- (NULL: may go negative, as a float or the outside world does).
CREATE TABLE account_kinds (
    kind                text PRIMARY KEY CHECK (kind ~ '^[a-z][a-z_]{1,31}$'),
    default_floor_cents bigint
);
INSERT INTO account_kinds (kind, default_floor_cents) VALUES
    ('issuer_float', NULL), ('reserve', 0), ('wallet', 0), ('voucher', 0), ('merchant', 0),
    ('fee_income', 0), ('vat_payable', 0), ('clearing', NULL), ('breakage', 0),
    ('external_bank', NULL), ('sponsor', NULL), ('counter', NULL);

CREATE TABLE accounts (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind                  text NOT NULL REFERENCES account_kinds(kind),
    unit                  text NOT NULL REFERENCES units(code),
    owner_type            text CHECK (length(owner_type) <= 40),
    owner_id              text CHECK (length(owner_id) <= 80),
    floor_cents           bigint,
    balance_cents         bigint NOT NULL DEFAULT 0,
    pending_debits_cents  bigint NOT NULL DEFAULT 0 CHECK (pending_debits_cents >= 0),
    pending_credits_cents bigint NOT NULL DEFAULT 0 CHECK (pending_credits_cents >= 0),
    created_at            timestamptz NOT NULL DEFAULT now(),
    -- The last line of defence: even a write that bypassed ledger_transfer() cannot
    -- leave an account with a floor below it.
    CONSTRAINT accounts_floor CHECK (
        floor_cents IS NULL OR balance_cents - pending_debits_cents >= floor_cents)
);
CREATE INDEX accounts_owner ON accounts (owner_type, owner_id);
CREATE TRIGGER accounts_no_delete BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TABLE transfers (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key            text NOT NULL UNIQUE CHECK (length(key) BETWEEN 1 AND 128),
    kind           text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_.]{0,39}$'),
    phase          text NOT NULL CHECK (phase IN
                       ('posted', 'pending', 'post_pending', 'void_pending', 'expire_pending')),
    pending_id     bigint REFERENCES transfers(id),
    reverses_id    bigint REFERENCES transfers(id),
    expires_at     timestamptz,
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    request_digest text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    effective_at   timestamptz NOT NULL,
    CHECK ((phase IN ('post_pending', 'void_pending', 'expire_pending')) = (pending_id IS NOT NULL)),
    CHECK (phase = 'pending' OR expires_at IS NULL)
);
CREATE UNIQUE INDEX transfers_pending_id_key ON transfers (pending_id) WHERE pending_id IS NOT NULL;
CREATE UNIQUE INDEX transfers_reverses_id_key ON transfers (reverses_id) WHERE reverses_id IS NOT NULL;
-- effective_at grows with time: a BRIN index serves period queries for a fraction of the
-- insert cost of a B-tree on the hot path.
CREATE INDEX transfers_effective_at ON transfers USING brin (effective_at);
CREATE INDEX transfers_open_holds ON transfers (expires_at) WHERE phase = 'pending';

CREATE TABLE postings (
    transfer_id  bigint NOT NULL REFERENCES transfers(id),
    account_id   bigint NOT NULL REFERENCES accounts(id),
    amount_cents bigint NOT NULL CHECK (amount_cents <> 0),
    PRIMARY KEY (transfer_id, account_id)
);
CREATE INDEX postings_account ON postings (account_id, transfer_id);

CREATE TRIGGER transfers_append_only BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER transfers_no_truncate BEFORE TRUNCATE ON transfers
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- The audit inbox: every business event is appended here in the transaction that makes the
-- change (rolled back with it). Appending takes no lock and assigns no sequence: the sealer
-- (audit/sealer.py) chains committed events into audit_records moments later, so writers
-- never queue behind the chain. Rows are never changed; one leaves only once sealed.
CREATE TABLE audit_inbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    event_type text NOT NULL CHECK (event_type ~ '^[a-z][a-z0-9_.]{1,63}$'),
    actor      text NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    payload    jsonb NOT NULL
);
CREATE TRIGGER audit_inbox_no_update BEFORE UPDATE ON audit_inbox
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_inbox_no_truncate BEFORE TRUNCATE ON audit_inbox
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Who is acting: the application sets circuit.actor for its transaction (audit.chain.set_actor).
CREATE FUNCTION audit_actor() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('circuit.actor', true), ''), 'system')
$$;

CREATE FUNCTION audit_append(p_event_type text, p_payload jsonb, p_actor text DEFAULT NULL)
RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO audit_inbox (event_type, actor, payload)
    VALUES (p_event_type, coalesce(p_actor, audit_actor()), p_payload)
    RETURNING id
$$;

-- Timestamps enter audit payloads as UTC text, whatever the session's TimeZone.
CREATE FUNCTION audit_time(p_moment timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(p_moment AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- One audit event per ledger write, with everything needed to recompute totals offline.
CREATE FUNCTION ledger_audit(p_transfer_id bigint, p_postings jsonb) RETURNS void LANGUAGE sql AS $$
    SELECT audit_append(
        CASE WHEN t.phase = 'posted' AND t.reverses_id IS NOT NULL THEN 'ledger.reversal'
             WHEN t.phase = 'posted' THEN 'ledger.transfer'
             WHEN t.phase = 'pending' THEN 'ledger.hold'
             WHEN t.phase = 'post_pending' THEN 'ledger.hold_posted'
             WHEN t.phase = 'void_pending' THEN 'ledger.hold_voided'
             ELSE 'ledger.hold_expired' END,
        jsonb_build_object(
            'transfer_id', t.id, 'key', t.key, 'kind', t.kind, 'phase', t.phase,
            'pending_id', t.pending_id, 'reverses_id', t.reverses_id,
            'effective_at', audit_time(t.effective_at),
            'expires_at', CASE WHEN t.expires_at IS NOT NULL THEN audit_time(t.expires_at) END,
            'metadata', t.metadata, 'postings', coalesce(p_postings, '[]'::jsonb)))
    FROM transfers t WHERE t.id = p_transfer_id
$$;

-- Insert the transfer row, or find the one already written under this key.
-- Returns the id and whether it was created now; a key reused for other content is refused.
CREATE FUNCTION ledger_claim_key(
    p_key text, p_kind text, p_phase text, p_pending_id bigint, p_reverses_id bigint,
    p_expires_at timestamptz, p_metadata jsonb, p_digest text, p_effective_at timestamptz,
    OUT transfer_id bigint, OUT created boolean
) LANGUAGE plpgsql AS $$
DECLARE
    v_digest text;
BEGIN
    IF p_key IS NULL OR length(p_key) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'invalid_transfer' USING ERRCODE = 'CL100',
            DETAIL = 'the idempotency key must be 1 to 128 characters';
    END IF;
    INSERT INTO transfers AS t (key, kind, phase, pending_id, reverses_id, expires_at,
                                metadata, request_digest, effective_at)
    VALUES (p_key, p_kind, p_phase, p_pending_id, p_reverses_id, p_expires_at,
            coalesce(p_metadata, '{}'::jsonb), p_digest, coalesce(p_effective_at, now()))
    ON CONFLICT (key) DO NOTHING
    RETURNING t.id INTO transfer_id;
    IF transfer_id IS NOT NULL THEN
        created := true;
        RETURN;
    END IF;
    SELECT t.id, t.request_digest INTO transfer_id, v_digest FROM transfers t WHERE t.key = p_key;
    IF v_digest IS DISTINCT FROM p_digest THEN
        RAISE EXCEPTION 'idempotency_conflict' USING ERRCODE = 'CL104',
            DETAIL = json_build_object('key', p_key, 'transfer_id', transfer_id)::text;
    END IF;
    created := false;
END $$;

-- Apply signed deltas to accounts in ONE statement: lock the rows in id order, check the
-- request (no zero amount, each account once), the floors and the balance per unit on the
-- locked rows, and only if all hold, update the balances (or the pending columns of a hold)
-- and write the postings. Anything wrong: diagnose and refuse (the caller's transaction
-- rolls back). One statement instead of one per rule is what keeps the ledger near the
-- speed of a raw write.
CREATE FUNCTION ledger_apply(
    p_transfer_id bigint, p_account_ids bigint[], p_amounts bigint[], p_balance boolean
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_result record;
    v_short record;
    v_unbalanced record;
BEGIN
    WITH request AS (
        SELECT d.id, d.amount FROM unnest(p_account_ids, p_amounts) d(id, amount)
    ), locked AS (
        SELECT a.id, a.unit, a.floor_cents, a.balance_cents - a.pending_debits_cents AS available, r.amount
        FROM request r JOIN accounts a ON a.id = r.id
        ORDER BY a.id FOR UPDATE OF a
    ), verdict AS (
        -- One pass; the per-unit grouping runs only for a transfer in several units.
        SELECT count(*) AS n_wanted,
               count(DISTINCT r.id) AS n_distinct,
               coalesce(bool_or(r.amount IS NULL OR r.amount = 0 OR abs(r.amount) > 1000000000000000), true) AS has_zero,
               count(l.id) AS n_found,
               coalesce(bool_or(l.amount < 0 AND l.floor_cents IS NOT NULL
                                AND l.available + l.amount < l.floor_cents), false) AS is_short,
               CASE WHEN count(DISTINCT l.unit) <= 1 THEN (coalesce(sum(l.amount), 0) <> 0)::int
                    ELSE (SELECT count(*) FROM (SELECT 1 FROM locked GROUP BY unit
                                                HAVING sum(amount) <> 0) u)::int
               END AS n_unbalanced
        FROM request r LEFT JOIN locked l ON l.id = r.id
    ), ok AS (
        SELECT * FROM verdict
        WHERE n_found = n_wanted AND n_distinct = n_wanted AND NOT has_zero AND NOT is_short AND n_unbalanced = 0
    ), moved AS (
        UPDATE accounts a SET
            balance_cents         = a.balance_cents + CASE WHEN p_balance THEN l.amount ELSE 0 END,
            pending_debits_cents  = a.pending_debits_cents + CASE WHEN p_balance THEN 0 ELSE greatest(-l.amount, 0) END,
            pending_credits_cents = a.pending_credits_cents + CASE WHEN p_balance THEN 0 ELSE greatest(l.amount, 0) END
        FROM locked l, ok
        WHERE a.id = l.id
        RETURNING a.id
    ), posted AS (
        INSERT INTO postings (transfer_id, account_id, amount_cents)
        SELECT p_transfer_id, l.id, l.amount FROM locked l, ok
        RETURNING account_id
    )
    SELECT v.*, (SELECT count(*) FROM moved) AS n_moved,
           (SELECT jsonb_agg(jsonb_build_array(l.id, l.unit, l.amount) ORDER BY l.id) FROM locked l) AS postings
    INTO v_result FROM verdict v;

    IF v_result.n_moved = v_result.n_wanted THEN
        RETURN v_result.postings;
    END IF;
    IF v_result.has_zero THEN
        RAISE EXCEPTION 'invalid_transfer' USING ERRCODE = 'CL100',
            DETAIL = 'every posting moves a non-zero amount of at most 10^15 minor units';
    END IF;
    IF v_result.n_distinct <> v_result.n_wanted THEN
        RAISE EXCEPTION 'invalid_transfer' USING ERRCODE = 'CL100',
            DETAIL = 'an account appears at most once in a transfer';
    END IF;
    IF v_result.n_found <> v_result.n_wanted THEN
        RAISE EXCEPTION 'account_not_found' USING ERRCODE = 'CL102',
            DETAIL = json_build_object('account_ids', (
                SELECT json_agg(d.id) FROM unnest(p_account_ids) d(id)
                WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = d.id)))::text;
    END IF;
    IF v_result.n_unbalanced > 0 THEN
        SELECT a.unit, sum(d.amount) AS total INTO v_unbalanced
        FROM unnest(p_account_ids, p_amounts) d(id, amount) JOIN accounts a ON a.id = d.id
        GROUP BY a.unit HAVING sum(d.amount) <> 0 ORDER BY a.unit LIMIT 1;
        RAISE EXCEPTION 'unbalanced_transfer' USING ERRCODE = 'CL101',
            DETAIL = json_build_object('unit', v_unbalanced.unit, 'sum_cents', v_unbalanced.total)::text;
    END IF;
    SELECT a.id, a.balance_cents - a.pending_debits_cents AS available INTO v_short
    FROM unnest(p_account_ids, p_amounts) d(id, amount) JOIN accounts a ON a.id = d.id
    WHERE d.amount < 0 AND a.floor_cents IS NOT NULL
      AND a.balance_cents - a.pending_debits_cents + d.amount < a.floor_cents
    ORDER BY a.id LIMIT 1;
    RAISE EXCEPTION 'insufficient_funds' USING ERRCODE = 'CL103',
        DETAIL = json_build_object('account_id', v_short.id, 'available_cents', v_short.available)::text;
END $$;

-- Give back what a pending transfer reserved (resolving a hold), rows locked in id order.
CREATE FUNCTION ledger_release(p_hold_id bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM accounts a WHERE a.id IN (SELECT p.account_id FROM postings p WHERE p.transfer_id = p_hold_id)
    ORDER BY a.id FOR UPDATE;
    UPDATE accounts a SET
        pending_debits_cents  = a.pending_debits_cents  - greatest(-p.amount_cents, 0),
        pending_credits_cents = a.pending_credits_cents - greatest(p.amount_cents, 0)
    FROM postings p WHERE p.transfer_id = p_hold_id AND a.id = p.account_id;
END $$;

-- A transfer (phase posted) or a hold (phase pending); with p_reverses_id and no postings,
-- the reversal of an earlier posted transfer.
CREATE FUNCTION ledger_transfer(
    p_key text, p_kind text, p_account_ids bigint[], p_amounts bigint[],
    p_metadata jsonb DEFAULT NULL, p_effective_at timestamptz DEFAULT NULL,
    p_pending boolean DEFAULT false, p_expires_at timestamptz DEFAULT NULL,
    p_reverses_id bigint DEFAULT NULL,
    OUT transfer_id bigint, OUT created boolean
) LANGUAGE plpgsql AS $$
DECLARE
    v_original record;
    v_claim record;
    v_ids bigint[] := p_account_ids;
    v_amounts bigint[] := p_amounts;
BEGIN
    IF p_reverses_id IS NOT NULL THEN
        SELECT t.id, t.phase INTO v_original FROM transfers t WHERE t.id = p_reverses_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'not_reversible' USING ERRCODE = 'CL109',
                DETAIL = json_build_object('transfer_id', p_reverses_id, 'reason', 'not_found')::text;
        END IF;
        IF v_original.phase NOT IN ('posted', 'post_pending') THEN
            RAISE EXCEPTION 'not_reversible' USING ERRCODE = 'CL109',
                DETAIL = json_build_object('transfer_id', p_reverses_id, 'reason', v_original.phase)::text;
        END IF;
        SELECT array_agg(p.account_id ORDER BY p.account_id), array_agg(-p.amount_cents ORDER BY p.account_id)
        INTO v_ids, v_amounts FROM postings p WHERE p.transfer_id = p_reverses_id;
    END IF;

    IF v_ids IS NULL OR v_amounts IS NULL OR cardinality(v_ids) <> cardinality(v_amounts) THEN
        RAISE EXCEPTION 'invalid_transfer' USING ERRCODE = 'CL100',
            DETAIL = 'account ids and amounts must be two arrays of the same length';
    END IF;
    IF cardinality(v_ids) < 2 THEN
        RAISE EXCEPTION 'invalid_transfer' USING ERRCODE = 'CL100',
            DETAIL = 'a transfer needs at least two postings';
    END IF;
    IF p_pending AND (p_expires_at IS NULL OR p_expires_at <= now()) THEN
        RAISE EXCEPTION 'invalid_transfer' USING ERRCODE = 'CL100',
            DETAIL = 'a hold needs an expiry in the future';
    END IF;

    v_claim := ledger_claim_key(
        p_key, p_kind, CASE WHEN p_pending THEN 'pending' ELSE 'posted' END, NULL, p_reverses_id,
        CASE WHEN p_pending THEN p_expires_at END, p_metadata,
        md5(jsonb_build_array(p_kind, p_pending, p_expires_at, p_reverses_id, p_effective_at,
                              v_ids, v_amounts, coalesce(p_metadata, '{}'::jsonb))::text),
        p_effective_at);
    transfer_id := v_claim.transfer_id;
    created := v_claim.created;
    IF NOT created THEN
        RETURN;
    END IF;

    IF p_reverses_id IS NOT NULL
       AND EXISTS (SELECT 1 FROM transfers t WHERE t.reverses_id = p_reverses_id AND t.id <> transfer_id) THEN
        RAISE EXCEPTION 'already_reversed' USING ERRCODE = 'CL108',
            DETAIL = json_build_object('transfer_id', p_reverses_id)::text;
    END IF;

    PERFORM ledger_audit(transfer_id, ledger_apply(transfer_id, v_ids, v_amounts, NOT p_pending));
END $$;

-- Post (fully or partly), void, or expire a hold. A hold is resolved at most once.
CREATE FUNCTION ledger_resolve_hold(
    p_key text, p_hold_id bigint, p_action text, p_amount bigint DEFAULT NULL,
    p_metadata jsonb DEFAULT NULL,
    OUT transfer_id bigint, OUT created boolean
) LANGUAGE plpgsql AS $$
DECLARE
    v_hold record;
    v_claim record;
    v_ids bigint[];
    v_amounts bigint[];
    v_hold_cents bigint;
    v_phase text;
    v_resolution text;
BEGIN
    v_phase := CASE p_action WHEN 'post' THEN 'post_pending' WHEN 'void' THEN 'void_pending'
                             WHEN 'expire' THEN 'expire_pending' END;
    IF v_phase IS NULL THEN
        RAISE EXCEPTION 'invalid_transfer' USING ERRCODE = 'CL100',
            DETAIL = 'a hold is resolved by post, void or expire';
    END IF;
    SELECT t.id, t.kind, t.phase, t.expires_at INTO v_hold FROM transfers t WHERE t.id = p_hold_id;
    IF NOT FOUND OR v_hold.phase <> 'pending' THEN
        RAISE EXCEPTION 'hold_not_found' USING ERRCODE = 'CL105',
            DETAIL = json_build_object('hold_id', p_hold_id)::text;
    END IF;

    v_claim := ledger_claim_key(
        p_key, v_hold.kind, v_phase, p_hold_id, NULL, NULL, p_metadata,
        md5(jsonb_build_array(p_action, p_hold_id, p_amount, coalesce(p_metadata, '{}'::jsonb))::text),
        NULL);
    transfer_id := v_claim.transfer_id;
    created := v_claim.created;
    IF NOT created THEN
        RETURN;
    END IF;

    SELECT r.phase INTO v_resolution FROM transfers r
    WHERE r.pending_id = p_hold_id AND r.id <> transfer_id;
    IF FOUND THEN
        RAISE EXCEPTION 'hold_not_pending' USING ERRCODE = 'CL106',
            DETAIL = json_build_object('hold_id', p_hold_id, 'state', v_resolution)::text;
    END IF;
    IF p_action = 'post' AND v_hold.expires_at <= now() THEN
        RAISE EXCEPTION 'hold_expired' USING ERRCODE = 'CL107',
            DETAIL = json_build_object('hold_id', p_hold_id, 'expired_at', v_hold.expires_at)::text;
    END IF;
    IF p_action = 'expire' AND v_hold.expires_at > now() THEN
        RAISE EXCEPTION 'hold_not_pending' USING ERRCODE = 'CL106',
            DETAIL = json_build_object('hold_id', p_hold_id, 'state', 'pending')::text;
    END IF;

    SELECT array_agg(p.account_id ORDER BY p.account_id), array_agg(p.amount_cents ORDER BY p.account_id),
           sum(greatest(p.amount_cents, 0))
    INTO v_ids, v_amounts, v_hold_cents FROM postings p WHERE p.transfer_id = p_hold_id;
    PERFORM ledger_release(p_hold_id);

    IF p_action <> 'post' THEN
        PERFORM ledger_audit(transfer_id, NULL);
        RETURN;
    END IF;
    IF p_amount IS NOT NULL AND p_amount <> v_hold_cents THEN
        IF p_amount <= 0 OR p_amount > v_hold_cents THEN
            RAISE EXCEPTION 'amount_exceeds_hold' USING ERRCODE = 'CL110',
                DETAIL = json_build_object('hold_id', p_hold_id, 'hold_cents', v_hold_cents)::text;
        END IF;
        IF cardinality(v_ids) <> 2 THEN
            RAISE EXCEPTION 'invalid_transfer' USING ERRCODE = 'CL100',
                DETAIL = 'only a two-posting hold can be posted in part';
        END IF;
        v_amounts := ARRAY[sign(v_amounts[1]) * p_amount, sign(v_amounts[2]) * p_amount];
    END IF;
    PERFORM ledger_audit(transfer_id, ledger_apply(transfer_id, v_ids, v_amounts, true));
END $$;

-- The scheme: who issues, what they issue, who accepts it, who holds it.
CREATE TABLE issuers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    siren      text CHECK (siren ~ '^[0-9]{9}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE programmes (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer_id          bigint NOT NULL REFERENCES issuers(id),
    kind               text NOT NULL CHECK (kind IN ('gift', 'culture', 'local_currency')),
    name               text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    unit               text NOT NULL REFERENCES units(code),
    float_account_id   bigint NOT NULL REFERENCES accounts(id),
    reserve_account_id bigint NOT NULL REFERENCES accounts(id),
    bank_account_id    bigint NOT NULL REFERENCES accounts(id),
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE merchants (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer_id  bigint NOT NULL REFERENCES issuers(id),
    legal_name text NOT NULL CHECK (length(legal_name) BETWEEN 1 AND 200),
    trade_name text NOT NULL CHECK (length(trade_name) BETWEEN 1 AND 200),
    status     text NOT NULL DEFAULT 'approved' CHECK (status IN ('applied', 'approved', 'rejected', 'suspended')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE wallets (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    programme_id bigint NOT NULL REFERENCES programmes(id),
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    account_id   bigint NOT NULL UNIQUE REFERENCES accounts(id),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- People and machines that use the service.
CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text NOT NULL UNIQUE CHECK (length(email) BETWEEN 3 AND 254),
    display_name  text NOT NULL DEFAULT '' CHECK (length(display_name) <= 200),
    role          text NOT NULL CHECK (role IN ('operator', 'approver', 'employer', 'resident',
                                                'merchant_owner', 'merchant_cashier', 'auditor')),
    password_hash text NOT NULL,
    issuer_id     bigint REFERENCES issuers(id),
    merchant_id   bigint REFERENCES merchants(id),
    wallet_id     bigint REFERENCES wallets(id),
    totp_secret   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);

CREATE TABLE sessions (
    token_hash   bytea PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users(id),
    kind         text NOT NULL CHECK (kind IN ('session', 'api')),
    label        text NOT NULL DEFAULT '' CHECK (length(label) <= 200),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX sessions_user ON sessions (user_id);
"""


def upgrade() -> None:
    execute_script(SCHEMA)
