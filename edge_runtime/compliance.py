"""Cashier compliance: did the cashier ask for ID on a restricted sale when the rule said to?

Each receipt the POS posts gets one outcome, decided once (when the receipt is first stored) and
stored in the same transaction as the receipt, so a retry, a crash or a restart can never change or
double it:

- `not_restricted`: no item of a restricted category on the receipt;
- `no_face`: restricted, but no face was seen at the lane (not a violation; counted, because a
  lane that is always `no_face` is a problem too);
- `not_required`: the shopper's estimate cleared the rule (ID optional);
- `checked`: the rule required ID and the cashier recorded `performed`;
- `violation`: the rule required ID and the cashier recorded `not_performed` or nothing.

The decision used is the `/check` answer the POS got for that shopper, when there was one (it stays
attached to the lane's next sale until a new shopper shows up, or for `compliance.check_valid_s`),
else the decision at the moment of the receipt; the row says which.

The audit rows are a hash chain: each row's `row_hash` covers the row and the previous row's hash,
so editing or deleting a row breaks the chain from there on (`verify_chain`). Retention deletes whole
days from the oldest and records the last deleted row's hash, from which the chain goes on.
Stored per row: lane, receipt id, time, outcome, band, the cashier's keyed pseudonym (never the
code), what was recorded at the till, and the rule; never an image or an exact age."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sqlite3
import threading
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agetool.contract import Challenge25Policy
from agetool.edge_runtime.decide import REASON_NO_FACE, Decision
from agetool.edge_runtime.migrations import connect_readonly, has_table, utc_seconds_iso
from agetool.edge_runtime.pos_schema import ID_CHECK_PERFORMED, ReceiptIn

if TYPE_CHECKING:
    from agetool.edge_runtime.config import ComplianceConfig

log = logging.getLogger(__name__)

CHECKED = "checked"
NOT_REQUIRED = "not_required"
VIOLATION = "violation"
NO_FACE = "no_face"
NOT_RESTRICTED = "not_restricted"
OUTCOMES: tuple[str, ...] = (CHECKED, NOT_REQUIRED, VIOLATION, NO_FACE, NOT_RESTRICTED)
# Outcomes of receipts with a restricted item: the denominator of violation rates.
RESTRICTED_OUTCOMES: tuple[str, ...] = (CHECKED, NOT_REQUIRED, VIOLATION, NO_FACE)

ID_CHECK_NOT_RECORDED = "not_recorded"
SOURCE_CHECK = "check"
SOURCE_RECEIPT = "receipt"
GENESIS_HASH = "0" * 64
# 64 bits of HMAC-SHA256: no collision among a store's cashiers, short enough to read in a report.
PSEUDONYM_HEX_CHARS = 16


# --- The rule -----------------------------------------------------------------------------------
def pseudonymise(key: bytes, cashier_code: str) -> str:
    """A stable pseudonym for a POS cashier code: HMAC-SHA256 with the configured key, shortened.
    Without the key it cannot be linked back to the code, not even by trying every code."""
    digest = hmac.new(key, cashier_code.encode("utf-8"), hashlib.sha256).hexdigest()
    return "c-" + digest[:PSEUDONYM_HEX_CHARS]


@dataclass(frozen=True)
class ComplianceRules:
    """What compliance checks against, resolved from `compliance:` and the daemon's policy."""

    restricted: dict[str, int]  # category (lower case) -> legal age in years
    policy: Challenge25Policy
    cashier_key: bytes | None
    check_valid_s: float | None  # None: the check stays attached until a new shopper shows up

    @classmethod
    def from_config(cls, config: "ComplianceConfig", daemon_policy: Challenge25Policy) -> "ComplianceRules":
        policy = Challenge25Policy(
            policy_age_years=config.policy_age_years if config.policy_age_years is not None
            else daemon_policy.policy_age_years,
            buffer_years=config.buffer_years if config.buffer_years is not None else daemon_policy.buffer_years,
        )
        key = config.cashier_key.encode("utf-8") if config.cashier_key else None
        return cls(dict(config.restricted_categories), policy, key, config.check_valid_s)

    def restricted_on(self, receipt: ReceiptIn) -> list[str]:
        """The restricted categories among the receipt's items (lower case, sorted, once each)."""
        return sorted({i.category.lower() for i in receipt.items or [] if i.category.lower() in self.restricted})

    def threshold_years(self, categories: list[str]) -> float:
        """Ask for ID below this: the policy age (or a higher legal age on the receipt) plus the buffer."""
        legal = max((self.restricted[c] for c in categories), default=0)
        return max(self.policy.policy_age_years, float(legal)) + self.policy.buffer_years

    def id_check_required(self, decision: Decision, threshold_years: float) -> bool:
        # The same threshold as the daemon's: take the answer the POS got, not a recomputation from
        # the rounded bounds (which could differ by a hundredth of a year at the edge).
        if threshold_years == decision.threshold_years:
            return decision.id_check_required
        return decision.lower_years is None or decision.lower_years < threshold_years

    def pseudonym(self, cashier_code: str | None) -> str | None:
        if cashier_code is None or self.cashier_key is None:
            return None
        return pseudonymise(self.cashier_key, cashier_code)


