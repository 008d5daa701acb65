import csv
import shutil

import pytest
from PIL import Image

from eyescreen.check import check_data
from eyescreen.cli import main
from eyescreen.data import DataError
from file_reads import counting_reads
from synthetic import everyday_photo, fundus, write_dataset


def messy_manifest(root):
    manifest = write_dataset(root, patients=6)
    rows = list(csv.reader(open(manifest)))
    rows[2][3] = rows[2][3].capitalize()  # "Normal" beside "normal": two classes to training
    shutil.copyfile(root / "images/0_left.jpg", root / "images/copy.jpg")
    everyday_photo(root / "images/holiday.jpg")
    Image.open(root / "images/1_left.jpg").convert("L").save(root / "images/red_free.jpg")
    (root / "images/empty.jpg").write_bytes(b"")
    fundus(64, seed=11)[0].save(root / "images/2_left_2.jpg")
    Image.open(root / "images/1_right.jpg").save(
        root / "images/exported.png"
    )  # the same photograph, other bytes
    photo = Image.open(root / "images/3_left.jpg")
    photo.resize((photo.width * 2, photo.height * 2)).save(root / "images/3_left_big.jpg", quality=80)
    Image.new("RGB", (64, 64)).save(root / "images/black.png")
    rows += [
        ["images/copy.jpg", "99", "left", "normal"],  # the same photo as patient 0's, under patient 99
        ["images/missing.jpg", "98", "left", "normal"],
        ["images/empty.jpg", "97", "left", "normal"],
        ["images/black.png", "96", "left", "normal"],
        ["images/holiday.jpg", "95", "left", "normal"],
        ["images/red_free.jpg", "94", "left", "normal"],
        ["images/2_left_2.jpg", "2", "OS", "normal"],  # a second photograph of patient 2's left eye
        ["images/exported.png", "93", "right", "normal"],  # patient 1's right eye again, under patient 93
        ["images/3_left_big.jpg", "3", "left", "normal"],  # re-saved larger, same patient: a note
        rows[1],  # a duplicated row (the same photograph: not a second one)
    ]
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return manifest


def test_check_data_finds_each_problem(tmp_path):
    rep = check_data(messy_manifest(tmp_path), progress=False)
    assert rep["duplicate_rows"] == ["images/0_left.jpg"]
    assert any("missing.jpg: file not found" in u for u in rep["unreadable"])
    assert any("empty.jpg: empty file" in u for u in rep["unreadable"])
    assert any("black.png" in u for u in rep["no_field_of_view"])
    pairs = [sorted(g) for g in rep["same_image_two_patients"]]
    assert any(any("copy.jpg (patient:99)" in x for x in g) for g in pairs)
    assert rep["labels_differing_in_case"] == [["Normal", "normal"]]  # patient 0's right eye
    doubts = sorted(rep["maybe_not_fundus"])
    assert len(doubts) == 2 and "holiday.jpg: may not be a fundus photograph" in doubts[0]
    assert "red_free.jpg: greyscale, not a colour photograph" in doubts[1]
    assert rep["patients_with_one_eye"] == 7
    assert sorted(map(sorted, rep["resaved_images"])) == [
        ["images/1_right.jpg", "images/exported.png"],
        ["images/3_left.jpg", "images/3_left_big.jpg"],
    ]
    assert rep["resaved_two_patients"] == [
        ["images/1_right.jpg (patient:1)", "images/exported.png (patient:93)"]
    ]
    assert rep["patients_with_several_photographs_of_an_eye"] == 2
    assert rep["image_size"]["width"][0] == 64


