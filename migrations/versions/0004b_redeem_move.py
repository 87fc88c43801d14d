"""Redemption hot path: the ledger move and what follows it, in one call.

``merchant_redeem_move`` runs the ledger transfer of a redemption (``ledger_transfer``: the
idempotency key, the floors and the row locks stay the ledger's), then, if it moved value,
reserves the taking's id, reads the transfer's time and the voucher's balance right after it
(its row is locked by the transfer) and appends the audit event. A redemption at the till
is thus one statement between its read and its takings row instead of two; the receipt is
signed by the server between this call and the takings row's insert, in the same transaction.

Revision ID: 0004b_redeem_move
Revises: 0004_merchants
"""

from ledger.database import execute_script

revision = "0004b_redeem_move"
down_revision = "0004_merchants"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE FUNCTION merchant_redeem_move(
    p_key text, p_voucher_account bigint, p_merchant_account bigint, p_amount bigint,
    p_metadata jsonb, p_event jsonb, p_actor text,
    OUT transfer_id bigint, OUT created boolean, OUT taking_id bigint, OUT effective_at timestamptz,
    OUT balance_after_cents bigint, OUT audit_event_id bigint
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    SELECT m.transfer_id, m.created INTO transfer_id, created
    FROM ledger_transfer(p_key, 'voucher.redeem', ARRAY[p_voucher_account, p_merchant_account],
                         ARRAY[-p_amount, p_amount], p_metadata) AS m;
    IF NOT created THEN  -- the same request, committed by a concurrent twin: nothing to add
        RETURN;
    END IF;
    taking_id := nextval(pg_get_serial_sequence('merchant_takings', 'id'));
    SELECT t.effective_at INTO effective_at FROM transfers t WHERE t.id = merchant_redeem_move.transfer_id;
    SELECT a.balance_cents - a.pending_debits_cents INTO balance_after_cents FROM accounts a WHERE a.id = p_voucher_account;
    audit_event_id := audit_append('voucher.redeemed', p_event || jsonb_build_object(
        'taking_id', taking_id, 'transfer_id', merchant_redeem_move.transfer_id,
        'voucher_balance_after_cents', balance_after_cents), p_actor);
END
$$;
"""


def upgrade() -> None:
    execute_script(SCHEMA)