# --- Which /check answer belongs to a sale -------------------------------------------------------
@dataclass(frozen=True)
class CheckAnswer:
    """A /check answer the POS got, and when (monotonic seconds)."""

    decision: Decision
    asked_s: float


class CheckLedger:
    """The latest /check answer per lane, until a receipt uses it, a new shopper shows up at the
    lane, or (with valid_s) it is older than valid_s. Thread-safe."""

    def __init__(self, valid_s: float | None) -> None:
        self.valid_s = valid_s
        self._answers: dict[str, CheckAnswer] = {}
        self._lock = threading.Lock()

    def remember(self, decision: Decision, asked_s: float) -> None:
        with self._lock:
            self._answers[decision.lane] = CheckAnswer(decision, asked_s)

    def attached(self, lane: str, track_id: int | None, track_first_seen_s: float | None,
                 now_s: float) -> CheckAnswer | None:
        """The answer that belongs to a sale at `lane` now, given the shopper in view (if any)."""
        with self._lock:
            answer = self._answers.get(lane)
        if answer is None:
            return None
        if self.valid_s is not None:
            return answer if now_s - answer.asked_s <= self.valid_s else None
        new_shopper = (track_id is not None and track_id != answer.decision.track_id
                       and track_first_seen_s is not None and track_first_seen_s > answer.asked_s)
        return None if new_shopper else answer

    def used(self, lane: str, answer: CheckAnswer | None) -> None:
        """A receipt was stored: the lane's answer belongs to that sale, not to the next one."""
        with self._lock:
            if answer is None or self._answers.get(lane) is answer:
                self._answers.pop(lane, None)


# --- Records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComplianceDraft:
    """One receipt's outcome, before it takes its place in the chain."""

    lane: str
    receipt_id: str
    recorded_at_utc: str
    day: str
    outcome: str
    restricted: str
    cashier: str | None
    id_check: str
    id_check_required: int
    band: str
    decision_reason: str
    decision_source: str
    check_called: int
    rule: str


@dataclass(frozen=True)
class ComplianceRecord(ComplianceDraft):
    seq: int
    prev_hash: str
    row_hash: str

    def to_api(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "restricted_categories": [c for c in self.restricted.split(",") if c],
            "cashier": self.cashier,
            "id_check": self.id_check,
            "id_check_required": bool(self.id_check_required),
            "band": self.band,
            "decision_source": self.decision_source,
            "check_called": bool(self.check_called),
            "rule": self.rule,
        }


DRAFT_COLUMNS = tuple(f.name for f in fields(ComplianceDraft))
RECORD_COLUMNS = DRAFT_COLUMNS + ("seq", "prev_hash", "row_hash")


