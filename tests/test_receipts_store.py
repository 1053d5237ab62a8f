"""The receipt store on real SQLite files: the band a receipt gets, one row per receipt_id under
retries and races, migrations of an old file in place, retention purges, and the body checks."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agetool.contract import UNKNOWN_BAND
from agetool.edge_runtime.analytics import BandAnalytics, hour_bucket, read_counts
from agetool.edge_runtime.receipts import (
    BASIS_ESTIMATED,
    BASIS_NO_FACE,
    BASIS_UNSURE,
    LATEST_SCHEMA_VERSION,
    AnalyticsStore,
    InvalidReceipt,
    ReceiptConflict,
    StoreUnavailable,
    band_share,
    parse_receipt,
    read_receipts,
    schema_version,
    tag_band,
)
from agetool.errors import AgetoolError

NOW = datetime(2025, 3, 10, 12, 30, tzinfo=timezone.utc).timestamp()
DAY_S = 86400.0
ESTIMATED_30 = tag_band(30.0, 25.0, 35.0, 0.5)


def receipt(receipt_id: str, total: float = 12.34, items: list[dict] | None = None):
    body = {"receipt_id": receipt_id, "total": total}
    if items is not None:
        body["items"] = items
    import json

    return parse_receipt(json.dumps(body).encode())


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


# --- which band -----------------------------------------------------------------------------------
def test_band_tag_needs_half_the_interval_in_the_band():
    assert ESTIMATED_30.band == "25-34" and ESTIMATED_30.confidence == 1.0 and ESTIMATED_30.basis == BASIS_ESTIMATED
    near_edge = tag_band(26.0, 21.0, 31.0, 0.5)  # 6 of 10 years in 25-34
    assert near_edge.band == "25-34" and near_edge.confidence == 0.5
    wide = tag_band(30.0, 18.0, 42.0, 0.5)  # 10 of 24 years in 25-34: too unsure to name a band
    assert wide.band == UNKNOWN_BAND and wide.basis == BASIS_UNSURE and wide.confidence == 0.25
    assert tag_band(None, None, None, 0.5) == tag_band(float("nan"), 1.0, 2.0, 0.5)
    assert tag_band(None, None, None, 0.5).basis == BASIS_NO_FACE
    assert tag_band(70.0, 60.0, 80.0, 0.5).band == "65+"  # open-ended band
    assert tag_band(30.0, 18.0, 42.0, 0.4).band == "25-34"  # the threshold is the config's
    assert band_share("13-17", 15.0, 15.0) == 1.0 and band_share("13-17", 18.0, 18.0) == 0.0
    assert band_share("18-24", 15.0, 25.0) == pytest.approx(0.7)


def test_bad_bodies_name_the_field():
    cases = {
        b"{": "body: not valid JSON",
        b"[]": "body: expected a JSON object",
        b'{"total": 1}': "receipt_id: Field required",
        b'{"receipt_id": "r 1", "total": 1}': "receipt_id: String should match pattern",
        b'{"receipt_id": "r1", "total": 1.234}': "total: Decimal input should have no more than 2 decimal places",
        b'{"receipt_id": "r1", "total": -5}': "total: Input should be greater than or equal to 0",
        b'{"receipt_id": "r1", "total": 1, "age": 31}': "age: unknown field",
        b'{"receipt_id": "r1", "total": 1, "items": [{"sku": "1", "category": "beer"}]}': "items.0.quantity: Field required",
        b"[" * 1000 + b"]" * 1000: "body: JSON nested too deeply",
        b'{"receipt_id": "r1", "total": "12.30"}': "total: expected a JSON number",
        b'{"receipt_id": "r1", "total": 1, "items": [{"sku": "\\t ", "category": "beer", "quantity": 1}]}':
            "items.0.sku: expected some text",
    }
    for body, message in cases.items():
        with pytest.raises(InvalidReceipt) as caught:
            parse_receipt(body)
        assert str(caught.value).startswith(message), (body, str(caught.value))
        assert "\n" not in str(caught.value)
    assert parse_receipt(b'{"receipt_id": "POS1:0042", "total": 12.30}').total_cents == 1230


# --- one row per receipt -------------------------------------------------------------------------
def test_retry_returns_the_stored_record_and_a_clash_is_refused(tmp_path):
    db = tmp_path / "a.sqlite"
    store = AnalyticsStore(db, 90, 3600, clock=lambda: NOW)
    store.start()
    try:
        items = [{"sku": "501", "category": "beer", "quantity": 6}, {"sku": "77", "category": "crisps", "quantity": 1}]
        first, created = store.record_receipt("till-1", receipt("R1", 12.34, items), ESTIMATED_30)
        assert created and first.band == "25-34" and first.total_cents == 1234 and first.n_items == 2
        # The retry comes later, when another shopper (or nobody) is at the till: the first band stays.
        again, created_again = store.record_receipt(
            "till-1", receipt("R1", 12.34, items), tag_band(None, None, None, 0.5), NOW + 60)
        assert not created_again and again == first
        for lane, clash in (("till-1", receipt("R1", 12.35, items)), ("till-1", receipt("R1", 12.34)),
                            ("till-2", receipt("R1", 12.34, items))):
            with pytest.raises(ReceiptConflict) as caught:
                store.record_receipt(lane, clash, ESTIMATED_30)
            assert caught.value.stored == first and "R1" in str(caught.value)
    finally:
        store.stop()
    assert read_receipts(db) == [first]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT line, sku, category, quantity FROM receipt_items").fetchall() == [
            (1, "501", "beer", 6.0), (2, "77", "crisps", 1.0)]
    with pytest.raises(StoreUnavailable):
        store.record_receipt("till-1", receipt("R2"), ESTIMATED_30)


def test_concurrent_posts_of_one_receipt_store_one_row(tmp_path):
    store = AnalyticsStore(tmp_path / "a.sqlite", 90, 3600)
    store.start()
    outcomes: list[bool] = []
    barrier = threading.Barrier(8)

    def post() -> None:
        barrier.wait()
        outcomes.append(store.record_receipt("till-1", receipt("SAME"), ESTIMATED_30)[1])

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.stop()
    assert sorted(outcomes) == [False] * 7 + [True]
    assert [r.receipt_id for r in read_receipts(tmp_path / "a.sqlite")] == ["SAME"]


def test_a_failed_write_leaves_nothing_behind_and_the_writer_lives_on(tmp_path):
    db = tmp_path / "a.sqlite"
    store = AnalyticsStore(db, 90, 3600)
    store.start()

    def half_then_crash(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO band_counts VALUES ('2025-03-10T12:00Z', 'till-1', '18-24', 3)")
        raise RuntimeError("power cut half way")

    with pytest.raises(RuntimeError):
        store.submit(half_then_crash)
    store.add_band_counts([("2025-03-10T12:00Z", "till-1", "18-24", 2)])
    store.stop()
    assert read_counts(db) == [("2025-03-10T12:00Z", "till-1", "18-24", 2)]


def test_band_counts_flush_through_the_one_writer(tmp_path):
    db = tmp_path / "a.sqlite"
    store = AnalyticsStore(db, 90, 3600, clock=lambda: NOW)
    store.start()
    counts = BandAnalytics(db, 3600, writer=store)
    counts.record("till-1", "50-64", NOW)
    counts.record("till-1", "50-64", NOW + 5)
    assert counts.flush() == 2
    counts.record("till-1", "50-64", NOW + 9)
    counts.stop()
    store.stop()
    assert read_counts(db) == [(hour_bucket(NOW), "till-1", "50-64", 3)]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- migrations -----------------------------------------------------------------------------------
def test_an_old_band_count_file_is_upgraded_in_place(tmp_path):
    db = tmp_path / "analytics.sqlite"
    old = BandAnalytics(db, 3600)  # the daemon before receipts: band_counts only, no version table
    old.record("till-1", "35-49", NOW)
    old.stop()
    with sqlite3.connect(db) as conn:
        assert schema_version(conn) == 0
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["band_counts"]

    AnalyticsStore(db, 3650, 3600, clock=lambda: NOW).stop()
    with sqlite3.connect(db) as conn:
        assert schema_version(conn) == LATEST_SCHEMA_VERSION == 3
        versions = conn.execute("SELECT version, description FROM schema_version ORDER BY version").fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert [v for v, _ in versions] == [1, 2, 3]
    assert {"band_counts", "receipts", "receipt_items", "schema_version", "compliance", "compliance_purges",
            "sqlite_sequence"} == tables
    assert read_counts(db) == [(hour_bucket(NOW), "till-1", "35-49", 1)]  # the old counts are kept

    store = AnalyticsStore(db, 3650, 3600, clock=lambda: NOW)  # opening again changes nothing
    store.record_receipt("till-1", receipt("R1"), ESTIMATED_30, NOW)
    store.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 3
    assert read_counts(db) == [(hour_bucket(NOW), "till-1", "35-49", 1)] and len(read_receipts(db)) == 1


def test_a_failing_migration_step_is_rolled_back(tmp_path):
    db = tmp_path / "analytics.sqlite"
    BandAnalytics(db, 3600).stop()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE receipts (something_else TEXT)")  # in the way of step 2
    with pytest.raises(AgetoolError, match="migration to schema version 2 failed"):
        AnalyticsStore(db, 90, 3600)
    with sqlite3.connect(db) as conn:
        assert schema_version(conn) == 1  # step 1 committed, step 2 not at all
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'receipt_items'").fetchone() is None


def test_newer_or_foreign_files_are_refused_with_one_line(tmp_path):
    newer = tmp_path / "newer.sqlite"
    AnalyticsStore(newer, 90, 3600).stop()
    with sqlite3.connect(newer) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, '2030-01-01T00:00:00Z', 'from the future')")
    with pytest.raises(AgetoolError, match="schema version 99 is newer"):
        AnalyticsStore(newer, 90, 3600)
    foreign = tmp_path / "photo.sqlite"
    foreign.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 4096)
    with pytest.raises(AgetoolError, match="not an SQLite database|cannot open"):
        AnalyticsStore(foreign, 90, 3600)


# --- retention ------------------------------------------------------------------------------------
def test_retention_purges_at_start_on_demand_and_on_schedule(tmp_path):
    db = tmp_path / "a.sqlite"
    clock = [NOW]
    store = AnalyticsStore(db, 90, 3600, clock=lambda: clock[0])
    store.record_receipt("till-1", receipt("OLD", items=[{"sku": "1", "category": "beer", "quantity": 1}]),
                         ESTIMATED_30, NOW - 91 * DAY_S)
    store.record_receipt("till-1", receipt("RECENT"), ESTIMATED_30, NOW - 89 * DAY_S)
    store.add_band_counts([(hour_bucket(NOW - 91 * DAY_S), "till-1", "25-34", 7),
                           (hour_bucket(NOW - 1 * DAY_S), "till-1", "25-34", 4)])
    assert store.purge() == {"receipts": 1, "receipt_items": 1, "band_counts": 1}
    assert [r.receipt_id for r in read_receipts(db)] == ["RECENT"]
    assert read_counts(db) == [(hour_bucket(NOW - DAY_S), "till-1", "25-34", 4)]
    store.stop()

    clock[0] = NOW + 2 * DAY_S  # RECENT is now 91 days old: gone as soon as the store opens
    AnalyticsStore(db, 90, 3600, clock=lambda: clock[0]).stop()
    assert read_receipts(db) == []

    scheduled = AnalyticsStore(db, 90, purge_interval_s=0.1, clock=lambda: clock[0])
    scheduled.start()
    try:
        scheduled.record_receipt("till-1", receipt("LATE"), ESTIMATED_30, clock[0] - 95 * DAY_S)
        wait_for(lambda: read_receipts(db) == [], 5, "the scheduled purge")
    finally:
        scheduled.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM receipt_items").fetchone()[0] == 0


def test_docs_privacy_names_every_table_and_column(tmp_path):
    store = AnalyticsStore(tmp_path / "a.sqlite", 90, 3600)
    store.stop()
    doc = (Path(__file__).resolve().parents[1] / "docs" / "privacy.md").read_text()
    with sqlite3.connect(tmp_path / "a.sqlite") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            assert f"`{table}`" in doc, table
            for column in (r[1] for r in conn.execute(f"PRAGMA table_info({table})")):
                assert f"`{column}`" in doc, (table, column)


def test_config_analytics_section_defaults_and_errors():
    from agetool.edge_runtime.config import parse_config
    from agetool.errors import ConfigError

    lanes = [{"name": "till-1", "source": "/srv/frames"}]
    config = parse_config({"lanes": lanes})
    assert (config.analytics.retention_days, config.analytics.receipt_min_band_confidence) == (90, 0.5)
    assert config.api.max_body_bytes == 256 * 1024
    with pytest.raises(ConfigError, match=r"analytics\.retention_days: Input should be greater than or equal to 1"):
        parse_config({"lanes": lanes, "analytics": {"retention_days": 0}})
    with pytest.raises(ConfigError, match=r"analytics\.receipt_min_band_confidence"):
        parse_config({"lanes": lanes, "analytics": {"receipt_min_band_confidence": 1.5}})
