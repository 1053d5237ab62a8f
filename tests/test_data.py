"""Face data loaders and the split: real files on disk, real OpenCV decoding."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agetool.contract import BAND_NAMES, age_band
from agetool.errors import AgetoolError
from agetool.trainer.data import (
    apply_split,
    load_face_rgb,
    load_faces,
    make_split,
    read_dataset,
    read_datasets,
    read_labelled_images,
    split_datasets,
    write_split,
)


def plant_bad_files(folder: Path) -> dict[str, list[str]]:
    """Add broken rows and files to a seeds'-layout folder; returns what was planted, by kind."""
    images = folder / "final_files"
    labels = pd.read_csv(folder / "labels.csv")
    good = sorted(images.iterdir())
    data = good[0].read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.jpg").write_text("this is not an image\n")
    shutil.copy(good[1], images / "copy_of_second.jpg")  # byte-identical to a labelled image
    (images / "unlabelled.jpg").write_bytes(data)
    extra = pd.DataFrame(
        {
            "file_name": [
                "truncated.jpg", "empty.jpg", "text.jpg", "copy_of_second.jpg",
                "gone.jpg", good[2].name, "nan_age.jpg", "negative.jpg", "old.jpg",
            ],
            "real_age": ["30", "31", "32", "33", "34", "35", "abc", "-3", "250"],
        }
    )
    shutil.copy(good[3], images / "nan_age.jpg")
    shutil.copy(good[3], images / "negative.jpg")
    shutil.copy(good[3], images / "old.jpg")
    pd.concat([labels.astype(str), extra], ignore_index=True).to_csv(folder / "labels.csv", index=False)
    return {
        "corrupt": ["truncated.jpg", "empty.jpg", "text.jpg"],
        "content_copy": ["copy_of_second.jpg"],
        "missing": ["gone.jpg"],
        "duplicate_row": [good[2].name],
        "bad_label": ["nan_age.jpg", "negative.jpg", "old.jpg"],
        "unlabelled": ["unlabelled.jpg"],
    }


def test_seeds_layout_reads_every_good_row(small_face_folder):
    rows, problems = read_dataset(small_face_folder)
    labels = pd.read_csv(small_face_folder / "labels.csv")
    assert problems == []
    assert list(rows.columns) == ["dataset", "file_name", "path", "real_age"]
    assert len(rows) == 24
    assert set(rows["dataset"]) == {"faces"}
    assert rows.set_index("file_name")["real_age"].to_dict() == labels.set_index("file_name")["real_age"].astype(float).to_dict()
    assert all(Path(p).is_file() for p in rows["path"])


def test_bad_rows_are_skipped_with_a_reason(small_face_folder):
    planted = plant_bad_files(small_face_folder)
    rows, problems = read_dataset(small_face_folder)
    by_file = {p.file_name: p for p in problems}
    assert by_file["gone.jpg"].kind == "missing"
    assert by_file["nan_age.jpg"].kind == "bad_label" and "not a number" in by_file["nan_age.jpg"].reason
    assert by_file["negative.jpg"].kind == "bad_label" and "outside" in by_file["negative.jpg"].reason
    assert by_file["old.jpg"].kind == "bad_label"
    duplicate = [p for p in problems if p.kind == "duplicate"]
    assert [p.file_name for p in duplicate] == planted["duplicate_row"]
    # The first row of a duplicated name is kept, with its first age.
    kept = rows.set_index("file_name")
    assert kept.loc[planted["duplicate_row"][0], "real_age"] != 35.0
    # Corrupt files are not the label reader's business: they stay, for the decoder to catch.
    assert set(planted["corrupt"]) <= set(rows["file_name"])
    assert len(rows) == 24 + len(planted["corrupt"]) + len(planted["content_copy"])


def test_corrupt_images_are_reported_not_raised(small_face_folder):
    planted = plant_bad_files(small_face_folder)
    images = small_face_folder / "final_files"
    good = images / pd.read_csv(small_face_folder / "labels.csv")["file_name"][0]
    paths = [good] + [images / name for name in planted["corrupt"]] + [images / "nowhere.jpg"]
    faces, ok, errors = load_faces(paths, input_size=32, workers=2)
    assert ok.tolist() == [True, False, False, False, False]
    assert faces.shape == (1, 32, 32, 3) and faces.dtype == np.uint8
    assert len(errors) == 4
    assert any("truncated.jpg: not a decodable image" in e for e in errors)
    assert any("empty.jpg: empty file" in e for e in errors)
    assert any("text.jpg: not a decodable image" in e for e in errors)
    assert any("nowhere.jpg: cannot read" in e for e in errors)
    rgb = load_face_rgb(good)
    assert rgb.shape == (200, 200, 3)