def evaluate(
    lane: str,
    receipt: ReceiptIn,
    decision_now: Decision,
    answer: CheckAnswer | None,
    rules: ComplianceRules,
    wall_s: float,
) -> ComplianceDraft:
    """The outcome of one receipt: see the module docstring."""
    decision = answer.decision if answer is not None else decision_now
    categories = rules.restricted_on(receipt)
    threshold = rules.threshold_years(categories)
    required = rules.id_check_required(decision, threshold)
    if not categories:
        outcome = NOT_RESTRICTED
    elif decision.reason == REASON_NO_FACE:
        outcome = NO_FACE
    elif not required:
        outcome = NOT_REQUIRED
    elif receipt.id_check == ID_CHECK_PERFORMED:
        outcome = CHECKED
    else:
        outcome = VIOLATION
    recorded_at = utc_seconds_iso(wall_s)
    return ComplianceDraft(
        lane=lane, receipt_id=receipt.receipt_id, recorded_at_utc=recorded_at, day=recorded_at[:10],
        outcome=outcome, restricted=",".join(categories),
        # Only restricted sales carry a cashier: the table is about ID checks, not about who sold what.
        cashier=rules.pseudonym(receipt.cashier_id) if categories else None,
        id_check=receipt.id_check or ID_CHECK_NOT_RECORDED, id_check_required=int(required),
        band=decision.band, decision_reason=decision.reason,
        decision_source=SOURCE_CHECK if answer is not None else SOURCE_RECEIPT,
        check_called=int(answer is not None), rule=f"ID below {threshold:.1f} years",
    )


# --- The chain ----------------------------------------------------------------------------------
def row_hash(prev_hash: str, seq: int, draft: ComplianceDraft) -> str:
    """sha256 over the previous row's hash, this row's place and everything it says."""
    payload = [prev_hash, seq, *(getattr(draft, column) for column in DRAFT_COLUMNS)]
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode("utf-8")).hexdigest()


def _record(row: tuple[Any, ...]) -> ComplianceRecord:
    return ComplianceRecord(**dict(zip(RECORD_COLUMNS, row)))


def select_record(db: sqlite3.Connection, lane: str, receipt_id: str) -> ComplianceRecord | None:
    row = db.execute(f"SELECT {', '.join(RECORD_COLUMNS)} FROM compliance WHERE lane = ? AND receipt_id = ?",
                     (lane, receipt_id)).fetchone()
    return _record(row) if row else None


