"""Closures: the totals of a day, a month and a year (Europe/Paris calendar) and the
perpetual totals since the chain began, computed the same way by the sealer and by the
offline verifier.

Totals count every non-audit event by type, and for ledger events the number of transfers
and the volume moved (sum of credited amounts) per ``unit|kind|programme``. A month's totals
are the sum of its days', a year's of its months'.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, time, timezone
from typing import Any
from zoneinfo import ZoneInfo

from audit.canonical import utc_text

PARIS = ZoneInfo("Europe/Paris")
KINDS = ("day", "month", "year")
PARENT = {"month": "day", "year": "month"}


_LABEL_FORMAT = {"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}


def label_of(kind: str, moment: datetime) -> str:
    """The period of ``kind`` an instant falls in, on the Paris calendar."""
    return moment.astimezone(PARIS).strftime(_LABEL_FORMAT[kind])


def _start(kind: str, label: str) -> date:
    if kind == "day":
        return date.fromisoformat(label)
    if kind == "month":
        return date.fromisoformat(label + "-01")
    return date(int(label), 1, 1)


def next_label(kind: str, label: str) -> str:
    start = _start(kind, label)
    if kind == "day":
        return date.fromordinal(start.toordinal() + 1).isoformat()
    if kind == "month":
        return f"{start.year + start.month // 12:04d}-{start.month % 12 + 1:02d}"
    return f"{start.year + 1:04d}"


def bounds(kind: str, label: str) -> tuple[datetime, datetime]:
    """The period as UTC instants [start, end), midnight to midnight in Paris."""
    def midnight(day: date) -> datetime:
        return datetime.combine(day, time(0), tzinfo=PARIS).astimezone(timezone.utc)

    return midnight(_start(kind, label)), midnight(_start(kind, next_label(kind, label)))


def labels_between(kind: str, first: str, stop: str) -> list[str]:
    """Labels from ``first`` up to, not including, ``stop``."""
    labels, label = [], first
    while label < stop:
        labels.append(label)
        label = next_label(kind, label)
    return labels


def empty_totals() -> dict[str, Any]:
    return {"events": {}, "ledger": {}}


def add_record(totals: dict[str, Any], body: dict[str, Any]) -> None:
    """Count one record's body into ``totals`` (audit records themselves are not counted)."""
    event_type = body["event_type"]
    if event_type.startswith("audit."):
        return
    events = totals["events"]
    events[event_type] = events.get(event_type, 0) + 1
    if not event_type.startswith("ledger."):
        return
    payload = body.get("payload") or {}
    postings = payload.get("postings")
    if not postings:
        return
    by_unit: dict[str, int] = {}
    for _, unit, amount in postings:
        if amount > 0:
            by_unit[unit] = by_unit.get(unit, 0) + amount
    prefix = f"|{payload.get('kind')}|{(payload.get('metadata') or {}).get('programme_id', '-')}"
    ledger = totals["ledger"]
    for unit in sorted(by_unit) if len(by_unit) > 1 else by_unit:
        entry = ledger.get(unit + prefix)
        if entry is None:
            entry = ledger[unit + prefix] = {"count": 0, "volume_cents": 0}
        entry["count"] += 1
        entry["volume_cents"] += by_unit[unit]


def totals_of(bodies: Iterable[dict[str, Any]]) -> dict[str, Any]:
    totals = empty_totals()
    for body in bodies:
        add_record(totals, body)
    return totals


def sum_totals(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    result = empty_totals()
    for part in parts:
        for event_type, count in part["events"].items():
            result["events"][event_type] = result["events"].get(event_type, 0) + count
        for key, entry in part["ledger"].items():
            into = result["ledger"].setdefault(key, {"count": 0, "volume_cents": 0})
            into["count"] += entry["count"]
            into["volume_cents"] += entry["volume_cents"]
    return result


def closure_payload(
    kind: str, label: str, totals: dict[str, Any], previous_perpetual: dict[str, Any] | None,
    first_seq: int | None, last_seq: int | None, records: int,
) -> dict[str, Any]:
    start, end = bounds(kind, label)
    return {
        "kind": kind, "period": label, "from": utc_text(start), "to": utc_text(end),
        "first_seq": first_seq, "last_seq": last_seq, "records": records, "totals": totals,
        "perpetual": sum_totals([previous_perpetual or empty_totals(), totals]),
    }
