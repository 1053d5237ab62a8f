"""Tills syncing to a real PostgreSQL server: exact counts after repeats, kills, outages and two
tills at once; hour counts that grow; retention that keeps unsent rows; the chain report against
the tills' own reports; passwords kept out of every message.

The server: $AGETOOL_TEST_PG_DSN (CI starts one), else a throwaway cluster this module starts.
With CI=true and no server, these tests fail rather than skip."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from agetool.benchmarks.central_bench import TillShape, generate_till
from agetool.benchmarks.pg_throwaway import PASSWORD, ThrowawayCluster
from agetool.edge_runtime.central_db import CentralTarget, mask_dsn, migrate_central
from agetool.edge_runtime.receipts import AnalyticsStore, parse_receipt, tag_band

AGETOOL = [sys.executable, "-m", "agetool.cli"]
NOW = datetime(2026, 11, 20, 18, 0, tzinfo=timezone.utc).timestamp()
T12 = datetime(2026, 11, 20, 12, 15, tzinfo=timezone.utc).timestamp()
ADULT = tag_band(30.0, 25.0, 35.0, 0.5)
SENIOR = tag_band(70.0, 65.0, 75.0, 0.5)


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs PostgreSQL for these tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def psycopg():
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed (pip install -e '.[test]')")
    return psycopg


@pytest.fixture(scope="session")
def pg_admin_url(psycopg):
    """A server URL whose role may create databases."""
    url = os.environ.get("AGETOOL_TEST_PG_DSN")
    if url:
        yield url
        return
    try:
        cluster = ThrowawayCluster().init().start()
    except (FileNotFoundError, RuntimeError, subprocess.CalledProcessError) as exc:
        unavailable(f"no PostgreSQL server: set AGETOOL_TEST_PG_DSN or install postgresql ({exc})")
    yield cluster.url
    cluster.destroy()


def password_of(url: str) -> str:
    password = urlsplit(url).password
    assert password, f"the test server's URL must carry a password, to check it is never printed: {mask_dsn(url)}"
    return password


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def central_url(pg_admin_url, psycopg):
    """A fresh, migrated central database of its own."""
    name = f"agetool_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = with_database(pg_admin_url, name)
    migrate_central(CentralTarget(url))
    yield url
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def central_once(pg_admin_url, psycopg, tmp_path_factory):
    """One migrated central database with two generated tills synced (2026-11-02 and -03), shared
    by the read-only tests of this module."""
    from agetool.edge_runtime.central_sync import sync_till

    name = f"agetool_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = with_database(pg_admin_url, name)
    migrate_central(CentralTarget(url))
    folder = tmp_path_factory.mktemp("tills")
    for index, store in enumerate(("S1", "S2")):
        till = folder / f"{store}.sqlite"
        generate_till(till, index, TillShape(lanes=2, days=2, receipts_per_lane_day=40))
        sync_till(CentralTarget(url), till, store, batch_rows=30)
    yield url
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def central_counts(psycopg, url: str, store: str | None = None) -> dict[str, int]:
    where = "WHERE store_id = %(s)s" if store else ""
    with psycopg.connect(url) as conn:
        return {
            "receipts": conn.execute(f"SELECT COUNT(*) FROM receipts {where}", {"s": store}).fetchone()[0],
            "receipt_items": conn.execute(f"SELECT COUNT(*) FROM receipt_items {where}", {"s": store}).fetchone()[0],
            "shoppers": int(conn.execute(f"SELECT COALESCE(SUM(shoppers), 0) FROM band_counts {where}",
                                         {"s": store}).fetchone()[0]),
            "total_cents": int(conn.execute(f"SELECT COALESCE(SUM(total_cents), 0) FROM receipts {where}",
                                            {"s": store}).fetchone()[0]),
        }


def assert_item_sums_match_lines(psycopg, url: str) -> None:
    """The daily sums the sync keeps add up to the item lines the centre holds: a resent batch
    added nothing to them."""
    with psycopg.connect(url) as conn:
        sums = conn.execute("SELECT store_id, day, band, category, receipts, units FROM receipt_items_daily "
                            "ORDER BY 1, 2, 3, 4").fetchall()
        lines = conn.execute("SELECT store_id, (recorded_at_utc AT TIME ZONE 'UTC')::date, band, category, "
                             "COUNT(*) FILTER (WHERE first_in_category), SUM(quantity) FROM receipt_items "
                             "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4").fetchall()
    assert sums and sums == lines


def till_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {
            "receipts": db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0],
            "receipt_items": db.execute("SELECT COUNT(*) FROM receipt_items").fetchone()[0],
            "shoppers": db.execute("SELECT COALESCE(SUM(shoppers), 0) FROM band_counts").fetchone()[0],
            "total_cents": db.execute("SELECT COALESCE(SUM(total_cents), 0) FROM receipts").fetchone()[0],
        }


def sync_cli(url: str, db: Path, store: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGETOOL, "analytics", "sync", "--to", url, "--db", str(db), "--store-id", store, *extra],
                          capture_output=True, text=True, timeout=300)


def post(store: AnalyticsStore, receipt_id: str, total: float, categories: list[str], tag, lane: str = "till-1",
         wall_s: float = T12) -> None:
    items = [{"sku": f"{i}", "category": c, "quantity": 1} for i, c in enumerate(categories)]
    body = json.dumps({"receipt_id": receipt_id, "total": total, "items": items}).encode()
    store.record_receipt(lane, parse_receipt(body), tag, wall_s)


def test_mask_dsn_hides_passwords():
    assert mask_dsn("postgresql://chain:s3cr%40t@db.example:5432/analytics") == \
        "postgresql://chain:***@db.example:5432/analytics"
    assert mask_dsn("host=db password='a b' user=x") == "host=db password=*** user=x"
    assert mask_dsn("postgresql://chain@db/analytics") == "postgresql://chain@db/analytics"


def test_sync_twice_and_a_repeated_batch_store_each_row_once(tmp_path, central_url, psycopg):
    till = tmp_path / "store.sqlite"
    generate_till(till, 0, TillShape(lanes=2, days=1, receipts_per_lane_day=60))
    first = sync_cli(central_url, till, "S1", "--batch-rows", "25")
    assert first.returncode == 0, first.stderr
    assert central_counts(psycopg, central_url) == till_counts(till)
    second = sync_cli(central_url, till, "S1")
    assert second.returncode == 0 and "nothing new" in second.stderr
    # As if every batch had been committed by the server but never marked as sent on the till.
    with sqlite3.connect(till) as db:
        db.execute("UPDATE central_sync_state SET high_water = 0")
        db.execute("DELETE FROM central_sent_band_counts")
    resent = sync_cli(central_url, till, "S1", "--batch-rows", "25")
    assert resent.returncode == 0 and "receipts" in resent.stderr
    assert central_counts(psycopg, central_url) == till_counts(till)
    assert_item_sums_match_lines(psycopg, central_url)
    assert password_of(central_url) not in first.stderr + second.stderr + resent.stderr


def test_a_new_central_database_or_resend_gets_every_row(tmp_path, central_url, pg_admin_url, psycopg):
    till = tmp_path / "store.sqlite"
    generate_till(till, 2, TillShape(lanes=2, days=1, receipts_per_lane_day=30))
    assert sync_cli(central_url, till, "S1").returncode == 0
    # The central database restored from an older backup (here: rows deleted): same instance, so a
    # plain sync sends nothing; --resend puts the rows back, once.
    with psycopg.connect(central_url) as conn:
        conn.execute("DELETE FROM receipt_items")
        conn.execute("DELETE FROM receipts WHERE receipt_id > 'S0002-00000010'")
        conn.execute("DELETE FROM band_counts")
    assert sync_cli(central_url, till, "S1").returncode == 0
    assert central_counts(psycopg, central_url)["receipts"] < till_counts(till)["receipts"]
    assert sync_cli(central_url, till, "S1", "--resend").returncode == 0
    assert central_counts(psycopg, central_url) == till_counts(till)
    # A new central database: its own instance id, so the till's marks do not count there.
    name = f"agetool_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        other = with_database(pg_admin_url, name)
        migrate_central(CentralTarget(other))
        moved = sync_cli(other, till, "S1")
        assert moved.returncode == 0 and "not the one" in moved.stderr
        assert central_counts(psycopg, other) == till_counts(till)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_an_hour_that_grew_is_updated_not_added(tmp_path, central_url, psycopg):
    till = tmp_path / "store.sqlite"
    store = AnalyticsStore(till, 3650, 3600, clock=lambda: NOW)
    store.add_band_counts([("2026-11-20T12:00Z", "till-1", "25-34", 3)])
    target = CentralTarget(central_url)
    from agetool.edge_runtime.central_sync import sync_till

    assert sync_till(target, till, "S1").rows == {"band_counts": 1}
    store.add_band_counts([("2026-11-20T12:00Z", "till-1", "25-34", 4), ("2026-11-20T13:00Z", "till-1", "65+", 2)])
    store.stop()
    assert sync_till(target, till, "S1").rows == {"band_counts": 2}
    with psycopg.connect(central_url) as conn:
        rows = conn.execute("SELECT to_char(hour_utc AT TIME ZONE 'UTC', 'HH24'), band, shoppers FROM band_counts "
                            "ORDER BY 1").fetchall()
    assert rows == [("12", "25-34", 7), ("13", "65+", 2)]


def test_sigkill_mid_sync_then_rerun_gives_exact_counts(tmp_path, central_url, psycopg):
    till = tmp_path / "store.sqlite"
    generate_till(till, 3, TillShape(lanes=10, days=2, receipts_per_lane_day=150))
    proc = subprocess.Popen([*AGETOOL, "analytics", "sync", "--to", central_url, "--db", str(till),
                             "--store-id", "S1", "--batch-rows", "20"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while central_counts(psycopg, central_url)["receipts"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert still_running, "the sync finished before it could be killed; give it more rows"
    partial = central_counts(psycopg, central_url)
    assert 0 < partial["receipts"] < till_counts(till)["receipts"]
    rerun = sync_cli(central_url, till, "S1", "--batch-rows", "500")
    assert rerun.returncode == 0, rerun.stderr
    assert central_counts(psycopg, central_url) == till_counts(till)
    assert_item_sums_match_lines(psycopg, central_url)


def test_server_stops_during_sync_then_backoff_and_catch_up(tmp_path, psycopg, caplog):
    from agetool.edge_runtime.central_sync import Backoff, sync_till

    try:
        cluster = ThrowawayCluster().init().start()
    except (FileNotFoundError, RuntimeError, subprocess.CalledProcessError) as exc:
        unavailable(f"cannot start a private PostgreSQL cluster ({exc})")
    try:
        target = CentralTarget(cluster.url)
        migrate_central(target)
        till = tmp_path / "store.sqlite"
        generate_till(till, 1, TillShape(lanes=2, days=1, receipts_per_lane_day=100))
        restarted = threading.Event()

        def outage_after_first_batch(table: str, rows: int) -> None:
            if restarted.is_set():
                return
            restarted.set()
            cluster.stop("immediate")
            threading.Timer(1.5, cluster.start).start()

        with caplog.at_level(logging.WARNING):
            result = sync_till(target, till, "S1", batch_rows=30, retries=30, backoff=Backoff(0.2, 1.0),
                               on_batch=outage_after_first_batch)
        assert restarted.is_set() and result.retries >= 1
        assert central_counts(psycopg, cluster.url) == till_counts(till)
        assert "retry" in caplog.text and "***" in caplog.text and PASSWORD not in caplog.text
    finally:
        cluster.destroy()


def test_compliance_outcomes_sync_once_with_chains_that_verify_and_stay_until_sent(tmp_path, central_url, psycopg):
    from agetool.contract import Challenge25Policy
    from agetool.edge_runtime.compliance import RECORD_COLUMNS, ComplianceDraft, ComplianceRules, evaluate, row_hash
    from agetool.edge_runtime.config import ComplianceConfig
    from agetool.edge_runtime.decide import decide
    from agetool.edge_runtime.central_sync import sync_till
    from agetool.edge_runtime.sync_specs import prepare_state
    from agetool.edge_runtime.track import AgeEstimate

    policy = Challenge25Policy(policy_age_years=25, buffer_years=1.0)
    rules = ComplianceRules.from_config(ComplianceConfig(cashier_key="central-test-key-0123456789"), policy)
    old_day = datetime(2026, 11, 1, 12, tzinfo=timezone.utc).timestamp()
    till = tmp_path / "store.sqlite"
    store = AnalyticsStore(till, 3650, 3600, clock=lambda: NOW, compliance_retention_days=3650)
    store.submit(lambda db: prepare_state(db, "S1"))
    for i in range(7):
        wall_s = old_day if i < 3 else T12
        decision = decide("till-1", AgeEstimate(17.0 + 10 * i, 12.0, 80.0, 5), i, policy, wall_s)
        body = parse_receipt(json.dumps({"receipt_id": f"C{i}", "total": 9.5, "cashier_id": "0042",
                                         "id_check": "performed" if i % 2 else "not_performed",
                                         "items": [{"sku": "B", "category": "alcohol", "quantity": 1}]}).encode())
        draft = evaluate("till-1", body, decision, None, rules, wall_s)
        store.record_sale("till-1", body, tag_band(decision.age_years, decision.lower_years, decision.upper_years,
                                                    0.5), draft, wall_s)
    store.stop()
    # 1-day compliance retention before any sync: the old day's three outcomes must stay.
    AnalyticsStore(till, 3650, 3600, clock=lambda: NOW, compliance_retention_days=1).stop()
    with sqlite3.connect(till) as db:
        assert db.execute("SELECT COUNT(*) FROM compliance").fetchone()[0] == 7
    target = CentralTarget(central_url)
    assert sync_till(target, till, "S1", batch_rows=2).rows["compliance"] == 7
    assert "compliance" not in sync_till(target, till, "S1").rows  # nothing new: nothing sent
    with sqlite3.connect(till) as db:  # as if the centre committed but the till never marked it
        db.execute("UPDATE central_sync_state SET high_water = 0 WHERE table_name = 'compliance'")
    assert sync_till(target, till, "S1", batch_rows=3).rows["compliance"] == 7
    with psycopg.connect(central_url) as conn:
        rows = conn.execute(f"SELECT {', '.join(RECORD_COLUMNS)} FROM compliance WHERE store_id = 'S1' "
                            "ORDER BY seq").fetchall()
    assert [row[RECORD_COLUMNS.index("receipt_id")] for row in rows] == [f"C{i}" for i in range(7)]
    # The central copy is the till's chain: every hash recomputes from the columns the centre holds.
    draft_names = [c for c in RECORD_COLUMNS if c not in ("seq", "prev_hash", "row_hash")]
    for row in rows:
        record = dict(zip(RECORD_COLUMNS, row))
        record["recorded_at_utc"] = record["recorded_at_utc"].strftime("%Y-%m-%dT%H:%M:%SZ")
        record["day"] = record["day"].isoformat()
        draft = ComplianceDraft(**{c: record[c] for c in draft_names})
        assert row_hash(record["prev_hash"], record["seq"], draft) == record["row_hash"]
    # Now that the centre has them, the old day goes.
    AnalyticsStore(till, 3650, 3600, clock=lambda: NOW, compliance_retention_days=1).stop()
    with sqlite3.connect(till) as db:
        assert db.execute("SELECT COUNT(*) FROM compliance").fetchone()[0] == 4


def test_sslmode_reaches_the_connection(tmp_path, central_url):
    till = tmp_path / "store.sqlite"
    AnalyticsStore(till, 3650, 3600, clock=lambda: NOW).stop()
    # The test server has no TLS: asking for it must fail, not quietly connect in clear text.
    refused = sync_cli(central_url, till, "S1", "--sslmode", "require", "--retries", "0")
    assert refused.returncode == 2 and refused.stderr.startswith("error:")
    assert "SSL" in refused.stderr and password_of(central_url) not in refused.stderr
    bad = sync_cli(central_url, till, "S1", "--sslmode", "sometimes")
    assert bad.returncode == 2 and "--sslmode sometimes: expected one of" in bad.stderr


def test_two_tills_sync_at_once(tmp_path, central_url, psycopg):
    tills = {}
    for index, store in enumerate(("S1", "S2")):
        tills[store] = tmp_path / f"{store}.sqlite"
        generate_till(tills[store], index, TillShape(lanes=4, days=1, receipts_per_lane_day=80))
    procs = {store: subprocess.Popen([*AGETOOL, "analytics", "sync", "--to", central_url, "--db", str(path),
                                      "--store-id", store, "--batch-rows", "40"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for store, path in tills.items()}
    for store, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    for store, path in tills.items():
        assert central_counts(psycopg, central_url, store) == till_counts(path)


def test_retention_keeps_rows_the_centre_lacks(tmp_path, central_url, psycopg):
    from agetool.edge_runtime.central_sync import sync_till
    from agetool.edge_runtime.sync_specs import prepare_state

    till = tmp_path / "store.sqlite"
    old_day = datetime(2026, 8, 1, 12, tzinfo=timezone.utc).timestamp()
    store = AnalyticsStore(till, 3650, 3600, clock=lambda: NOW)
    for i in range(3):
        post(store, f"OLD{i}", 5.0, ["tea"], ADULT, wall_s=old_day)
    store.add_band_counts([("2026-08-01T12:00Z", "till-1", "25-34", 3)])
    store.submit(lambda db: prepare_state(db, "S1"))  # the daemon does this when analytics.central is set
    store.stop()
    # 30-day retention, nothing sent yet: nothing may go.
    store = AnalyticsStore(till, 30, 3600, clock=lambda: NOW)
    store.stop()
    assert till_counts(till)["receipts"] == 3 and till_counts(till)["shoppers"] == 3
    sync_till(CentralTarget(central_url), till, "S1")
    AnalyticsStore(till, 30, 3600, clock=lambda: NOW).stop()  # purges at start
    # All sent: all go but the receipt at the high-water mark (kept so SQLite never reuses its rowid).
    assert till_counts(till) == {"receipts": 1, "receipt_items": 1, "shoppers": 0, "total_cents": 500}
    assert central_counts(psycopg, central_url)["receipts"] == 3


def table_row(report: str, first_cells: str) -> list[str]:
    for line in report.splitlines():
        if line.startswith(f"| {first_cells} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row starting with {first_cells!r} in:\n{report}")


def test_chain_report_adds_up_the_tills_and_suppresses_after_the_sums(tmp_path, central_url):
    tills = {"S1": tmp_path / "S1.sqlite", "S2": tmp_path / "S2.sqlite"}
    store = AnalyticsStore(tills["S1"], 3650, 3600, clock=lambda: NOW)
    for i in range(7):
        post(store, f"A{i}", 10.0 + i, ["beer"], ADULT)
    for i in range(3):
        post(store, f"S{i}", 50.0 + i, ["tea", "tea"], SENIOR)  # two lines of tea: still one receipt with tea
    store.add_band_counts([("2026-11-20T12:00Z", "till-1", "25-34", 3), ("2026-11-20T12:00Z", "till-2", "25-34", 4)])
    store.stop()
    store = AnalyticsStore(tills["S2"], 3650, 3600, clock=lambda: NOW)
    for i in range(5):
        post(store, f"A{i}", 20.0 + i, ["beer"], ADULT)  # the same receipt ids as S1: another store
    for i in range(3):
        post(store, f"S{i}", 60.0 + i, ["tea"], SENIOR)
    store.add_band_counts([("2026-11-20T12:00Z", "till-1", "25-34", 6)])
    store.stop()
    reports = {}
    for name, path in tills.items():
        assert sync_cli(central_url, path, name).returncode == 0
        subprocess.run([*AGETOOL, "analytics", "report", "--db", str(path), "--out", str(tmp_path / name)], check=True)
        reports[name] = (tmp_path / name / "report.md").read_text()
    chain = subprocess.run([*AGETOOL, "analytics", "report", "--db", central_url, "--out", str(tmp_path / "chain"),
                            "--since", "2026-11-20"], capture_output=True, text=True)
    assert chain.returncode == 0, chain.stderr
    assert password_of(central_url) not in chain.stderr
    report = (tmp_path / "chain" / "report.md").read_text()
    # Per till, each lane of S1 is a small cell; per store, S1's 3 + 4 = 7 shoppers show.
    assert table_row(reports["S1"], "till-1")[4] == "<5" and table_row(reports["S1"], "till-2")[4] == "<5"
    assert table_row(report, "S1")[4] == "7" and table_row(report, "S2")[4] == "6"
    # Receipts per band: 25-34 adds up (7 + 5, 91.00 + 110.00); 65+ is <5 in each till, 6 chain-wide.
    assert table_row(reports["S1"], "25-34")[1:3] == ["7", "91.00"]
    assert table_row(reports["S2"], "25-34")[1:3] == ["5", "110.00"]
    assert table_row(reports["S1"], "65+")[1] == "<5" and table_row(reports["S2"], "65+")[1] == "<5"
    assert table_row(report, "25-34")[1:3] == ["12", "201.00"]
    assert table_row(report, "65+")[1:5] == ["6", "336.00", "56.00", "56.00"]
    # tea is on <5 receipts in each till, on 6 in the chain, 3 x 2 + 3 x 1 units
    assert table_row(report, "65+ | 1 | tea")[3:] == ["6", "100 %", "9"]
    assert "65+ | 1 | tea" not in reports["S1"]
    # One store, per lane: the same small cells as the till's own report.
    one = subprocess.run([*AGETOOL, "analytics", "report", "--db", central_url, "--out", str(tmp_path / "s1"),
                          "--store", "S1"], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    s1 = (tmp_path / "s1" / "report.md").read_text()
    assert table_row(s1, "till-1") == table_row(reports["S1"], "till-1")
    assert table_row(s1, "25-34") == table_row(reports["S1"], "25-34")


@pytest.mark.parametrize("since, until", [
    (None, None), ("2026-11-03", None), ("2026-11-02T13:30Z", "2026-11-03T09:00Z"),
    ("2026-11-02T13:30Z", "2026-11-02T17:00Z"), (None, "2026-11-02T12:00Z"), ("2026-11-02T10:00Z", "2026-11-03"),
])
def test_report_categories_from_daily_sums_equal_the_item_lines(central_once, psycopg, since, until):
    """Whole days come from the sums kept at sync time, cut days from the lines: both must give what
    summing every line of the period gives."""
    from agetool.edge_runtime.analytics_report import make_period
    from agetool.edge_runtime.central_db import connect
    from agetool.edge_runtime.central_report import category_sums

    url = central_once
    period = make_period(since, until)
    with connect(CentralTarget(url)) as conn:
        for store in (None, "S1"):
            sums = category_sums(conn, period, store)
            lines = conn.execute(
                "SELECT band, category, COUNT(*) FILTER (WHERE first_in_category), SUM(quantity) FROM receipt_items "
                "WHERE (recorded_at_utc >= %(s)s OR %(s)s::timestamptz IS NULL) "
                "AND (recorded_at_utc < %(u)s OR %(u)s::timestamptz IS NULL) "
                "AND (store_id = %(st)s OR %(st)s::text IS NULL) GROUP BY 1, 2",
                {"s": period.since, "u": period.until, "st": store}).fetchall()
            got = {(r.band, r.category): (int(r.receipts), round(float(r.units), 6)) for r in sums.itertuples()
                   if r.receipts or r.units}
            assert got == {(b, c): (n, round(u, 6)) for b, c, n, u in lines}
            assert got, "the period must hold some lines, or the comparison says nothing"


def test_background_syncer_sends_through_the_daemons_writer(tmp_path, central_url, psycopg):
    from agetool.edge_runtime.central_sync import Backoff, CentralSyncer
    from agetool.edge_runtime.sync_specs import prepare_state

    till = tmp_path / "store.sqlite"
    store = AnalyticsStore(till, 3650, 3600, clock=lambda: NOW)
    store.start()
    store.submit(lambda db: prepare_state(db, "S1"))
    syncer = CentralSyncer(CentralTarget(central_url), till, "S1", store.submit, interval_s=0.2,
                           backoff=Backoff(0.2, 1.0))
    syncer.start()
    try:
        for i in range(6):
            post(store, f"R{i}", 10.0, ["milk", "bread"], ADULT)
        deadline = time.monotonic() + 60
        while central_counts(psycopg, central_url)["receipt_items"] < 12 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        syncer.stop()
        store.stop()
    assert central_counts(psycopg, central_url) == till_counts(till)


def test_bad_url_and_unmigrated_database_are_one_line_errors(tmp_path, pg_admin_url, psycopg):
    till = tmp_path / "store.sqlite"
    AnalyticsStore(till, 3650, 3600, clock=lambda: NOW).stop()
    bad = subprocess.run([*AGETOOL, "analytics", "sync", "--to", "mysql://x:pw@h/db", "--db", str(till)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "pw" not in bad.stderr
    # libpq words a refused connection over two lines; the error stays one
    refused = subprocess.run([*AGETOOL, "analytics", "report", "--db", "postgresql://u:pw0rd@127.0.0.1:1/x",
                              "--out", str(tmp_path / "report")], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "cannot connect" in refused.stderr
    assert "pw0rd" not in refused.stderr
    name = f"agetool_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        empty = subprocess.run([*AGETOOL, "analytics", "sync", "--to", with_database(pg_admin_url, name),
                                "--db", str(till), "--store-id", "S1"], capture_output=True, text=True)
        assert empty.returncode == 2 and "agetool central migrate" in empty.stderr
        assert password_of(pg_admin_url) not in empty.stderr and "Traceback" not in empty.stderr
        migrated = subprocess.run([*AGETOOL, "central", "migrate", "--db", with_database(pg_admin_url, name)],
                                  capture_output=True, text=True)
        assert migrated.returncode == 0 and "schema version 0 -> 2" in migrated.stderr
        assert password_of(pg_admin_url) not in migrated.stderr and "***" in migrated.stderr
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_config_central_section_reads_the_password_from_the_environment(tmp_path, monkeypatch):
    from agetool.edge_runtime.config import _read_yaml, load_config, parse_config
    from agetool.errors import ConfigError

    monkeypatch.setenv("AGETOOL_CENTRAL_PASSWORD", "pw-from-env-123")
    config = tmp_path / "agetool.yaml"
    config.write_text("lanes: [{name: till-1, source: 0}]\nanalytics:\n  central:\n"
                      "    url: postgresql://sync:${AGETOOL_CENTRAL_PASSWORD}@db.example/agetool\n"
                      "    store_id: store-7\n    sslmode: verify-full\n")
    central = parse_config(*_read_yaml(config)[:1]).analytics.central
    assert central.url == "postgresql://sync:pw-from-env-123@db.example/agetool" and central.interval_s == 300
    config.write_text("lanes: [{name: till-1, source: 0}]\nanalytics:\n  central:\n"
                      "    url: mysql://sync:${AGETOOL_CENTRAL_PASSWORD}@db.example/agetool\n    store_id: store-7\n")
    data, lines = _read_yaml(config)
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "config", lines)
    assert "line 4: analytics.central.url: expected a postgresql:// URL" in str(raised.value)
    assert "pw-from-env-123" not in str(raised.value)
    config.write_text("lanes: [{name: till-1, source: 0}]\nanalytics:\n  central:\n"
                      "    url: postgresql://sync:${AGETOOL_CENTRAL_PASSWORD}@db.example/agetool\n    store_id: store-7\n"
                      f"    sslrootcert: {tmp_path}/missing-ca.pem\n")
    with pytest.raises(ConfigError, match=r"line 6: analytics.central.sslrootcert: .*missing-ca.pem: file not found"):
        load_config(config)


def test_serve_syncs_in_the_background_with_the_password_from_the_environment(tmp_path, central_url, psycopg):
    import cv2
    import httpx
    import numpy as np

    from conftest import build_tiny_age_onnx
    from test_runtime_daemon import free_port, wait_for

    password = password_of(central_url)
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 90, np.uint8))
    model = build_tiny_age_onnx(tmp_path / "tiny.onnx")
    port = free_port()
    config = tmp_path / "agetool.yaml"
    config.write_text(f"""\
