"""Export and report on a real analytics file with known contents: the numbers, the small-cell
suppression, the period, the charts, the file formats and the one-line CLI errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import cv2
import pandas as pd
import pytest

from agetool.edge_runtime.analytics_report import EXPORT_COLUMNS, build_report, export_receipts
from agetool.edge_runtime.receipts import AnalyticsStore, parse_receipt, tag_band
from agetool.errors import AgetoolError

AGETOOL = [sys.executable, "-m", "agetool.cli"]
NOW = datetime(2025, 3, 10, 18, 0, tzinfo=timezone.utc).timestamp()
T12 = datetime(2025, 3, 10, 12, 15, tzinfo=timezone.utc).timestamp()
T13 = datetime(2025, 3, 10, 13, 40, tzinfo=timezone.utc).timestamp()
LAST_WEEK = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc).timestamp()
ADULT = tag_band(30.0, 25.0, 35.0, 0.5)
SENIOR = tag_band(70.0, 65.0, 75.0, 0.5)
NO_FACE = tag_band(None, None, None, 0.5)


def post(store: AnalyticsStore, receipt_id: str, total: float, categories: list[str], tag, wall_s: float) -> None:
    items = [{"sku": f"{i}", "category": c, "quantity": 2} for i, c in enumerate(categories)]
    body = json.dumps({"receipt_id": receipt_id, "total": total, "items": items}).encode()
    store.record_receipt("till-1", parse_receipt(body), tag, wall_s)


@pytest.fixture
def known_db(tmp_path: Path) -> Path:
    """7 receipts in 25-34 (beer on all, wine on 5, crisps on 3), 3 in 65+, 5 unknown; one 25-34
    receipt last week; shoppers: till-1 at 12:00 8 x 25-34 and 2 x 65+, till-2 at 13:00 5 x 18-24."""
    db = tmp_path / "analytics.sqlite"
    store = AnalyticsStore(db, 3650, 3600, clock=lambda: NOW)
    for i in range(7):
        categories = ["beer"] + (["wine"] if i < 5 else []) + (["crisps"] if i < 3 else [])
        post(store, f"A{i}", 10.0 + i, categories, ADULT, T12)
    for i in range(3):
        post(store, f"S{i}", 50.0 + i, ["tea"], SENIOR, T13)
    for i in range(5):
        post(store, f"U{i}", 5.0, ["bread"], NO_FACE, T13)
    post(store, "OLD", 99.0, ["beer"], ADULT, LAST_WEEK)
    store.add_band_counts([("2025-03-10T12:00Z", "till-1", "25-34", 8), ("2025-03-10T12:00Z", "till-1", "65+", 2),
                           ("2025-03-10T13:00Z", "till-2", "18-24", 5), ("2025-03-03T09:00Z", "till-1", "65+", 40)])
    store.stop()
    return db


def table_row(report: str, first_cells: str) -> list[str]:
    """The cells of the markdown table row starting with `first_cells`."""
    for line in report.splitlines():
        if line.startswith(f"| {first_cells} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row starting with {first_cells!r} in:\n{report}")


def test_report_numbers_and_small_cells(known_db, tmp_path):
    out = tmp_path / "report"
    result = build_report(known_db, out, since="2025-03-10", until="2025-03-10", k=5)
    report = (out / "report.md").read_text()
    assert result.receipts_shown == 12 and result.shoppers_shown == 13  # the 3 + 2 seniors are small cells
    assert "receipts, in the bands shown: 12" in report and "15" not in report  # 15 - 12 would give 65+ away
    # Shoppers per band and lane: bands in contract order; 2 senior shoppers are a small cell.
    assert "| lane | 0-12 | 13-17 | 18-24 | 25-34 | 35-49 | 50-64 | 65+ |" in report
    assert table_row(report, "till-1") == ["till-1", "0", "0", "0", "8", "0", "0", "<5"]
    assert table_row(report, "till-2") == ["till-2", "0", "0", "5", "0", "0", "0", "0"]
    assert table_row(report, "till-1 | 12:00") == ["till-1", "12:00", "0", "0", "0", "8", "0", "0", "<5"]
    # Receipts and basket value: 25-34 is 10..16 (sum 91, mean and median 13); 65+ has only 3.
    assert table_row(report, "25-34") == ["25-34", "7", "91.00", "13.00", "13.00", "58.3 %"]  # of 12 shown
    assert table_row(report, "65+") == ["65+", "<5", "—", "—", "—", "—"]
    assert table_row(report, "unknown")[:3] == ["unknown", "5", "25.00"]
    assert "153" not in report and "40" not in report  # the three senior baskets and last week's count
    # Top categories: only categories on at least k receipts of a band with at least k receipts.
    assert table_row(report, "25-34 | 1") == ["25-34", "1", "beer", "7", "100 %", "14"]
    assert table_row(report, "25-34 | 2") == ["25-34", "2", "wine", "5", "71 %", "10"]
    assert "crisps" not in report and "tea" not in report
    assert table_row(report, "unknown | 1")[2] == "bread"

    for chart in ("shoppers_by_hour.png", "receipts_by_band.png"):
        assert f"]({chart})" in report
        image = cv2.imread(str(out / chart))
        assert image is not None and image.shape[0] > 100 and image.std() > 0  # a real, non-blank PNG
    assert sorted(p.name for p in out.iterdir()) == [
        "receipts_by_band.png", "report.md", "shoppers_by_hour.png"]  # no temp files left


def test_a_small_hour_cannot_be_worked_out_from_the_lane_total(tmp_path):
    db = tmp_path / "a.sqlite"
    store = AnalyticsStore(db, 3650, 3600, clock=lambda: NOW)
    store.add_band_counts([("2025-03-10T12:00Z", "till-1", "25-34", 10), ("2025-03-10T13:00Z", "till-1", "25-34", 3),
                           ("2025-03-10T14:00Z", "till-1", "25-34", 6), ("2025-03-10T14:00Z", "till-1", "35-49", 9)])
    store.stop()
    build_report(db, tmp_path / "r", k=5)
    report = (tmp_path / "r" / "report.md").read_text()
    assert table_row(report, "till-1")[4:6] == ["19", "9"]
    # 19 - 10 - 6 = 3: so the 6 is hidden too (the smallest other cell), and only 3 + 6 = 9 can be inferred.
    assert table_row(report, "till-1 | 12:00")[5] == "10"
    assert table_row(report, "till-1 | 13:00")[5] == "<5"
    assert table_row(report, "till-1 | 14:00")[5:7] == ["hidden", "9"]
    assert "`hidden`: k or more shoppers" in report


def test_a_larger_k_hides_more_and_the_whole_file_is_the_default_period(known_db, tmp_path):
    build_report(known_db, tmp_path / "r", k=8)
    report = (tmp_path / "r" / "report.md").read_text()
    assert table_row(report, "25-34")[:3] == ["25-34", "8", "190.00"]  # 7 today + last week's 99.00
    assert table_row(report, "till-1") == ["till-1", "0", "0", "0", "8", "0", "0", "42"]  # 2 + 40 seniors
    assert table_row(report, "till-2") == ["till-2", "0", "0", "<8", "0", "0", "0", "0"]
    assert table_row(report, "25-34 | 1")[2:4] == ["beer", "8"] and "wine" not in report


def test_report_on_an_empty_or_missing_file(tmp_path):
    empty = tmp_path / "empty.sqlite"
    AnalyticsStore(empty, 90, 3600).stop()
    build_report(empty, tmp_path / "r")
    report = (tmp_path / "r" / "report.md").read_text()
    assert "No shoppers counted in this period." in report and table_row(report, "25-34")[1] == "0"
    with pytest.raises(AgetoolError, match="--db .*missing.sqlite: file not found"):
        build_report(tmp_path / "missing.sqlite", tmp_path / "r2")
    with pytest.raises(AgetoolError, match="--k 1: expected 2 or more"):
        build_report(empty, tmp_path / "r3", k=1)
    with pytest.raises(AgetoolError, match="--until .* must be after --since"):
        build_report(empty, tmp_path / "r4", since="2025-03-10", until="2025-03-01")


def test_export_csv_covers_the_period_with_items(known_db, tmp_path):
    out = tmp_path / "export" / "receipts.csv"
    assert export_receipts(known_db, out, since="2025-03-10") == 15
    frame = pd.read_csv(out, keep_default_na=False)
    assert tuple(frame.columns) == EXPORT_COLUMNS
    assert "OLD" not in set(frame["receipt_id"])
    a0 = frame[frame["receipt_id"] == "A0"].iloc[0]
    assert a0["band"] == "25-34" and a0["total"] == 10.0 and a0["band_confidence"] == "1.0" and a0["n_items"] == 3
    assert [i["category"] for i in json.loads(a0["items"])] == ["beer", "wine", "crisps"]
    unknown = frame[frame["band"] == "unknown"]
    assert len(unknown) == 5 and set(unknown["band_basis"]) == {"no_face"} and set(unknown["band_confidence"]) == {""}
    assert export_receipts(known_db, out, since="2025-03-01", until="2025-03-03") == 1  # until's day included
    assert pd.read_csv(out)["receipt_id"].tolist() == ["OLD"]
    assert export_receipts(known_db, out, since="2025-03-10T13:00Z") == 8


def test_parquet_needs_pyarrow_and_says_so(known_db, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    with pytest.raises(AgetoolError, match=r"needs pyarrow .*\.csv"):
        export_receipts(known_db, tmp_path / "r.parquet", since="2025-03-10")
    assert not (tmp_path / "r.parquet").exists()
    with pytest.raises(AgetoolError, match="expected a .csv or .parquet"):
        export_receipts(known_db, tmp_path / "r.xlsx", since="2025-03-10")


def test_parquet_export_round_trips(known_db, tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "r.parquet"
    assert export_receipts(known_db, out, since="2025-03-10") == 15
    frame = pd.read_parquet(out)
    assert tuple(frame.columns) == EXPORT_COLUMNS and frame["total"].sum() == pytest.approx(91 + 153 + 25)


def test_cli_export_report_and_one_line_errors(known_db, tmp_path):
    ok = subprocess.run(AGETOOL + ["analytics", "export", "--db", str(known_db), "--since", "2025-03-10",
                                   "--out", str(tmp_path / "r.csv")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "15 receipt(s)" in ok.stderr and len(pd.read_csv(tmp_path / "r.csv")) == 15
    ok = subprocess.run(AGETOOL + ["analytics", "report", "--db", str(known_db), "--out", str(tmp_path / "rep"),
                                   "--since", "2025-03-10", "--k", "5"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "rep" / "report.md").is_file()
    bad = subprocess.run(AGETOOL + ["analytics", "export", "--db", str(known_db), "--since", "last tuesday",
                                    "--out", str(tmp_path / "x.csv")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert re.fullmatch(r"error: --since 'last tuesday': expected a date YYYY-MM-DD .*\n", bad.stderr)
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.csv").exists()
