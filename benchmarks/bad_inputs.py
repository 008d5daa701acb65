"""The bad-input table of RESULTS.md (issue 9): build each awkward file or manifest, run it through the
commands a user would (`predict`, `serve`'s screener, `train`'s data loading, `check-data`) and print
what happened, as a Markdown table.

python benchmarks/bad_inputs.py
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from eyescreen.check import check_data  # noqa: E402
from eyescreen.config import preset  # noqa: E402
from eyescreen.data import DataError, load_dataset, read_split  # noqa: E402
from eyescreen.predict import predict  # noqa: E402
from eyescreen.service import Screener, Upload, UploadError  # noqa: E402
from eyescreen.train import train  # noqa: E402
from synthetic import dicom_file, everyday_photo, fundus, write_dataset  # noqa: E402


def image_corpus(folder: Path) -> dict[str, Path]:
    rgb = np.asarray(fundus(160, "spots", seed=1)[0])
    files: dict[str, Path] = {}

    def save(name, image, **kw):
        path = folder / name
        image.save(path, **kw)
        files[name] = path

    good = io.BytesIO()
    Image.fromarray(rgb).save(good, format="JPEG")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 3])
    files["truncated.jpg"] = folder / "truncated.jpg"
    (folder / "zero-bytes.jpg").write_bytes(b"")
    files["zero-bytes.jpg"] = folder / "zero-bytes.jpg"
    (folder / "text-named.jpg").write_text("this is a letter, not a photograph")
    files["text-named.jpg"] = folder / "text-named.jpg"
    alpha = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    alpha[:20, :20, 3] = 0
    save("alpha.png", Image.fromarray(alpha, "RGBA"))
    save("16-bit.png", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257))
    save("greyscale.jpg", Image.fromarray(rgb).convert("L"))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    save("palette.png", Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    save("exif-rotated.jpg", Image.fromarray(rgb).rotate(90, expand=True), exif=exif)
    save("huge.png", Image.new("RGB", (12000, 8000)), compress_level=1)  # 96 MP: over Pillow's bomb limit
    save("tiny-16px.png", Image.fromarray(rgb).resize((16, 16)))
    save("all-black.png", Image.new("RGB", (200, 200)))
    files["everyday-photo.jpg"] = everyday_photo(folder / "everyday-photo.jpg")
    save("tiff.tif", Image.fromarray(rgb))
    for name, with_pixels in (("dicom.dcm", True), ("dicom-no-pixels.dcm", False)):
        files[name] = dicom_file(folder / name, rgb if with_pixels else None)
    return files


def outcome_predict(path: Path, checkpoint: Path, work: Path) -> str:
    out = work / f"{path.name}.csv"
    predict([path], checkpoint, out, progress=False)
    row = next(csv.DictReader(open(out)))
    if row["error"]:
        return f"skipped, listed: `{row['error'].replace(str(path.parent) + '/', '')}`"
    text = f"predicted ({row['predicted']})"
    return text + (
        f"; warning: `{row['warning'].replace(str(path.parent) + '/', '')}`" if row["warning"] else ""
    )


def outcome_serve(path: Path, screener: Screener) -> str:
    try:
        r = screener.screen([Upload("right", path.name, path.read_bytes())])
    except UploadError as e:
        return f"HTTP {e.status}: `{e}`"
    return "200" + (" + warning" if r["warnings"] else "")


def manifest_cases(work: Path) -> list[tuple[str, str, str]]:
    base = write_dataset(work / "data", patients=6)
    rows = list(csv.reader(open(base)))
    header, body = rows[0], rows[1:]
    cases = []

    def variant(name, new_rows, fields=header):
        path = work / "data" / f"{name}.csv"
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([fields, *new_rows])
        return path

    def load(path, **kw):
        try:
            ds = load_dataset(path, **kw)
            return f"loaded ({len(ds.records)} images)"
        except DataError as e:
            return f"error: `{str(e).replace(str(work) + '/', '')}`"

    image_col, label_col = header.index("image"), header.index("label")
    missing = [*body, [*body[0]]]
    missing[-1][image_col] = "images/missing.jpg"
    rep = check_data(variant("missing-file", missing), progress=False)
    cases.append(("missing file", "check-data", f"unreadable: `{rep['unreadable'][0].split('/')[-1]}`"))
    unknown = [list(r) for r in body]
    cases.append(("unknown class in --classes", "train (data loading)",
                  load(variant("unknown-label", unknown), classes=["normal", "drusen"])))  # fmt: skip
    dup = [*body, body[0]]
    rep = check_data(variant("duplicate-rows", dup), progress=False)
    cases.append(("duplicate rows", "check-data", f"duplicate rows: {rep['duplicate_rows']}"))
    pid = header.index("patient_id")
    copy = [*body, [*body[0]]]
    copy[-1][pid] = "999"
    copy[-1][header.index("eye")] = "left"
    (work / "data" / "images" / "copy.jpg").write_bytes((work / "data" / body[0][image_col]).read_bytes())
    copy[-1][image_col] = "images/copy.jpg"
    rep = check_data(variant("same-image-two-patients", copy), progress=False)
    cases.append(("same image under two patients", "check-data",
                  f"flagged: {rep['same_image_two_patients'][0]}"))  # fmt: skip
    split = work / "split.csv"
    first = body[0][pid]
    with open(split, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "split"])
        for k, r in enumerate(body):
            w.writerow([r[image_col], "test" if r[pid] == first and k % 2 else "train"])
    try:
        read_split(split, load_dataset(base))
        text = "accepted"
    except DataError as e:
        text = f"error: `{str(e).replace(str(work) + '/', '')}`"
    cases.append(("split file with a patient in two splits", "train --split", text))
    no_label = [[r[i] for i in range(len(r)) if i != label_col] for r in body]
    cases.append(("no `label` column", "train (data loading)",
                  load(variant("no-label-column", no_label, [h for h in header if h != "label"]))))  # fmt: skip
    return cases


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = write_dataset(work / "train", patients=12)
        cfg = preset("quick", model="tiny-cnn", image_size=48, epochs=1, batch_size=8, precision="fp32")
        checkpoint = train(cfg, manifest, work / "run", progress=False, cache_dir=work / "cache")
        (work / "corpus").mkdir()
        files = image_corpus(work / "corpus")
        screener = Screener(checkpoint, workers=1, device="cpu")
        print("| input | `eyescreen predict` | `eyescreen serve` (POST /v1/predict) |")
        print("|---|---|---|")
        for name, path in files.items():
            print(f"| {name} | {outcome_predict(path, checkpoint, work)} | {outcome_serve(path, screener)} |")
        print("\n| messy data | command | outcome |")
        print("|---|---|---|")
        for case, command, outcome in manifest_cases(work / "m"):
            print(f"| {case} | {command} | {outcome} |")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    print(f"\ncommit {commit.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