def test_check_data_cli_exit_code_and_split_conflict(tmp_path, capsys):
    manifest = messy_manifest(tmp_path)
    assert main(["check-data", str(manifest), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "identical images under different patients (train keeps those patients in one split): 1" in out
    assert "unreadable files: 2" in out
    assert "may not be colour fundus photographs (heuristic; look at them): 2" in out
    assert (
        "the same photograph saved twice under different patients (train keeps those patients in one split): 1\n"
        "  - images/1_right.jpg (patient:1)" in out
    )
    assert "patients with several photographs of an eye: 2 (a single-eye model trains" in out
    assert "more than one visit takes" not in out  # two photographs of an eye are a clinic's usual
    assert "labels that differ only in case (two classes to training): 1\n  - Normal, normal" in out
    clean = write_dataset(tmp_path / "clean", patients=6)
    assert main(["check-data", str(clean), "--no-progress"]) == 0
    assert main(["check-data", "--data", str(clean), "--no-progress"]) == 0  # as `train` takes it
    assert main(["check-data", "--no-progress"]) == 2
    assert main(["check-data", str(clean), "--data", str(manifest), "--no-progress"]) == 2
    assert "give the data" in capsys.readouterr().err.split("\n")[0]
    split = tmp_path / "split.csv"
    split.write_text("image,split\nimages/0_left.jpg,train\nimages/0_right.jpg,test\n" +
                     "".join(f"images/{p}_{e}.jpg,train\n" for p in range(1, 6) for e in ("left", "right")))  # fmt: skip
    with pytest.raises(DataError, match="patient 0 is in both train and test"):
        check_data(clean, split_file=split, progress=False)


def test_check_data_on_class_folders_counts_images_with_no_patient_in_their_name(tmp_path, capsys):
    manifest = write_dataset(tmp_path / "src", patients=4)
    root = tmp_path / "folders"
    for row in csv.DictReader(open(manifest)):
        if row["label"]:
            (root / row["label"]).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(manifest.parent / row["image"], root / row["label"] / row["image"].split("/")[-1])
    first = next(root.iterdir())
    shutil.copyfile(next(first.iterdir()), first / "scan.jpg")  # the same photograph, no patient in its name
    rep = check_data(root, progress=False)
    assert rep["images_without_a_patient_in_the_name"] == 1
    assert rep["patients"] == 5  # four named by their files, and the unnamed one
    assert len(rep["same_image_two_patients"]) == 1  # the copy is caught as another patient's photograph
    assert main(["check-data", str(root), "--no-progress"]) == 1
    assert "images without a patient in the name (each its own patient" in capsys.readouterr().out


def test_a_naming_scheme_that_makes_one_patient_of_many_photographs_is_pointed_out(tmp_path, capsys):
    for n, label in enumerate(("normal", "dr")):
        (tmp_path / label).mkdir()
        for k in range(6):  # "img" read as a patient: img_R_1.jpg is patient img's right eye, photograph 1
            fundus(64, seed=10 * n + k)[0].save(tmp_path / label / f"img_R_{k}.jpg")
        fundus(64, seed=30 + n)[0].save(tmp_path / label / f"7{label}_left.jpg")
    rep = check_data(tmp_path, progress=False)
    assert rep["many_of_an_eye"].startswith("patient img has 12 photographs of the right eye")
    assert main(["check-data", str(tmp_path), "--no-progress"]) == 0  # a note, not a problem
    out = capsys.readouterr().out
    assert "patient img has 12 photographs of the right eye, more than one visit takes" in out
    from eyescreen.data import load_dataset

    assert "  warning: patient img has 12 photographs" in load_dataset(tmp_path).summary()  # train prints it


def test_near_identical_pairs_are_found_in_every_chunk_of_the_distance_matrix(monkeypatch):
    import numpy as np

    from eyescreen import components, near_duplicates

    rng = np.random.default_rng(0)
    thumbs = rng.integers(0, 256, (50, 768)).astype(np.uint8)
    thumbs[37] = np.clip(thumbs[3].astype(int) + rng.integers(-1, 2, 768), 0, 255)  # within a level
    thumbs[49] = thumbs[20]
    thumbs[48] = np.clip(thumbs[20].astype(int) + 3, 0, 255)  # 3 levels off: another photograph
    monkeypatch.setattr(near_duplicates, "CHUNK", 7)  # pairs across chunk boundaries
    found = near_duplicates.distances_within(thumbs)
    assert [(i, j) for i, j, _ in found] == [(3, 37), (20, 49)]
    assert components.groups(50, found + [(37, 45, 0.0)]) == [[3, 37, 45], [20, 49]]


def test_with_a_split_the_copies_that_land_in_two_splits_are_named(tmp_path, capsys):
    from eyescreen.data import load_dataset, make_split, write_split

    manifest = messy_manifest(tmp_path)
    dataset = load_dataset(manifest)
    split = make_split(dataset)
    # patient 1 in train and its re-saved copy (patient 93) in test; patient 0 in val and its byte copy
    # (patient 99) in train; patient 3 and its larger re-save (one patient) stay in one split by patient
    where = {"patient:1": "train", "patient:93": "test", "patient:0": "val", "patient:99": "train"}
    for r in dataset.records:
        split[r.key] = where.get(r.group, split[r.key])
    write_split(split, dataset, tmp_path / "split.csv")
    rep = check_data(manifest, split_file=tmp_path / "split.csv", progress=False)
    assert rep["copies_across_splits"] == [
        ["images/0_left.jpg (val)", "images/copy.jpg (train)"],
        ["images/1_right.jpg (train)", "images/exported.png (test)"],
    ]
    assert main(["check-data", str(manifest), "--split", str(tmp_path / "split.csv"), "--no-progress"]) == 1
    assert "the same photograph in two splits (the later split's numbers would not be clean): 2" in (
        capsys.readouterr().out
    )
    assert "copies_across_splits" not in check_data(manifest, progress=False)  # no split, no line


def test_each_file_is_read_once_for_its_hash_size_and_look(tmp_path, monkeypatch):
    """A network share pays for every reading: the hash, the stored size, the decode, the thumbnail and
    the same-eye descriptor come from one read of the file (a DICOM's too)."""
    import builtins
    import io

    import numpy as np

    from eyescreen.check import _look
    from eyescreen.same_eye import SIDE, descriptor_cache
    from synthetic import dicom_file

    fundus(64, seed=3)[0].save(tmp_path / "eye.jpg")
    dicom_file(tmp_path / "eye.dcm", np.asarray(fundus(64, seed=4)[0]))
    opened = []
    real_open = io.open

    def counting_open(file, *args, **kwargs):
        if not isinstance(file, int):  # a descriptor: the image cache writing its entry
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    for name, size in (("eye.jpg", (64, 64)), ("eye.dcm", (64, 64))):
        digest, stored, thumb, green, notes, error = _look(tmp_path / name, descriptor_cache())
        assert error is None and stored == size and thumb is not None and len(digest) == 64
        assert green.shape == (SIDE, SIDE)
        assert [f for f in opened if not isinstance(f, int)] == [str(tmp_path / name)], (
            name
        )  # int: the cache's write
        opened.clear()


def test_check_data_reads_each_file_once_and_its_same_eye_descriptors_are_the_searchs_own(
    tmp_path, monkeypatch
):
    from eyescreen import check, same_eye

    manifest = messy_manifest(tmp_path)
    with monkeypatch.context() as counting:
        reads = counting_reads(counting, check)
        cold = check_data(manifest, progress=False)  # nothing cached yet
    files = [str(tmp_path / row["image"]) for row in csv.DictReader(open(manifest))]
    assert sorted(reads) == sorted(files)  # once per row: the thumbnails and the same-eye search share it
    assert check_data(manifest, progress=False) == cold  # the same from the cache
    paths = [tmp_path / "images" / name for name in ("0_left.jpg", "1_right.jpg", "exported.png")]
    images, _ = same_eye.descriptors(paths)  # reads the files itself
    cache = same_eye.descriptor_cache()
    assert all((same_eye.descriptor(cache, p) == im).all() for p, im in zip(paths, images, strict=True))
