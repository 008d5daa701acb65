import csv

import pytest

from eyescreen.data import (
    DataError,
    load_dataset,
    make_split,
    parse_classes,
    read_split,
    subset,
    thin_validation,
    write_split,
)


def test_manifest_counts_unlabelled_rows_and_keeps_classes_from_data(synthetic_manifest):
    ds = load_dataset(synthetic_manifest)
    assert ds.classes == ["blob", "normal", "spots"]  # from the data, sorted
    assert len(ds.records) == 60
    assert ds.skipped["empty label"] == 2
    assert "not used (empty label): 2" in ds.summary()


def test_class_filter_keeps_order_and_counts_the_rest(synthetic_manifest):
    ds = load_dataset(synthetic_manifest, parse_classes("spots,normal"))
    assert ds.classes == ["spots", "normal"]
    assert {r.label for r in ds.records} == {"spots", "normal"}
    assert ds.skipped["class blob not selected"] == 20
    assert list(ds.labels()[:2]) == [1, 1]  # patient 0 is 'normal' -> index 1


def test_unknown_class_and_missing_column_are_clear_errors(synthetic_manifest, tmp_path):
    with pytest.raises(DataError, match="dr not found"):
        load_dataset(synthetic_manifest, ["normal", "dr"])
    bad = tmp_path / "bad.csv"
    bad.write_text("image,patient_id\nimages/a.jpg,1\n")
    with pytest.raises(DataError, match=r"bad\.csv: missing column\(s\) label"):
        load_dataset(bad)


def test_folder_per_class_layout(tmp_path):
    for c in ("x", "y"):
        (tmp_path / c).mkdir()
        for i in range(3):
            (tmp_path / c / f"{i}.jpg").write_bytes(b"")
    (tmp_path / "x" / "._0.jpg").write_bytes(b"")  # macOS's resource-fork copy: not a photograph
    (tmp_path / "y" / "notes.txt").write_text("")
    ds = load_dataset(tmp_path)
    assert ds.classes == ["x", "y"]
    assert sorted(r.key for r in ds.records) == [f"{c}/{i}.jpg" for c in "xy" for i in range(3)]
    assert len({r.group for r in ds.records}) == 6  # no patient ids: every image is its own group
    assert ds.skipped == {"not an image by its name: .txt": 1}  # said in the summary; hidden files are not
    assert "not used (not an image by its name: .txt): 1" in ds.summary()


def test_class_folders_find_patients_in_file_names_and_splits_keep_them_whole(tmp_path):
    layout = {
        "normal": ["1_left", "1_right", "2_L", "3_od", "scan7"],
        "dr": ["2_R", "3_OS", "4_left", "5_right", "1_left_2"],  # a second photograph of patient 1's left eye
    }
    for label, stems in layout.items():
        (tmp_path / label).mkdir()
        for stem in stems:
            (tmp_path / label / f"{stem}.jpg").write_bytes(b"")
    for i in range(6, 30):  # enough patients for a three-way split
        for label in layout:
            (tmp_path / label / f"{label}{i}_right.jpg").write_bytes(b"")
    ds = load_dataset(tmp_path)
    by_key = {r.key: r for r in ds.records}
    assert by_key["normal/2_L.jpg"].group == by_key["dr/2_R.jpg"].group == "patient:2"  # across class folders
    assert (by_key["normal/3_od.jpg"].eye, by_key["dr/3_OS.jpg"].eye) == ("right", "left")
    assert (
        by_key["normal/scan7.jpg"].group == "image:normal/scan7.jpg"
        and by_key["normal/scan7.jpg"].eye is None
    )
    assert by_key["dr/1_left_2.jpg"].group == by_key["normal/1_left.jpg"].group == "patient:1"
    assert "from file names (12_left.jpg, 12_right.jpg: patient 12): 57 images; 1 others" in ds.summary()
    for seed in range(5):
        split = make_split(ds, seed=seed)
        for patient in ("1", "2", "3"):
            assert len({split[r.key] for r in ds.records if r.group == f"patient:{patient}"}) == 1


def test_split_keeps_patients_whole_stratified_and_seeded(synthetic_manifest):
    ds = load_dataset(synthetic_manifest)
    split = make_split(ds, seed=3)
    where = {}
    for r in ds.records:
        assert where.setdefault(r.group, split[r.key]) == split[r.key], f"{r.group} crosses splits"
    sizes = {s: sum(v == s for v in split.values()) for s in ("train", "val", "test")}
    assert sizes["train"] > sizes["val"] > 0 and sizes["test"] > 0
    assert make_split(ds, seed=3) == split
    assert make_split(ds, seed=4) != split


