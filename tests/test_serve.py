"""`eyescreen serve`: the JSON API, upload safety, concurrency, and the page in a real browser."""

import base64
import io
import os
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from eyescreen import server as server_module
from eyescreen.config import preset
from eyescreen.server import create_app
from eyescreen.service import Screener, Upload, UploadError, sniff
from eyescreen.train import train

SAMPLE = resources.files("eyescreen") / "sample" / "images"


def jpeg_bytes(name: str) -> bytes:
    return (SAMPLE / name).read_bytes()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from synthetic import write_dataset

    root = tmp_path_factory.mktemp("serve")
    manifest = write_dataset(root / "data", patients=16)
    cfg = preset("quick", model="tiny-cnn", image_size=48, epochs=1, batch_size=8, precision="fp32")
    return train(cfg, manifest, root / "run", progress=False, cache_dir=root / "cache")


@pytest.fixture(scope="module")
def screener(checkpoint):
    return Screener(checkpoint, workers=2, device="cpu", max_upload_bytes=200_000)


@pytest.fixture(scope="module")
def client(screener):
    with TestClient(create_app(screener)) as c:
        yield c


def test_one_eye(client, screener):
    r = client.post("/v1/predict", files={"right": ("a.jpg", jpeg_bytes("1111_right.jpg"), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    eye = body["eyes"]["right"]
    assert set(body["eyes"]) == {"right"}
    assert list(eye["probabilities"]) == screener.classes
    assert sum(eye["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert eye["predicted"] == max(eye["probabilities"], key=eye["probabilities"].get)
    assert isinstance(eye["referable"], bool)  # the trained checkpoint carries an operating point
    assert body["patient"]["driven_by"] == "right"
    assert body["patient"]["probabilities"] == eye["probabilities"]
    assert "overlay_png" not in eye
    assert body["warnings"] == []


def test_a_photo_that_may_not_be_a_fundus_is_screened_with_a_warning(client, tmp_path):
    from synthetic import everyday_photo

    data = everyday_photo(tmp_path / "holiday.jpg").read_bytes()
    r = client.post("/v1/predict", files={"left": ("holiday.jpg", data, "image/jpeg")})
    assert r.status_code == 200
    (warning,) = r.json()["warnings"]
    assert warning.startswith("left eye (holiday.jpg): may not be a fundus photograph")


def test_two_eyes_with_explanations(client, screener):
    files = {
        "right": ("r.jpg", jpeg_bytes("1111_right.jpg"), "image/jpeg"),
        "left": ("l.jpg", jpeg_bytes("1111_left.jpg"), "image/jpeg"),
    }
    r = client.post("/v1/predict?explain=true", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["eyes"]) == {"right", "left"}
    size = screener.prep.image_size
    for eye in body["eyes"].values():
        for key in ("image_png", "overlay_png"):
            im = Image.open(io.BytesIO(base64.b64decode(eye[key])))
            assert im.format == "PNG" and im.size == (size, size)
        original = np.asarray(Image.open(io.BytesIO(base64.b64decode(eye["image_png"]))))
        overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(eye["overlay_png"]))))
        assert np.abs(original.astype(int) - overlay).mean() > 1  # the heatmap is drawn over it
    # The patient takes the eye with the higher disease probability.
    disease = {s: 1 - e["probabilities"]["normal"] for s, e in body["eyes"].items()}
    assert body["patient"]["driven_by"] == max(disease, key=disease.get)


@pytest.mark.parametrize(
    "files, status, words",
    [
        ({}, 400, "no image"),
        (
            {"right": ("notes.jpg", b"just some text, named like a photo", "image/jpeg")},
            415,
            "not a supported",
        ),
        ({"left": ("empty.png", b"", "image/png")}, 400, "empty file"),
        # JPEG magic bytes, then garbage: the type passes, decoding fails, the message names the upload.
        ({"right": ("broken.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 500, "image/jpeg")}, 422, "broken.jpg"),
        # A readable image with no fundus in it.
        ({"right": ("dark.png", None, "image/png")}, 422, "no fundus field of view"),
    ],
)
def test_bad_requests_get_a_clear_4xx(client, files, status, words):
    if "right" in files and files["right"][1] is None:
        buffer = io.BytesIO()
        Image.new("RGB", (200, 200)).save(buffer, format="PNG")
        files = {"right": ("dark.png", buffer.getvalue(), "image/png")}
    r = client.post("/v1/predict", files=files)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert words in detail
    assert tempfile.gettempdir() not in detail  # the server's private path never leaks


def test_too_big_is_refused(client):
    big = b"\xff\xd8\xff" + os.urandom(250_000)
    r = client.post("/v1/predict", files={"right": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413
    assert "upload limit (raised with `eyescreen serve --max-upload-mb`)" in r.json()["detail"]
    huge = b"\xff\xd8\xff" + os.urandom(700_000)  # over the whole-request limit: refused before parsing
    r = client.post("/v1/predict", files={"right": ("huge.jpg", huge, "image/jpeg")})
    assert r.status_code == 413
    assert "request too large" in r.json()["detail"] and "--max-upload-mb" in r.json()["detail"]


def test_type_comes_from_content_not_name():
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    assert sniff(png.getvalue()) == ".png"
    assert sniff(jpeg_bytes("1111_right.jpg")) == ".jpg"
    assert sniff(b"<svg xmlns='http://www.w3.org/2000/svg'/>") is None
    assert sniff(b"\x00" * 128 + b"DICM" + b"\x00" * 10) == ".dcm"


def test_health_and_openapi(client, screener):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["classes"] == screener.classes
    # how the model was trained and scored, for the page's readers, without this machine's paths
    about = "\n".join(health["about"])
    assert "recipe: preset " in about and "validation at that epoch (per eye): " in about
    assert str(screener.checkpoint.parent) not in about and "trained on" not in about
    spec = client.get("/openapi.json").json()
    assert "/v1/predict" in spec["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "Right eye" in page.text


def test_concurrent_requests_do_not_interfere(screener, tmp_path, monkeypatch):
    """Grad-CAM hooks live on a model copy per worker: results under load equal those one at a time,
    and every private upload folder is removed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    names = ["1111_right.jpg", "1111_left.jpg", "1168_left.jpg", "1168_right.jpg"]

    def run(name):
        r = screener.screen([Upload("right", name, jpeg_bytes(name))], explain=True)
        return r["eyes"]["right"]["probabilities"], r["eyes"]["right"]["overlay_png"]

    alone = [run(n) for n in names]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(run, names * 4))
    for k, (prob, overlay) in enumerate(together):
        assert prob == pytest.approx(alone[k % 4][0], abs=1e-6)
        assert overlay == alone[k % 4][1]
    assert not list(tmp_path.iterdir())


def test_screener_refuses_more_photographs_of_an_eye_than_it_combines(screener):
    data = jpeg_bytes("1111_right.jpg")
    with pytest.raises(UploadError, match="at most 4 photographs of one eye"):
        screener.screen([Upload("right", f"{k}.jpg", data) for k in range(5)])


def screened_with_several_fields(c, screener):
    """Two photographs of the right eye and one of the left, against each combination sent alone."""
    names = {"a.jpg": "1111_right.jpg", "b.jpg": "1168_right.jpg", "l.jpg": "1111_left.jpg"}
    files = [("right", ("a.jpg", jpeg_bytes(names["a.jpg"]), "image/jpeg")),
             ("right", ("b.jpg", jpeg_bytes(names["b.jpg"]), "image/jpeg")),
             ("left", ("l.jpg", jpeg_bytes(names["l.jpg"]), "image/jpeg"))]  # fmt: skip
    r = c.post("/v1/predict", params={"explain": "true"}, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    swapped = c.post("/v1/predict", files=[files[1], files[0], files[2]]).json()  # the order does not decide
    assert swapped["eyes"]["right"]["filename"] == body["eyes"]["right"]["filename"]
    alone = {}
    for right in ("a.jpg", "b.jpg"):
        pair = {"right": (right, jpeg_bytes(names[right]), "image/jpeg"), "left": files[2][1]}
        alone[right] = c.post("/v1/predict", files=pair).json()
    disease = {right: 1 - a["patient"]["probabilities"]["normal"] for right, a in alone.items()}
    decisive = max(disease, key=disease.get)
    assert body["eyes"]["right"]["filename"] == decisive
    assert body["patient"]["probabilities"] == pytest.approx(
        alone[decisive]["patient"]["probabilities"], abs=1e-5
    )
    assert body["patient"]["driven_by"] == alone[decisive]["patient"]["driven_by"]
    (other,) = body["eyes"]["right"]["other_photographs"]
    assert other["filename"] == ({"a.jpg", "b.jpg"} - {decisive}).pop() and other["overlay_png"]
    assert body["eyes"]["left"]["other_photographs"] == []
    return body, other, alone


def test_several_photographs_of_an_eye_are_screened_in_every_combination(client, screener):
    body, other, alone = screened_with_several_fields(client, screener)
    # a single-eye model: each photograph's own decision, as when it is sent alone beside the left eye
    assert other["probabilities"] == pytest.approx(alone[other["filename"]]["eyes"]["right"]["probabilities"],
                                                   abs=1e-5)  # fmt: skip
    assert other["explained_class"] == other["predicted"]


def test_serve_without_checkpoint_trains_the_demo_model_once(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_demo(run_dir):
        calls.append(run_dir)
        (tmp_path / "demo" / "report").mkdir(parents=True, exist_ok=True)
        (tmp_path / "demo" / "best.safetensors").write_bytes(b"x")
        (tmp_path / "demo" / "report" / "report.json").write_text("{}")  # the demo's last step

    monkeypatch.setattr("eyescreen.demo.run_demo", fake_demo)
    assert server_module.demo_checkpoint(tmp_path / "demo") == tmp_path / "demo" / "best.safetensors"
    assert "no demo model" in capsys.readouterr().out
    server_module.demo_checkpoint(tmp_path / "demo")
    assert len(calls) == 1

    # a demo interrupted after its first checkpoint, before its report: trained again, not served half-done
    (tmp_path / "demo" / "report" / "report.json").unlink()
    server_module.demo_checkpoint(tmp_path / "demo")
    assert len(calls) == 2 and "an unfinished demo run" in capsys.readouterr().out


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(screener):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(screener), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_page_in_a_real_browser(live_server, screener, tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    right = tmp_path / "right.jpg"
    right.write_bytes(jpeg_bytes("1111_right.jpg"))
    text = tmp_path / "letter.jpg"
    text.write_text("not a photograph")
    shots = os.environ.get("EYESCREEN_SCREENSHOTS", str(tmp_path))
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],  # fmt: skip
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1100})
            page.goto(live_server)
            page.wait_for_selector("text=classes:")
            page.click("#about summary")
            assert "recipe: preset " in page.locator("#about").inner_text()
            page.set_input_files("#file-right", str(right))
            page.click("#screen")
            page.wait_for_selector("#eye-right img.heatmap", state="visible", timeout=60_000)
            assert page.locator("#eye-right .bar").count() == len(screener.classes)
            assert page.locator("#patient .decision").inner_text().startswith("Patient:")
            assert page.locator("#eye-right img.original").is_visible()
            width = page.locator("#eye-right img.heatmap").evaluate("img => img.naturalWidth")
            assert width == screener.prep.image_size  # the overlay image really decoded
            assert page.locator("#download").is_visible()
            page.screenshot(path=os.path.join(shots, "serve-page.png"), full_page=True)
            with page.expect_download() as download:
                page.click("#download")
            report = download.value.path().read_text()
            assert "eyescreen report" in report and "data:image/png;base64," in report

            # A class named by the decision rule, not the most probable one, says which is.
            answer = httpx.post(
                live_server + "v1/predict", files={"right": ("r.jpg", right.read_bytes())}
            ).json()
            probabilities = answer["eyes"]["right"]["probabilities"]
            top, least = max(probabilities, key=probabilities.get), min(probabilities, key=probabilities.get)
            shown_rule = answer["eyes"]["right"]["predicted"] != top
            assert page.locator("#eye-right .rule").count() == shown_rule  # the page before: as the rule said
            weights = np.ones(len(screener.classes))
            weights[screener.classes.index(least)] = 1e6
            monkeypatch.setattr(screener, "eye_weights", weights)  # the eyes' rule (a single-eye model's)
            page.click("#clear")
            page.set_input_files("#file-right", str(right))
            page.click("#screen")
            page.wait_for_selector("#eye-right .rule", timeout=60_000)
            note = page.locator("#eye-right .rule").inner_text()
            assert (
                note.startswith(f"most probable: {top} (")
                and f"{least} is named by the decision rule" in note
            )
            assert page.locator("#eye-right .decision strong").inner_text() == least

            page.click("#clear")
            page.set_input_files("#file-left", str(text))
            page.click("#screen")
            page.wait_for_selector("#error", state="visible")
            assert "not a supported image type" in page.locator("#error").inner_text()

            # two fields of the right eye: both screened, the other one shown under the decisive one
            second = tmp_path / "right_2.jpg"
            second.write_bytes(jpeg_bytes("1168_right.jpg"))
            page.click("#clear")
            page.set_input_files("#file-right", [str(right), str(second)])
            assert page.locator("#drop-right .thumbs img").count() == 2
            page.click("#screen")
            page.wait_for_selector("#eye-right-other-1 img.heatmap", state="visible", timeout=60_000)
            card = page.locator("#eye-right").inner_text()
            assert "2 photographs of this eye" in card and "other photographs of the right eye" in card
            main_name = page.locator("#eye-right > p.note").first.inner_text()
            other_name = page.locator("#eye-right-other-1 p.note").first.inner_text()
            assert {main_name, other_name} == {"right.jpg", "right_2.jpg"}
            page.screenshot(path=os.path.join(shots, "serve-page-two-fields.png"), full_page=True)
        finally:
            browser.close()


def test_a_both_eye_checkpoint_screens_a_patient_with_one_or_two_eyes(tmp_path):
    from synthetic import write_dataset

    manifest = write_dataset(tmp_path / "data", patients=16)
    cfg = preset("quick", model="tiny-cnn-binocular", image_size=48, epochs=2, batch_size=4, precision="fp32")
    best = train(cfg, manifest, tmp_path / "run", progress=False, cache_dir=tmp_path / "cache")
    screener = Screener(best, workers=1, device="cpu", max_upload_bytes=200_000)
    with TestClient(create_app(screener)) as c:
        assert c.get("/health").json()["both_eye_model"] is True
        both = {side: ("x.jpg", jpeg_bytes(f"1111_{side}.jpg"), "image/jpeg") for side in ("right", "left")}
        for files in (both, {"left": both["left"]}):
            r = c.post("/v1/predict", params={"explain": "true"}, files=files)
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body["eyes"]) == set(files) and body["patient"]["predicted"] in screener.classes
            assert all(eye["overlay_png"] for eye in body["eyes"].values())  # a heatmap for each eye sent
            total = sum(body["patient"]["probabilities"].values())
            assert total == pytest.approx(1.0, abs=1e-5)
        body, other, _ = screened_with_several_fields(c, screener)
        assert other["explained_class"] == body["patient"]["predicted"]  # the patient decision, in its pair