def test_labels_with_missing_columns_or_folder_are_refused(tmp_path, small_face_folder):
    (small_face_folder / "labels.csv").write_text("file_name,age\n000001.jpg,3\n")
    with pytest.raises(AgetoolError, match="missing column.*real_age"):
        read_dataset(small_face_folder)
    with pytest.raises(AgetoolError, match="data folder not found"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(AgetoolError, match="not a face data folder"):
        read_dataset(tmp_path / "empty_dir")
    no_images = tmp_path / "no_images"
    no_images.mkdir()
    (no_images / "labels.csv").write_text("file_name,real_age\n")
    with pytest.raises(AgetoolError, match="final_files"):
        read_dataset(no_images)
    with pytest.raises(AgetoolError, match="at least one folder"):
        read_datasets([])


def test_plain_folder_plus_labels_keys_like_the_seeds_layout(small_face_folder):
    rows, problems = read_labelled_images(small_face_folder / "final_files", small_face_folder / "labels.csv")
    seeds_rows, _ = read_dataset(small_face_folder)
    assert problems == []
    assert set(rows["dataset"]) == {"faces"}  # parent of final_files/, so the split file matches
    pd.testing.assert_frame_equal(rows, seeds_rows)


def test_appa_real_layout_keeps_its_official_split(tmp_path, small_face_folder):
    src = sorted((small_face_folder / "final_files").iterdir())
    appa = tmp_path / "appa"
    for split_name, files in (("train", src[:4]), ("valid", src[4:6]), ("test", src[6:8])):
        (appa / split_name).mkdir(parents=True)
        lines = ["file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age"]
        for i, f in enumerate(files):
            stem = f"{i:06d}.jpg"
            shutil.copy(f, appa / split_name / f"{stem}_face.jpg")
            lines.append(f"{stem},30,25.0,3.0,{20 + i}")
        (appa / f"gt_avg_{split_name}.csv").write_text("\n".join(lines) + "\n")
    rows, problems = read_dataset(appa)
    assert problems == []
    assert rows["split"].value_counts().to_dict() == {"train": 4, "val": 2, "test": 2}
    assert rows["file_name"].iloc[0] == "train/000000.jpg_face.jpg"
    assert make_split(rows, seed=7)["split"].tolist() == rows["split"].tolist()


def _synthetic_rows(per_age: int = 3) -> pd.DataFrame:
    ages = np.repeat(np.arange(1, 91), per_age).astype(float)
    return pd.DataFrame(
        {
            "dataset": "synthetic",
            "file_name": [f"{i:05d}.jpg" for i in range(len(ages))],
            "path": "",
            "real_age": ages,
        }
    )


def test_split_is_deterministic_and_independent_of_row_order():
    rows = _synthetic_rows()
    first = make_split(rows, seed=42).set_index("file_name")["split"]
    shuffled = rows.sample(frac=1.0, random_state=3).reset_index(drop=True)
    again = make_split(shuffled, seed=42).set_index("file_name")["split"]
    assert first.sort_index().equals(again.sort_index())
    other_seed = make_split(rows, seed=43).set_index("file_name")["split"]
    assert (first != other_seed.loc[first.index]).sum() > 0


def test_split_is_stratified_by_age_band():
    rows = make_split(_synthetic_rows(), seed=42, val_fraction=0.15, test_fraction=0.15)
    bands = rows["real_age"].map(age_band)
    for band in BAND_NAMES:
        members = rows[bands == band]
        counts = members["split"].value_counts()
        assert set(counts.index) == {"train", "val", "test"}, band
        assert abs(counts["val"] - round(len(members) * 0.15)) <= 0
        assert abs(counts["test"] - round(len(members) * 0.15)) <= 0


def test_split_of_the_shared_faces_has_every_band_in_train_and_val(shared_faces):
    rows, _ = read_dataset(shared_faces)
    rows = make_split(rows, seed=42)
    bands = rows["real_age"].map(age_band)
    for band in BAND_NAMES:
        parts = set(rows.loc[bands == band, "split"])
        assert {"train", "val", "test"} <= parts, band
    share_val = (rows["split"] == "val").mean()
    assert share_val == pytest.approx(0.15, abs=0.01)


def test_split_file_round_trip_and_bad_split_files(tmp_path, small_face_folder):
    out = tmp_path / "split.csv"
    rows = split_datasets([small_face_folder], out, seed=5, val_fraction=0.25, test_fraction=0.25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "split.csv"]  # no temp file left
    on_disk = pd.read_csv(out)
    assert list(on_disk.columns) == ["dataset", "file_name", "real_age", "split"]
    fresh, _ = read_dataset(small_face_folder)
    applied = apply_split(fresh, out)
    assert applied.set_index("file_name")["split"].to_dict() == rows.set_index("file_name")["split"].to_dict()
    split_datasets([small_face_folder], tmp_path / "again.csv", seed=5, val_fraction=0.25, test_fraction=0.25)
    assert (tmp_path / "again.csv").read_bytes() == out.read_bytes()

    bad = tmp_path / "bad.csv"
    write_split(rows.assign(split="holdout"), bad)
    with pytest.raises(AgetoolError, match="holdout"):
        apply_split(fresh, bad)
    with pytest.raises(AgetoolError, match="split file not found"):
        apply_split(fresh, tmp_path / "none.csv")
    with pytest.raises(AgetoolError, match="fractions"):
        make_split(fresh, val_fraction=0.6, test_fraction=0.5)
