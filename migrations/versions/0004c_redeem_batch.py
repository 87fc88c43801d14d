"""Redemptions at the till in batches: many ledger moves in one statement, each refused alone.

``merchant_redeem_moves`` takes the moves of several redemptions that share one transaction
(a JSON array), locks all their accounts in id order, and runs
``merchant_redeem_move`` for each in its own subtransaction (``BEGIN … EXCEPTION``): a
ledger refusal (SQLSTATE class ``CL``: insufficient funds, idempotency conflict, …) undoes
that move only and is returned as its SQLSTATE and detail, and the others go on. Any other
error (a deadlock, a broken constraint) aborts the whole statement, so the caller rolls the
whole batch back and nothing of it happened. Each redemption stays its own transfer with its
own audit events; only the transaction, and so the commit, is shared.

Revision ID: 0004c_redeem_batch
Revises: 0004b_redeem_move
"""

from ledger.database import execute_script

revision = "0004c_redeem_batch"
down_revision = "0004b_redeem_move"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE FUNCTION merchant_redeem_moves(p_moves jsonb)
RETURNS TABLE (
    n bigint, transfer_id bigint, created boolean, taking_id bigint, effective_at timestamptz,
    balance_after_cents bigint, audit_event_id bigint, refusal_sqlstate text, refusal_detail text
) LANGUAGE plpgsql AS $$
DECLARE
    v_move jsonb;
BEGIN
    -- Every account of the batch first, in id order: two batches (two server processes)
    -- taking the same accounts then queue one behind the other instead of deadlocking.
    PERFORM 1 FROM accounts a
    WHERE a.id IN (SELECT (e->>'voucher_account_id')::bigint FROM jsonb_array_elements(p_moves) e
                   UNION SELECT (e->>'merchant_account_id')::bigint FROM jsonb_array_elements(p_moves) e)
    ORDER BY a.id FOR UPDATE;
    FOR v_move, n IN SELECT e.value, e.ordinality FROM jsonb_array_elements(p_moves) WITH ORDINALITY AS e LOOP
        refusal_sqlstate := NULL;
        refusal_detail := NULL;
        BEGIN
            SELECT m.transfer_id, m.created, m.taking_id, m.effective_at, m.balance_after_cents, m.audit_event_id
            INTO transfer_id, created, taking_id, effective_at, balance_after_cents, audit_event_id
            FROM merchant_redeem_move(
                v_move->>'key', (v_move->>'voucher_account_id')::bigint, (v_move->>'merchant_account_id')::bigint,
                (v_move->>'amount_cents')::bigint, v_move->'metadata', v_move->'event', v_move->>'actor') AS m;
        EXCEPTION WHEN OTHERS THEN
            IF SQLSTATE NOT LIKE 'CL%' THEN
                RAISE;
            END IF;
            GET STACKED DIAGNOSTICS refusal_sqlstate = RETURNED_SQLSTATE, refusal_detail = PG_EXCEPTION_DETAIL;
            transfer_id := NULL;
            created := NULL;
            taking_id := NULL;
            effective_at := NULL;
            balance_after_cents := NULL;
            audit_event_id := NULL;
        END;
        RETURN NEXT;
    END LOOP;
END
$$;
"""


def upgrade() -> None:
    execute_script(SCHEMA)