lanes:
  - name: lane-a
    source: {blank}
    fps: 2
model:
  path: {model}
  providers: cpu
api:
  port: {port}
events:
  jsonl: "off"
analytics:
  sqlite_path: {tmp_path}/analytics.sqlite
  flush_interval_s: 1
  central:
    url: "{central_url.replace(password, '${AGETOOL_CENTRAL_PASSWORD}')}"
    store_id: store-9
    interval_s: 1
""")
    env = {**os.environ, "AGETOOL_CENTRAL_PASSWORD": password, "AGETOOL_DETECTOR": "", "HOME": str(tmp_path)}
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([*AGETOOL, "serve", "--config", str(config)], env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            def answers() -> bool:
                assert proc.poll() is None, log_path.read_text()
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(answers, 120, "the daemon's API")
            for i in range(4):
                reply = client.post("/v1/lanes/lane-a/receipts",
                                    json={"receipt_id": f"D{i}", "total": 3.5, "items": [{"sku": "1", "category": "milk", "quantity": 1}]})
                assert reply.status_code == 201, reply.text
            wait_for(lambda: central_counts(psycopg, central_url, "store-9")["receipt_items"] == 4, 120,
                     "the receipts in the central database")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert central_counts(psycopg, central_url, "store-9") == till_counts(tmp_path / "analytics.sqlite")
    log_text = log_path.read_text()
    assert "central sync: store store-9 to postgresql://agetool:***@" in log_text
    assert password not in log_text