def test_a_validation_split_too_thin_to_choose_on_is_said_naming_the_classes(synthetic_manifest):
    ds = load_dataset(synthetic_manifest)
    split = make_split(ds, seed=3)
    counts = {c: sum(split[r.key] == "val" and r.label == c for r in ds.records) for c in ds.classes}
    warning = thin_validation(ds, split, minimum=max(counts.values()))
    thin = [c for c in ds.classes if counts[c] < max(counts.values())]
    assert thin and all(f"{c} {counts[c]}" in warning for c in thin) and "--val-fraction" in warning
    assert thin_validation(ds, split, minimum=min(counts.values())) is None


def test_a_models_classes_on_other_data_match_whatever_the_case_and_none_matching_is_an_error(
    synthetic_manifest,
):
    ds = load_dataset(synthetic_manifest, ["NORMAL", "Spots"], allow_absent=True)
    assert {r.label for r in ds.records} == {"NORMAL", "Spots"}  # spelt as the model spells them
    blobs = sum(1 for r in load_dataset(synthetic_manifest).records if r.label == "blob")
    assert ds.skipped["class blob not selected"] == blobs > 0
    with pytest.raises(DataError, match=r"none of its classes \(blob, normal, spots\) is one of the model's"):
        load_dataset(synthetic_manifest, ["cat", "dog"], allow_absent=True)


def test_real_sample_split_has_no_patient_in_two_splits():
    from eyescreen.demo import sample_manifest

    ds = load_dataset(sample_manifest())
    assert ds.classes == ["amd", "dr", "glaucoma", "normal"]
    split = make_split(ds, seed=0)
    by_patient = {}
    for r in ds.records:
        by_patient.setdefault(r.group, set()).add(split[r.key])
    assert all(len(s) == 1 for s in by_patient.values())
    assert all(len(subset(ds, split, s).records) > 0 for s in ("train", "val", "test"))


def test_split_file_round_trip_and_patient_in_two_splits_rejected(synthetic_manifest, tmp_path):
    ds = load_dataset(synthetic_manifest)
    split = make_split(ds)
    path = tmp_path / "split.csv"
    write_split(split, ds, path)
    assert read_split(path, ds) == split
    rows = list(csv.DictReader(open(path)))
    left = next(r for r in rows if r["image"].endswith("_left.jpg"))
    other = "val" if left["split"] != "val" else "test"
    left["split"] = other
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=rows[0].keys())
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match=r"patient \d+ is in both"):
        read_split(path, ds)


def test_manifests_saved_by_spreadsheets_read_the_same(synthetic_manifest, tmp_path):
    reference = load_dataset(synthetic_manifest)
    lines = synthetic_manifest.read_text().splitlines()
    variants = {
        "semicolons.csv": ("\ufeff" + "\n".join(line.replace(",", ";") for line in lines)).encode(),
        "tabs.csv": "\n".join(line.replace(",", "\t") for line in lines).encode(),
        "windows.csv": "\r\n".join(
            [lines[0].replace(",", ", ")] + [line.replace("/", "\\") for line in lines[1:]]
        ).encode(),
    }
    for name, data in variants.items():
        (synthetic_manifest.parent / name).write_bytes(data)
        ds = load_dataset(synthetic_manifest.parent / name)
        assert [(r.key, r.label, r.group, r.eye, r.path) for r in ds.records] == [
            (r.key, r.label, r.group, r.eye, r.path) for r in reference.records
        ], name


def test_manifest_errors_name_the_file_and_the_line(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("image,label\nimages/caf\xe9.jpg,normal\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"latin\.csv: not UTF-8 text \(byte 22\); save it as CSV in UTF-8"):
        load_dataset(latin)
    gap = tmp_path / "gap.csv"
    gap.write_text("image,label\na.jpg,normal\n,dr\nb.jpg,dr\nc.jpg,normal\n")
    with pytest.raises(DataError, match=r"gap\.csv: line 3: empty image path"):
        load_dataset(gap)


def test_rows_separated_otherwise_than_the_header_are_named(tmp_path):
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("image,patient_id,label\na.jpg,1,normal\nb.jpg;2;dr\n")
    with pytest.raises(
        DataError, match=r"mixed\.csv: line 3: one cell where the header has 3, with ';' in it"
    ):
        load_dataset(mixed)
    # a row short of only its last cells is read, ';' inside a findings cell included
    short = tmp_path / "short.csv"
    short.write_text(
        "image,label,keywords,age\na.jpg,dr,mild npdr; lens dust\nb.jpg,normal,normal fundus,60\n"
    )
    assert [(r.key, r.label) for r in load_dataset(short).records] == [("a.jpg", "dr"), ("b.jpg", "normal")]
