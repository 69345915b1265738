"""Finding labelled X-rays (training/data.py, which imports fastai): labels from a CSV, with or
without patient ids, or from class folders."""

from __future__ import annotations

from pathlib import Path

from training.data import labelled_files


def test_labelled_files_reads_patient_ids_and_keeps_its_pairs(tmp_path: Path):
    (tmp_path / "with.csv").write_text("file,label,patient_id\nx/a.png,NORMAL,17\nx/b.png,1,\n")
    (tmp_path / "without.csv").write_text("file,label\nx/a.png,NORMAL\n")
    assert labelled_files(tmp_path, labels_csv=tmp_path / "with.csv", with_patients=True) == [
        (tmp_path / "x/a.png", "NORMAL", "17"),
        (tmp_path / "x/b.png", "1", None),
    ]
    assert labelled_files(tmp_path, labels_csv=tmp_path / "with.csv")[0] == (tmp_path / "x/a.png", "NORMAL")
    assert labelled_files(tmp_path, labels_csv=tmp_path / "without.csv", with_patients=True) == [
        (tmp_path / "x/a.png", "NORMAL", None)
    ]
    (tmp_path / "folders" / "PNEUMONIA").mkdir(parents=True)
    (tmp_path / "folders" / "PNEUMONIA" / "a.png").write_bytes(b"")
    assert labelled_files(tmp_path / "folders", with_patients=True) == [
        (tmp_path / "folders" / "PNEUMONIA" / "a.png", "PNEUMONIA", None)
    ]
