import numpy as np

from eyescreen.anatomy import cam_shares, locate, shares_markdown, summarise_shares
from synthetic import fundus


def test_disc_and_macula_are_found_on_a_synthetic_fundus():
    im, _ = fundus(160, macula=True, seed=3)
    marks = locate(np.asarray(im))
    disc_col, disc_row = 80 + int(0.18 * 160), 80 - 4
    assert abs(marks.disc[0] - disc_row) <= 4 and abs(marks.disc[1] - disc_col) <= 4
    assert abs(marks.macula[0] - disc_row) <= 5 and abs(marks.macula[1] - (disc_col - 45)) <= 5


def test_mirrored_eye_puts_the_macula_on_the_other_side():
    im, _ = fundus(160, macula=True, seed=3)
    mirrored = np.ascontiguousarray(np.asarray(im)[:, ::-1])
    marks = locate(mirrored)
    assert marks.macula[1] > marks.disc[1]


def test_cam_mass_shares_add_up_and_follow_the_map():
    im, _ = fundus(160, macula=True, seed=3)
    marks = locate(np.asarray(im))
    rows, cols = np.mgrid[:160, :160]
    on_disc = np.exp(-((rows - marks.disc[0]) ** 2 + (cols - marks.disc[1]) ** 2) / 20.0)
    shares = cam_shares(on_disc, marks)
    assert abs(shares["disc_mass"] + shares["macula_mass"] + shares["rest_mass"] - 1) < 1e-6
    assert shares["disc_mass"] > 0.9 > shares["disc_area"]
    uniform = cam_shares(np.ones((160, 160)), marks)
    assert abs(uniform["macula_mass"] - uniform["macula_area"]) < 1e-6


def test_glare_along_the_rim_is_not_taken_for_the_disc():
    """Glare is bright against the black outside the field; the blur must not count that black."""
    im, _ = fundus(160, macula=True, seed=3)
    image = np.asarray(im).astype(np.float32)
    rows, cols = np.mgrid[:160, :160]
    crescent = (np.hypot(rows - 80, cols - 80) > 50) & (np.hypot(rows - 80, cols - 80) < 67)
    crescent &= (rows < 80) & (cols < 80)  # the upper-left rim, across the field from the disc
    image[crescent] = np.minimum(image[crescent] + 90, 255)
    marks = locate(image.astype(np.uint8))
    disc_col, disc_row = 80 + int(0.18 * 160), 80 - 4
    assert abs(marks.disc[0] - disc_row) <= 4 and abs(marks.disc[1] - disc_col) <= 4


def _share(disc: float) -> dict[str, float]:
    return {"disc_mass": disc, "disc_area": 0.04, "macula_mass": 0.1, "macula_area": 0.08,
            "rest_mass": 0.9 - disc, "rest_area": 0.88}  # fmt: skip


def test_class_summaries_skip_eyes_without_landmarks_and_resample_whole_patients():
    per_eye = [_share(0.1), _share(0.3), None, _share(0.05), _share(0.05)]
    labels = ["glaucoma", "glaucoma", "glaucoma", "normal", "normal"]
    rows = summarise_shares(
        per_eye, labels, ["normal", "glaucoma", "amd"], patients=["a", "b", "b", "c", "c"]
    )
    assert [(r["class"], r["n"]) for r in rows] == [("normal", 2), ("glaucoma", 2)]  # amd: no eye
    glaucoma = rows[1]
    assert abs(glaucoma["disc_mass"] - 0.2) < 1e-9
    low, high = glaucoma["disc_mass_ci"]
    assert abs(low - 0.1) < 1e-9 and abs(high - 0.3) < 1e-9  # two patients: all of a, all of b, or both
    # normal's two eyes are one patient: every resample is that patient, the interval has no width
    assert (
        rows[0]["disc_mass_ci"] == [0.05, 0.05] and "disc_area_ci" not in rows[0] and rows[0]["patients"] == 1
    )
    table = shares_markdown(rows, "gradcam")
    assert "| glaucoma | 2 (2) | 0.200 [0.100, 0.300] (0.040) |" in table and "resampling patients" in table
    assert (
        "["
        not in shares_markdown(summarise_shares(per_eye, labels, ["glaucoma"]), "gradcam").split("|---|")[-1]
    )
