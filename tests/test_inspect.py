"""`agetool data inspect` on real faces with planted bad files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from agetool.contract import BAND_NAMES, age_band
from agetool.errors import AgetoolError
from agetool.trainer.inspect import GRID_FILE, HISTOGRAM_FILE, SUMMARY_FILE, inspect_data
from test_data import plant_bad_files


def test_clean_folder_summary_matches_the_labels(small_face_folder, tmp_path):
    summary = inspect_data([small_face_folder], out_dir=tmp_path / "out", workers=2)
    ages = pd.read_csv(small_face_folder / "labels.csv")["real_age"].to_numpy(float)
    assert summary.n_images == summary.n_rows == 24
    assert summary.n_corrupt == summary.n_missing == summary.n_duplicate == 0
    assert summary.age_min == ages.min() and summary.age_max == ages.max()
    assert summary.age_median == pytest.approx(np.median(ages), abs=1e-3)
    assert summary.age_mean == pytest.approx(ages.mean(), abs=1e-3)
    assert summary.age_std == pytest.approx(ages.std(), abs=1e-3)
    assert summary.image_sizes == {"200x200": 24}
    assert sum(summary.count_by_band.values()) == 24
    assert summary.count_by_band["0-12"] == sum(age_band(a) == "0-12" for a in ages)


def test_planted_problems_are_counted_listed_and_skipped(small_face_folder, tmp_path):
    planted = plant_bad_files(small_face_folder)
    good_ages = pd.read_csv(small_face_folder / "labels.csv", dtype=str).iloc[:24]["real_age"].astype(float)
    out = tmp_path / "report"
    summary = inspect_data([small_face_folder], out_dir=out, workers=2)

    assert summary.n_rows == 24 + 9
    assert summary.n_images == 24
    assert summary.n_corrupt == 3
    assert summary.n_missing == 1
    assert summary.n_duplicate == 2  # one repeated label row + one byte-identical file
    assert summary.n_bad_label == 3
    assert summary.n_unlabelled == 1
    assert summary.age_mean == pytest.approx(good_ages.mean(), abs=1e-3)
    kinds = {(p.file_name, p.kind) for p in summary.problems}
    for name in planted["corrupt"]:
        assert (name, "corrupt") in kinds
    assert ("copy_of_second.jpg", "duplicate") in kinds
    assert ("gone.jpg", "missing") in kinds
    assert ("unlabelled.jpg", "unlabelled") in kinds
    copy_reason = next(p.reason for p in summary.problems if p.file_name == "copy_of_second.jpg")
    assert copy_reason.startswith("same bytes as faces/") and "labelled" in copy_reason  # ages differ

    saved = json.loads((out / SUMMARY_FILE).read_text())
    for key in ("n_images", "n_corrupt", "n_missing", "n_duplicate", "age_min", "age_median",
                "age_mean", "age_max", "age_std", "problems", "count_by_band"):
        assert key in saved, key
    assert saved["n_corrupt"] == 3 and saved["n_images"] == 24
    assert set(saved["count_by_band"]) == set(BAND_NAMES)
    assert all({"dataset", "file_name", "kind", "reason"} <= set(p) for p in saved["problems"])

    histogram = cv2.imread(str(out / HISTOGRAM_FILE))
    grid = cv2.imread(str(out / GRID_FILE))
    assert histogram is not None and histogram.shape[0] > 100 and histogram.shape[1] > 100
    assert grid is not None and grid.shape == (4 * (128 + 24), 4 * 128, 3)
    assert grid.std() > 10  # real faces, not a blank canvas
    assert sorted(p.name for p in out.iterdir()) == sorted([SUMMARY_FILE, HISTOGRAM_FILE, GRID_FILE])


def test_without_out_nothing_is_written(small_face_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = inspect_data([small_face_folder])
    assert summary.outputs == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"]


def test_every_image_unreadable_still_gives_a_summary(tmp_path):
    folder = tmp_path / "broken"
    (folder / "final_files").mkdir(parents=True)
    (folder / "final_files" / "a.jpg").write_bytes(b"")
    (folder / "final_files" / "b.jpg").write_text("nope")
    (folder / "labels.csv").write_text("file_name,real_age\na.jpg,3\nb.jpg,40\n")
    summary = inspect_data([folder], out_dir=tmp_path / "out")
    assert summary.n_images == 0 and summary.n_corrupt == 2
    assert summary.age_mean is None
    assert json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())["age_mean"] is None
    assert not (tmp_path / "out" / HISTOGRAM_FILE).exists()


def test_two_folders_and_a_bad_one(small_face_folder, tmp_path):
    with pytest.raises(AgetoolError, match="not a face data folder"):
        inspect_data([small_face_folder, tmp_path])
