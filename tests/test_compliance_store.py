"""Compliance on real SQLite files through the daemon's writer: the outcome of each receipt, one row
per receipt under retries, the hash chain (intact, then broken by a deleted or edited row), whole-day
retention that keeps the chain verifiable, cashier pseudonyms, and the /check answer's attachment."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agetool.contract import Challenge25Policy
from agetool.edge_runtime.band_tag import tag_band
from agetool.edge_runtime.compliance import (
    CHECKED,
    NO_FACE,
    NOT_REQUIRED,
    NOT_RESTRICTED,
    VIOLATION,
    CheckLedger,
    ComplianceRules,
    evaluate,
    pseudonymise,
    verify_file,
)
from agetool.edge_runtime.config import ComplianceConfig, parse_config
from agetool.edge_runtime.decide import decide
from agetool.edge_runtime.pos_schema import parse_receipt
from agetool.edge_runtime.store import AnalyticsStore, ReceiptConflict
from agetool.edge_runtime.track import AgeEstimate
from agetool.errors import ConfigError
from test_runtime_daemon import AGETOOL

NOW = datetime(2025, 3, 10, 12, 30, tzinfo=timezone.utc).timestamp()
DAY_S = 86400.0
KEY = "test-cashier-key-0123456789"
POLICY = Challenge25Policy(policy_age_years=25, buffer_years=1.0)
RULES = ComplianceRules.from_config(ComplianceConfig(cashier_key=KEY), POLICY)
CHILD = decide("till-1", AgeEstimate(9.0, 4.0, 14.0, 5), 1, POLICY, NOW)
ADULT = decide("till-1", AgeEstimate(50.0, 45.0, 55.0, 5), 2, POLICY, NOW)
NOBODY = decide("till-1", None, None, POLICY, NOW)
BEER = {"sku": "B1", "category": "Alcohol", "quantity": 6}  # the config says 'alcohol': case-insensitive
BREAD = {"sku": "BR", "category": "bakery", "quantity": 1}


def receipt(receipt_id: str, items: list[dict], **fields):
    return parse_receipt(json.dumps({"receipt_id": receipt_id, "total": 9.99, "items": items, **fields}).encode())


def sell(store: AnalyticsStore, receipt_id: str, items: list[dict], decision=CHILD, wall_s: float = NOW, **fields):
    body = receipt(receipt_id, items, **fields)
    draft = evaluate("till-1", body, decision, None, RULES, wall_s)
    tag = tag_band(decision.age_years, decision.lower_years, decision.upper_years, 0.5)
    return store.record_sale("till-1", body, tag, draft, wall_s)


def test_each_outcome_follows_the_rule_and_is_stored_once(tmp_path):
    db = tmp_path / "a.sqlite"
    store = AnalyticsStore(db, 90, 3600, clock=lambda: NOW, compliance_retention_days=90)
    cases = {
        "R1": ([BEER], CHILD, {"id_check": "performed", "cashier_id": "0042"}, CHECKED),
        "R2": ([BEER, BREAD], CHILD, {"id_check": "not_performed", "cashier_id": "0042"}, VIOLATION),
        "R3": ([BEER], CHILD, {"cashier_id": "0042"}, VIOLATION),  # nothing recorded at the till
        "R4": ([BEER], ADULT, {"cashier_id": "0042"}, NOT_REQUIRED),
        "R5": ([{"sku": "T", "category": "TOBACCO", "quantity": 1}], NOBODY, {"id_check": "performed"}, NO_FACE),
        "R6": ([BREAD], CHILD, {"id_check": "not_performed", "cashier_id": "0042"}, NOT_RESTRICTED),
        "R7": ([], CHILD, {}, NOT_RESTRICTED),
    }
    for receipt_id, (items, decision, fields, expected) in cases.items():
        sale = sell(store, receipt_id, items, decision, **fields)
        assert sale.created and sale.compliance.outcome == expected, receipt_id
    # Retries answer what was stored, even if the shopper in view has changed since.
    retry = sell(store, "R2", [BEER, BREAD], ADULT, id_check="not_performed", cashier_id="0042")
    assert not retry.created and retry.compliance.outcome == VIOLATION and retry.compliance.seq == 2
    # A "retry" that turns the violation into a check is a different receipt: refused.
    with pytest.raises(ReceiptConflict):
        sell(store, "R2", [BEER, BREAD], CHILD, id_check="performed", cashier_id="0042")
    store.stop()

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT receipt_id, outcome, cashier, id_check, check_called, decision_source, "
                            "restricted, day FROM compliance ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == list(cases)  # one row each, in order
    pseudonym = pseudonymise(KEY.encode(), "0042")
    assert pseudonym.startswith("c-") and "0042" not in pseudonym
    by_id = {r[0]: r for r in rows}
    assert by_id["R2"][2:6] == (pseudonym, "not_performed", 0, "receipt")
    assert by_id["R3"][3] == "not_recorded" and by_id["R2"][6] == "alcohol" and by_id["R5"][6] == "tobacco"
    assert by_id["R5"][2] is None  # no cashier code sent
    assert by_id["R6"][2] is None  # not restricted: the cashier is not recorded at all
    assert {r[7] for r in rows} == {"2025-03-10"}
    assert "0042" not in db.read_bytes().decode("latin-1")
    assert verify_file(db).ok and verify_file(db).rows == 7


def chain_of(tmp_path: Path, n: int = 6) -> Path:
    db = tmp_path / "a.sqlite"
    store = AnalyticsStore(db, 90, 3600, clock=lambda: NOW, compliance_retention_days=90)
    for i in range(1, n + 1):
        sell(store, f"R{i}", [BEER], CHILD, id_check="not_performed" if i % 2 else "performed", cashier_id="7")
    store.stop()
    return db


def verify_cli(db: Path) -> subprocess.CompletedProcess:
    return subprocess.run(AGETOOL + ["compliance", "verify", "--db", str(db)], capture_output=True, text=True)


def test_verify_finds_the_first_deleted_or_edited_row(tmp_path):
    intact = verify_cli(chain_of(tmp_path / "intact"))
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.startswith("compliance chain intact: 6 row(s) (rows 1..6)")

    deleted = chain_of(tmp_path / "deleted")
    with sqlite3.connect(deleted) as conn:
        conn.execute("DELETE FROM compliance WHERE receipt_id = 'R3'")  # a violation goes missing
    done = verify_cli(deleted)
    assert done.returncode == 1
    assert done.stdout.strip() == ("compliance chain broken at row 4 (receipt R4): row(s) 3 missing before it "
                                   "(deleted?)")

    edited = chain_of(tmp_path / "edited")
    with sqlite3.connect(edited) as conn:
        conn.execute("UPDATE compliance SET outcome = 'checked', id_check = 'performed' WHERE receipt_id = 'R5'")
    done = verify_cli(edited)
    assert done.returncode == 1
    assert done.stdout.strip() == "compliance chain broken at row 5 (receipt R5): its contents do not match its row_hash (edited?)"

    renumbered = chain_of(tmp_path / "renumbered")  # delete R3, then close the gap by renumbering
    with sqlite3.connect(renumbered) as conn:
        conn.execute("DELETE FROM compliance WHERE seq = 3")
        conn.execute("UPDATE compliance SET seq = seq - 1 WHERE seq > 3")
    assert verify_file(renumbered).broken_seq == 3 and "prev_hash" in verify_file(renumbered).problem

    last = chain_of(tmp_path / "last")
    with sqlite3.connect(last) as conn:
        conn.execute("DELETE FROM compliance WHERE seq = 6")
    report = verify_file(last)
    assert not report.ok and report.broken_seq == 6 and "missing at the end" in report.problem


def test_retention_deletes_whole_days_from_the_oldest_and_the_chain_still_verifies(tmp_path):
    db = tmp_path / "a.sqlite"
    store = AnalyticsStore(db, 3650, 3600, clock=lambda: NOW, compliance_retention_days=3650)
    days_ago = [40, 40, 31, 30, 2, 0]
    for i, age_days in enumerate(days_ago, start=1):
        sell(store, f"R{i}", [BEER], CHILD, wall_s=NOW - age_days * DAY_S + 60, cashier_id="9")
    store.stop()
    assert verify_file(db).ok

    store = AnalyticsStore(db, 3650, 3600, clock=lambda: NOW, compliance_retention_days=30)  # purges at start
    assert store.purge() == {"receipts": 0, "receipt_items": 0, "band_counts": 0, "compliance": 0}  # nothing left
    sell(store, "R7", [BEER], ADULT)  # the chain goes on after a purge
    store.stop()
    with sqlite3.connect(db) as conn:
        kept = [r[0] for r in conn.execute("SELECT receipt_id FROM compliance ORDER BY seq")]
        purges = conn.execute("SELECT before_day, retention_days, rows_deleted, through_seq FROM compliance_purges").fetchall()
    assert kept == ["R4", "R5", "R6", "R7"]  # 30 days ago is kept; 31 and 40 days ago are gone, whole
    assert purges == [("2025-02-08", 30, 3, 3)]
    report = verify_file(db)
    assert report.ok and (report.rows, report.first_seq, report.last_seq, report.purges) == (4, 4, 7, 1)

    with sqlite3.connect(db) as conn:  # deleting the oldest rows without a purge record is caught
        conn.execute("DELETE FROM compliance WHERE seq = 4")
    assert verify_file(db).broken_seq == 5


def test_a_check_answer_stays_with_the_lanes_next_sale_until_a_new_shopper_shows_up():
    ledger = CheckLedger(valid_s=None)
    ledger.remember(CHILD, asked_s=100.0)  # track 1
    answer = ledger.attached("till-1", 1, 90.0, 130.0)
    assert answer is not None and answer.decision is CHILD
    assert ledger.attached("till-1", None, None, 500.0) is answer  # shopper out of view: still theirs
    assert ledger.attached("till-1", 2, 120.0, 130.0) is None  # a new shopper since the check
    assert ledger.attached("till-2", 1, 90.0, 130.0) is None  # another lane
    ledger.used("till-1", answer)
    assert ledger.attached("till-1", 1, 90.0, 131.0) is None  # the next sale does not inherit it

    timed = CheckLedger(valid_s=30.0)
    timed.remember(CHILD, asked_s=100.0)
    assert timed.attached("till-1", 2, 120.0, 129.0) is not None and timed.attached("till-1", 1, 90.0, 131.0) is None

    body = receipt("R1", [BEER])
    draft = evaluate("till-1", body, ADULT, answer, RULES, NOW)  # the POS was told "ID" for the child
    assert (draft.outcome, draft.decision_source, draft.check_called) == (VIOLATION, "check", 1)
    assert evaluate("till-1", body, ADULT, None, RULES, NOW).outcome == NOT_REQUIRED


def test_the_compliance_rule_and_config():
    config = parse_config({"lanes": [{"name": "till-1", "source": "/srv"}]}).compliance
    assert config.enabled and config.restricted_categories == {"alcohol": 18, "tobacco": 18}
    assert (config.retention_days, config.cashier_key, config.check_valid_s) == (90, None, None)
    rules = ComplianceRules.from_config(config, POLICY)
    assert rules.policy == POLICY and rules.threshold_years(["alcohol"]) == 26.0
    assert rules.pseudonym("0042") is None  # no key: cashier codes are not recorded
    strict = ComplianceRules.from_config(ComplianceConfig(restricted_categories={"Spirits": 30}), POLICY)
    assert strict.threshold_years(["spirits"]) == 31.0  # a legal age above the policy age wins
    over_25 = decide("till-1", AgeEstimate(33.0, 28.0, 38.0, 5), 3, POLICY, NOW)
    assert not over_25.id_check_required
    spirits = receipt("S1", [{"sku": "W", "category": "spirits", "quantity": 1}])
    assert evaluate("till-1", spirits, over_25, None, strict, NOW).outcome == VIOLATION
    with pytest.raises(ConfigError, match=r"compliance\.restricted_categories: .*listed twice"):
        parse_config({"lanes": [{"name": "t", "source": "/s"}],
                      "compliance": {"restricted_categories": {"Alcohol": 18, "alcohol": 18}}})
    with pytest.raises(ConfigError, match=r"compliance\.cashier_key: String should have at least 16"):
        parse_config({"lanes": [{"name": "t", "source": "/s"}], "compliance": {"cashier_key": "short"}})


def test_one_unlucky_sale_does_not_rank_a_cashier_top(tmp_path):
    db = tmp_path / "a.sqlite"
    store = AnalyticsStore(db, 90, 3600, clock=lambda: NOW, compliance_retention_days=90)
    plan = {"once": [True], "often": [True] * 8 + [False] * 32, "careful": [False] * 12}  # True: a violation
    n = 0
    for cashier, sales in plan.items():
        for violation in sales:
            n += 1
            sell(store, f"R{n}", [BEER], CHILD, cashier_id=cashier,
                 id_check="not_performed" if violation else "performed")
    store.stop()
    from agetool.edge_runtime.compliance_report import build_compliance_report

    result = build_compliance_report(db, tmp_path / "out", "2025-03-01", "2025-03-31", min_sales=10)
    assert result.totals["violation"] == 9 and result.totals["checked"] == 44 and result.chain.ok
    report = json.loads((tmp_path / "out" / "compliance.json").read_text())
    name = {pseudonymise(KEY.encode(), c): c for c in plan}
    assert [name[r["cashier"]] for r in report["cashier_ranking"]] == ["often", "careful"]
    assert [name[r["cashier"]] for r in report["cashier_unranked"]] == ["once"]  # 100 %, but of one sale
    assert report["cashier_ranking"][0]["violation_rate"] == 0.2
    assert 0.09 < report["cashier_ranking"][0]["violation_rate_lower_95"] < 0.2
    assert (tmp_path / "out" / "cashiers_by_violation_rate.png").read_bytes().startswith(b"\x89PNG")
    outside = build_compliance_report(db, tmp_path / "later", "2025-04-01")
    assert sum(outside.totals.values()) == 0  # the period filters


def test_the_new_receipt_fields_are_optional_and_checked():
    from agetool.edge_runtime.pos_schema import InvalidReceipt

    old = parse_receipt(b'{"receipt_id": "R1", "total": 1.5}')
    assert (old.cashier_id, old.id_check) == (None, None)
    # A receipt without the new fields has the digest it had before they existed (retries still match).
    import hashlib

    before = {"lane": "till-1", "receipt_id": "R1", "total_cents": 150, "items": []}  # the digest's input until now
    assert old.body_sha256("till-1") == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    with_fields = parse_receipt(b'{"receipt_id": "R1", "total": 1.5, "cashier_id": "7", "id_check": "performed"}')
    assert with_fields.body_sha256("till-1") != old.body_sha256("till-1")
    with pytest.raises(InvalidReceipt, match="^id_check: Input should be 'performed' or 'not_performed'"):
        parse_receipt(b'{"receipt_id": "R1", "total": 1, "id_check": "yes"}')
    with pytest.raises(InvalidReceipt, match="^cashier_id: String should have at least 1 character"):
        parse_receipt(b'{"receipt_id": "R1", "total": 1, "cashier_id": ""}')
