import pytest

from eyescreen.data import load_dataset, make_split
from eyescreen.demo import sample_manifest
from eyescreen.pairs import pair_files, pair_records, patient_label


def test_files_pair_by_name_in_many_spellings_and_odd_ones_are_reported(tmp_path):
    names = ["12_left.jpg", "12_right.jpg", "p7-L.png", "p7-R.png", "a.b_OD.jpeg", "a.b_OS.jpeg",
             "solo_right.jpg", "scan.jpg", "12_lefty.jpg", "IMG_0012.jpg"]  # fmt: skip
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    pairs, unpaired = pair_files([tmp_path])
    by_id = {p.patient: p for p in pairs}
    assert set(by_id) == {"12", "p7", "a.b", "solo"}
    assert by_id["p7"].left.name == "p7-L.png" and by_id["p7"].right.name == "p7-R.png"
    assert by_id["a.b"].right.name == "a.b_OD.jpeg"
    assert by_id["solo"].left is None and by_id["solo"].photographs("left") == ()  # one eye: still a patient
    assert not any(p.several_of_a_side for p in pairs)
    assert {p.name for p in unpaired} == {"scan.jpg", "12_lefty.jpg", "IMG_0012.jpg"}


def test_several_photographs_of_one_eye_stay_with_their_patient(tmp_path):
    names = ["7_left_1.jpg", "7_left_2.jpg", "7_right.jpg", "8_L (2).png", "8_L.png", "9-OD3.jpg"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    pairs, unpaired = pair_files([tmp_path])
    by_id = {p.patient: p for p in pairs}
    assert set(by_id) == {"7", "8", "9"} and not unpaired
    assert [p.name for p in by_id["7"].photographs("left")] == ["7_left_1.jpg", "7_left_2.jpg"]
    assert [p.name for p in by_id["7"].photographs("right")] == ["7_right.jpg"]
    assert by_id["7"].several_of_a_side and by_id["8"].several_of_a_side
    assert {p.name for p in by_id["8"].photographs("left")} == {"8_L (2).png", "8_L.png"}
    assert by_id["8"].right is None and not by_id["9"].several_of_a_side


def test_dicom_files_named_by_uid_pair_by_patient_id_and_laterality(tmp_path):
    from synthetic import dicom_file

    dicom_file(tmp_path / "1.2.840.1.dcm", PatientID="PAT42", ImageLaterality="R")
    dicom_file(tmp_path / "1.2.840.2.dcm", PatientID="PAT42", Laterality="L")  # the series-level tag
    dicom_file(tmp_path / "1.2.840.3.dcm", PatientID="PAT43", ImageLaterality="B")  # both eyes: no side
    dicom_file(tmp_path / "1.2.840.4.dcm", ImageLaterality="L")  # no patient id
    dicom_file(tmp_path / "7_OD.dcm", PatientID="PAT44", ImageLaterality="L")  # the name speaks first
    pairs, unpaired = pair_files([tmp_path])
    by_patient = {p.patient: p for p in pairs}
    assert (
        by_patient["PAT42"].right.name == "1.2.840.1.dcm" and by_patient["PAT42"].left.name == "1.2.840.2.dcm"
    )
    assert by_patient["7"].right.name == "7_OD.dcm" and "PAT44" not in by_patient
    assert sorted(p.name for p in unpaired) == ["1.2.840.3.dcm", "1.2.840.4.dcm"]


def test_custom_pattern(tmp_path):
    for n in ("eye(R)__77.jpg", "eye(L)__77.jpg"):
        (tmp_path / n).write_bytes(b"x")
    pairs, unpaired = pair_files([tmp_path], pattern=r"^eye\((?P<side>[LR])\)__(?P<id>\d+)$")
    assert [(p.patient, p.left.name, p.right.name) for p in pairs] == [
        ("77", "eye(L)__77.jpg", "eye(R)__77.jpg")
    ]
    assert not unpaired


def test_manifest_pairs_keep_patients_in_one_split():
    ds = load_dataset(sample_manifest())
    pairs, apart = pair_records(ds.records)
    assert len(pairs) == 40 and not apart
    split = make_split(ds)
    key = {r.path: r.key for r in ds.records}
    for p in pairs:
        assert split[key[p.left]] == split[key[p.right]]


@pytest.mark.parametrize(
    "eyes, rule, expected",
    [
        (["normal", "normal"], "exclude", "normal"),
        (["normal", None], "exclude", "normal"),
        (["dr", "normal"], "exclude", "dr"),
        (["amd", "amd"], "exclude", "amd"),
        (["dr", "amd"], "exclude", None),
        (["amd", "dr"], "priority", "dr"),  # dr is listed before amd in the classes
        ([None, None], "exclude", None),
    ],
)
def test_patient_label_rule(eyes, rule, expected):
    assert patient_label(eyes, ["normal", "dr", "amd", "glaucoma"], two_diseases=rule) == expected


def test_class_folders_of_dicom_files_keep_a_patients_eyes_together_by_their_tags(tmp_path):
    from synthetic import dicom_file

    for label, name, side in (("normal", "1.2.1", "R"), ("dr", "1.2.2", "L"), ("dr", "1.2.3", "R")):
        (tmp_path / label).mkdir(exist_ok=True)
        dicom_file(
            tmp_path / label / f"{name}.dcm",
            PatientID="P1" if name != "1.2.3" else "P2",
            ImageLaterality=side,
        )
    groups = {r.key: (r.group, r.eye) for r in load_dataset(tmp_path).records}
    assert groups == {
        "normal/1.2.1.dcm": ("patient:P1", "right"),
        "dr/1.2.2.dcm": ("patient:P1", "left"),
        "dr/1.2.3.dcm": ("patient:P2", "right"),
    }


@pytest.mark.parametrize(
    "pattern, says",
    [
        (r"^(?P<id>.+)_(", "is not a regular expression: missing )"),
        (r"^(.+)_(left|right)$", "no group named id or side"),
    ],
)
def test_a_pair_pattern_that_cannot_work_is_refused_before_any_file_is_read(tmp_path, capsys, pattern, says):
    from eyescreen.cli import main

    with pytest.raises(ValueError, match=says.replace(")", r"\)")):
        pair_files([tmp_path], pattern=pattern)
    with pytest.raises(SystemExit) as exit:
        main(["predict", str(tmp_path), "--pairs", "--checkpoint", str(tmp_path), "--pair-pattern", pattern])
    assert exit.value.code == 2 and f"--pair-pattern: pair pattern {pattern!r}" in capsys.readouterr().err
