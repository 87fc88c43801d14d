"""Audit: the sealed hash chain, signed checkpoints and public keys.

audit_records, audit_checkpoints and audit_keys refuse UPDATE, DELETE and TRUNCATE. An inbox
event may be deleted only once its sealed record exists. audit_state holds what the sealer
derives (size, head, Merkle frontier) so it need not re-read the chain; verification never
trusts it.

Revision ID: 0002_audit
Revises: 0001_foundation
"""

from ledger.database import execute_script

revision = "0002_audit"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE TABLE audit_keys (
    key_id         text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{32}$'),
    public_key     bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    algorithm      text NOT NULL DEFAULT 'ed25519' CHECK (algorithm = 'ed25519'),
    introduced_seq bigint NOT NULL,
    added_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_records (
    seq        bigint PRIMARY KEY CHECK (seq > 0),
    chain      text NOT NULL,
    event_id   bigint UNIQUE,
    ts         timestamptz NOT NULL,
    event_type text NOT NULL,
    body       bytea NOT NULL,
    prev_hash  bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash       bytea NOT NULL CHECK (length(hash) = 32),
    algorithm  text NOT NULL
);
CREATE INDEX audit_records_ts ON audit_records USING brin (ts);
CREATE INDEX audit_records_type ON audit_records (event_type, seq);

CREATE TABLE audit_checkpoints (
    size       bigint PRIMARY KEY CHECK (size > 0),
    statement  bytea NOT NULL,
    key_id     text NOT NULL REFERENCES audit_keys(key_id),
    signature  bytea NOT NULL CHECK (length(signature) = 64),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_state (
    chain           text PRIMARY KEY,
    size            bigint NOT NULL DEFAULT 0,
    head_hash       bytea NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000',
    head_ts         timestamptz,
    frontier        bytea[] NOT NULL DEFAULT '{}',
    checkpoint_size bigint NOT NULL DEFAULT 0,
    checkpoint_at   timestamptz
);

CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_keys_append_only BEFORE UPDATE OR DELETE ON audit_keys
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_keys_no_truncate BEFORE TRUNCATE ON audit_keys
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE FUNCTION audit_inbox_only_sealed_leave() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM audit_records r WHERE r.event_id = OLD.id) THEN
        RAISE EXCEPTION 'audit event % is not sealed yet: it cannot be removed', OLD.id
            USING ERRCODE = 'CL001';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER audit_inbox_only_sealed_leave BEFORE DELETE ON audit_inbox
    FOR EACH ROW EXECUTE FUNCTION audit_inbox_only_sealed_leave();
"""


def upgrade() -> None:
    execute_script(SCHEMA)