def _chain_anchor(db: sqlite3.Connection) -> tuple[int, str]:
    """(seq the chain starts after, the hash it starts from): the last purge's, else the genesis."""
    row = db.execute("SELECT through_seq, through_hash FROM compliance_purges ORDER BY id DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)


def append(db: sqlite3.Connection, draft: ComplianceDraft) -> ComplianceRecord:
    """Add a row at the end of the chain. The caller holds the (IMMEDIATE) transaction."""
    last = db.execute("SELECT row_hash FROM compliance ORDER BY seq DESC LIMIT 1").fetchone()
    prev = str(last[0]) if last else _chain_anchor(db)[1]
    seq = db.execute(
        f"INSERT INTO compliance ({', '.join(DRAFT_COLUMNS)}, prev_hash, row_hash) "
        f"VALUES ({', '.join('?' * len(DRAFT_COLUMNS))}, ?, '')",
        (*asdict(draft).values(), prev),
    ).lastrowid
    digest = row_hash(prev, int(seq), draft)
    db.execute("UPDATE compliance SET row_hash = ? WHERE seq = ?", (digest, seq))
    return ComplianceRecord(**asdict(draft), seq=int(seq), prev_hash=prev, row_hash=digest)


def purge_days(db: sqlite3.Connection, now_wall_s: float, retention_days: int) -> int:
    """Delete the oldest rows, whole days of them, keeping today and the `retention_days` before it;
    record the purge (and the last deleted row's hash) so the chain still verifies. The caller holds
    the transaction. Only a prefix of the chain is ever deleted: should the clock have gone back, a
    late row of an old day waits until every row before it is old too. On a till that syncs, rows the
    centre lacks stay (sync_specs.retention_guard; still a prefix: it only lowers the bound)."""
    from agetool.edge_runtime.sync_specs import retention_guard

    today = datetime.fromtimestamp(now_wall_s, tz=timezone.utc).date()
    before_day = (today - timedelta(days=retention_days)).isoformat()
    first_kept = db.execute("SELECT MIN(seq) FROM compliance WHERE day >= ?", (before_day,)).fetchone()[0]
    bound = ("seq < ?" if first_kept is not None else "seq <= ?") + retention_guard(db, "compliance")
    limit = first_kept if first_kept is not None else db.execute("SELECT MAX(seq) FROM compliance").fetchone()[0]
    if limit is None:
        return 0
    last = db.execute(f"SELECT seq, row_hash FROM compliance WHERE {bound} ORDER BY seq DESC LIMIT 1",
                      (limit,)).fetchone()
    if last is None:
        return 0
    deleted = db.execute(f"DELETE FROM compliance WHERE {bound}", (limit,)).rowcount
    db.execute(
        "INSERT INTO compliance_purges (purged_at_utc, before_day, retention_days, rows_deleted, through_seq, "
        "through_hash) VALUES (?, ?, ?, ?, ?, ?)",
        (utc_seconds_iso(now_wall_s), before_day, retention_days, deleted, last[0], last[1]),
    )
    return deleted


@dataclass(frozen=True)
class ChainReport:
    """What `agetool compliance verify` found."""

    ok: bool
    rows: int  # rows checked
    first_seq: int | None
    last_seq: int | None
    head_hash: str  # the last row's hash: keep it with a report, a rewritten chain will not match it
    broken_seq: int | None = None
    broken_receipt: str | None = None
    problem: str | None = None
    purges: int = 0

    def describe(self) -> str:
        if self.ok:
            span = f"rows {self.first_seq}..{self.last_seq}" if self.rows else "no rows"
            return (f"compliance chain intact: {self.rows} row(s) ({span}), {self.purges} retention purge(s), "
                    f"head {self.head_hash}")
        at = f"row {self.broken_seq}" + (f" (receipt {self.broken_receipt})" if self.broken_receipt else "")
        return f"compliance chain broken at {at}: {self.problem}"


def verify_chain(db: sqlite3.Connection) -> ChainReport:
    """Walk the chain from the last purge's anchor: every row in sequence, linked to the one before
    and hashing to what it says; no row missing at the end. The first break is reported."""
    if not has_table(db, "compliance"):
        return ChainReport(True, 0, None, None, GENESIS_HASH)
    purges = int(db.execute("SELECT COUNT(*) FROM compliance_purges").fetchone()[0])
    after_seq, expected_prev = _chain_anchor(db)
    expected_seq = after_seq + 1
    rows = 0
    first_seq: int | None = None
    for row in db.execute(f"SELECT {', '.join(RECORD_COLUMNS)} FROM compliance ORDER BY seq"):
        try:
            record = _record(row)
            draft = ComplianceDraft(**{c: getattr(record, c) for c in DRAFT_COLUMNS})
            digest = row_hash(record.prev_hash, record.seq, draft)
        except (TypeError, ValueError) as exc:
            return ChainReport(False, rows, first_seq, None, expected_prev, row[RECORD_COLUMNS.index("seq")],
                               None, f"unreadable row ({exc})", purges)
        broken = None
        if record.seq != expected_seq:
            missing = f"{expected_seq}" if record.seq == expected_seq + 1 else f"{expected_seq}..{record.seq - 1}"
            broken = f"row(s) {missing} missing before it (deleted?)"
        elif record.prev_hash != expected_prev:
            broken = "its prev_hash does not match the row before it (rows deleted or rewritten?)"
        elif digest != record.row_hash:
            broken = "its contents do not match its row_hash (edited?)"
        if broken:
            return ChainReport(False, rows, first_seq, None, expected_prev, record.seq, record.receipt_id,
                               broken, purges)
        first_seq = record.seq if first_seq is None else first_seq
        expected_prev, expected_seq, rows = record.row_hash, record.seq + 1, rows + 1
    # AUTOINCREMENT remembers the highest seq ever given: rows deleted at the end leave it behind.
    highest = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'compliance'").fetchone()
    if highest is not None and int(highest[0]) >= expected_seq:
        missing = f"{expected_seq}..{int(highest[0])}" if int(highest[0]) > expected_seq else f"{expected_seq}"
        return ChainReport(False, rows, first_seq, expected_seq - 1, expected_prev, expected_seq, None,
                           f"row(s) {missing} missing at the end of the chain (deleted?)", purges)
    return ChainReport(True, rows, first_seq, expected_seq - 1 if rows else None, expected_prev, purges=purges)


def verify_file(path: Path) -> ChainReport:
    """verify_chain on an analytics file, read-only."""
    db = connect_readonly(path)
    try:
        return verify_chain(db)
    finally:
        db.close()
