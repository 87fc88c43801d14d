"""Audit: a ledger write is its own audit event; the sealer reads it from the transfer row.

Until this revision every ledger write also inserted its event into ``audit_inbox``, which
the sealer then chained and deleted: per transfer, a second row of ~450 bytes with its index,
its deletion and its vacuuming (BENCHMARKS.md, Audit, for what that cost). The transfer row
already holds everything the event says, so it now carries the two facts it lacked, who
acted (``actor``) and which transaction wrote it (``audit_xid``, the top-level transaction
id), and the sealer builds the event from the transfer and its postings
(``audit_ledger_events``), byte for byte the payload that ``ledger_audit`` used to write.

Exactly once without marking rows: the sealer keeps a horizon (``audit_state.ledger_horizon``).
A pass reads the oldest transaction still running (the xmin of its snapshot); every
transaction older than that has ended, so the transfers with ``audit_xid`` between the horizon
and that xmin are exactly the committed ones not yet chained, and none can appear later. The
pass chains them and moves the horizon up. Inbox events (everything else) take the same
horizon, so each transaction's events are chained together, transaction by transaction.

Transfers written before this revision have no ``audit_xid``: their events are in the inbox
(or already chained) and stay there. The chain's record index on ``(event_type, seq)`` served
only the closures; it becomes a partial index on them, and the unique index on ``event_id``
covers only inbox events, so chaining a ledger event writes two index entries fewer.

Revision ID: 0002b_ledger_events
Revises: 0002_audit
"""

from ledger.database import execute_script

revision = "0002b_ledger_events"
down_revision = "0002_audit"
branch_labels = None
depends_on = None

SCHEMA = r"""
-- Adding the columns without a default leaves earlier rows NULL (their events went through
-- the inbox); the defaults apply from now on.
ALTER TABLE transfers ADD COLUMN actor text CHECK (length(actor) BETWEEN 1 AND 200);
ALTER TABLE transfers ALTER COLUMN actor SET DEFAULT audit_actor();
ALTER TABLE transfers ADD COLUMN audit_xid bigint;
ALTER TABLE transfers ALTER COLUMN audit_xid SET DEFAULT pg_current_xact_id()::text::bigint;
CREATE INDEX transfers_audit_xid ON transfers (audit_xid) WHERE audit_xid IS NOT NULL;

ALTER TABLE audit_inbox ADD COLUMN xid bigint;
ALTER TABLE audit_inbox ALTER COLUMN xid SET DEFAULT pg_current_xact_id()::text::bigint;

ALTER TABLE audit_state ADD COLUMN ledger_horizon bigint NOT NULL DEFAULT 0;

-- The ledger functions still call their audit hook; the event is now the transfer itself.
CREATE OR REPLACE FUNCTION ledger_audit(p_transfer_id bigint, p_postings jsonb)
RETURNS void LANGUAGE sql AS $$ SELECT $$;

-- The audit events of the transfers written by transactions with ids in [p_from, p_to)
-- (p_to NULL: no upper bound), with the payload ledger_audit wrote before this revision.
CREATE FUNCTION audit_ledger_events(p_from bigint, p_to bigint)
RETURNS TABLE (xid bigint, transfer_id bigint, event_at timestamptz, event_type text, actor text, payload jsonb)
LANGUAGE sql STABLE AS $$
    SELECT t.audit_xid, t.id, t.created_at,
        CASE WHEN t.phase = 'posted' AND t.reverses_id IS NOT NULL THEN 'ledger.reversal'
             WHEN t.phase = 'posted' THEN 'ledger.transfer'
             WHEN t.phase = 'pending' THEN 'ledger.hold'
             WHEN t.phase = 'post_pending' THEN 'ledger.hold_posted'
             WHEN t.phase = 'void_pending' THEN 'ledger.hold_voided'
             ELSE 'ledger.hold_expired' END,
        coalesce(t.actor, 'system'),
        jsonb_build_object(
            'transfer_id', t.id, 'key', t.key, 'kind', t.kind, 'phase', t.phase,
            'pending_id', t.pending_id, 'reverses_id', t.reverses_id,
            'effective_at', audit_time(t.effective_at),
            'expires_at', CASE WHEN t.expires_at IS NOT NULL THEN audit_time(t.expires_at) END,
            'metadata', t.metadata,
            'postings', coalesce((
                SELECT jsonb_agg(jsonb_build_array(p.account_id, a.unit, p.amount_cents) ORDER BY p.account_id)
                FROM postings p JOIN accounts a ON a.id = p.account_id WHERE p.transfer_id = t.id), '[]'::jsonb))
    FROM transfers t
    WHERE t.audit_xid >= p_from AND (p_to IS NULL OR t.audit_xid < p_to)
$$;

-- Every event written and not yet chained, wherever it waits.
CREATE VIEW audit_pending AS
    SELECT e.xid, 'ledger'::text AS source, e.transfer_id AS id, e.event_at, e.event_type, e.actor, e.payload
    FROM audit_ledger_events(coalesce((SELECT min(ledger_horizon) FROM audit_state), 0), NULL) e
    UNION ALL
    SELECT i.xid, 'inbox', i.id, i.event_at, i.event_type, i.actor, i.payload FROM audit_inbox i;

DROP INDEX audit_records_type;
CREATE INDEX audit_records_closures ON audit_records (seq) WHERE event_type = 'audit.closure';
ALTER TABLE audit_records DROP CONSTRAINT audit_records_event_id_key;
CREATE UNIQUE INDEX audit_records_event_id ON audit_records (event_id) WHERE event_id IS NOT NULL;
"""


def upgrade() -> None:
    execute_script(SCHEMA)
