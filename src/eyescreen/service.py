"""Screening one patient from uploaded bytes: the part of `eyescreen serve` that knows no HTTP.

The model is loaded once; `workers` copies of it are handed out one per request, so Grad-CAM's hooks
and gradients of one request never touch another's. Uploads are checked by content (magic bytes),
written under server-chosen names to a private temporary folder that is removed after the request,
and read by the same code as training (EXIF, DICOM, decompression-bomb guard, field of view).
"""

from __future__ import annotations

import base64
import copy
import io
import itertools
import queue
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .calibrate import class_weights, decide, eye_calibration
from .checkpoint import load_model
from .ensemble import model_name
from .explain import compute_cams, compute_pair_cams, overlay_rgb
from .fellow import stored_weight
from .inference import resolve_device, resolve_precision
from .model_card import card_lines, describe_checkpoint
from .models import takes_both_eyes
from .predict_pairs import SIDES, calibrated, decisive_views, predict_views
from .preprocess import ImageError, Preprocessing, Views, cropped_fundus, enhance

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PER_SIDE = 4  # photographs of one eye in one request: two fields per eye is a common protocol

# Decided from the first bytes of the content, never from the file name the client sent.
_SIGNATURES = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"BM", ".bmp"),
)
SUPPORTED = "JPEG, PNG, TIFF, BMP, WebP or DICOM"


class UploadError(ValueError):
    """A problem with one uploaded file; `status` is the HTTP status that describes it."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def sniff(data: bytes) -> str | None:
    """The file suffix for the image type `data` holds, or None when it is not a supported image."""
    for magic, suffix in _SIGNATURES:
        if data.startswith(magic):
            return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[128:132] == b"DICM":
        return ".dcm"
    return None


@dataclass
class Upload:
    side: str  # right | left
    filename: str  # as the client named it: shown in messages, never used as a path
    data: bytes


def png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Screener:
    """A loaded checkpoint that screens one patient (one or two eyes) per call; thread-safe."""

    def __init__(self, checkpoint: str | Path, workers: int = 2, device: str = "auto",
                 precision: str = "auto", max_upload_bytes: int = MAX_UPLOAD_BYTES):  # fmt: skip
        self.device = resolve_device(device)
        model, meta = load_model(checkpoint, self.device)
        self.checkpoint, self.meta = Path(checkpoint), meta
        self.classes, self.norm = meta["classes"], meta["normalization"]
        self.prep = Preprocessing(**meta["preprocessing"])
        self.precision = resolve_precision(precision, self.device)
        self.binocular = takes_both_eyes(meta["model"])
        calibration = meta.get("calibration", {})
        self.temperature = calibration.get("temperature", 1.0)
        self.weights = class_weights(calibration)
        self.referable = calibration.get("referable")
        eye = eye_calibration(calibration)  # a both-eye model's eyes have their own; a single eye, the same
        self.eye_temperature, self.eye_weights = eye.get("temperature", 1.0), class_weights(eye)
        self.eye_referable = eye.get("referable")
        self.fellow_weight = stored_weight(calibration)
        normal = self.referable["normal_class"] if self.referable else "normal"
        self.normal = self.classes.index(normal) if normal in self.classes else None
        # What the page's readers may know of the model: no file paths of this machine.
        self.about = card_lines(describe_checkpoint(checkpoint, fingerprints=False), paths=False)
        self.max_upload_bytes = max_upload_bytes
        self.workers = workers
        self._models: queue.Queue = queue.Queue()
        for k in range(workers):
            self._models.put(model if k == 0 else copy.deepcopy(model))

    def describe(self) -> dict:
        return {
            "model": model_name(self.meta["model"]),
            "classes": self.classes,
            "input_size": self.prep.image_size,
            "both_eye_model": self.binocular,
            "calibrated": "temperature" in self.meta.get("calibration", {}),
            "referable_threshold": self.referable["threshold"] if self.referable else None,
            "fellow_eye_weight": self.fellow_weight,  # with both eyes sent, each eye's blend with the other
            "checkpoint": self.checkpoint.name,
            "about": self.about,
        }

    def check(self, upload: Upload) -> str:
        """The upload's suffix, or an UploadError saying what is wrong with it."""
        label = f"{upload.side} eye ({upload.filename or 'unnamed'})"
        if not upload.data:
            raise UploadError(f"{label}: empty file", 400)
        if len(upload.data) > self.max_upload_bytes:
            raise UploadError(
                f"{label}: {len(upload.data) / 2**20:.1f} MB is over the "
                f"{self.max_upload_bytes / 2**20:.0f} MB upload limit "
                "(raised with `eyescreen serve --max-upload-mb`)",
                413,
            )
        suffix = sniff(upload.data)
        if suffix is None:
            raise UploadError(f"{label}: not a supported image type ({SUPPORTED} expected)", 415)
        return suffix

    def _read(self, uploads: list[Upload]) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        """(what a person sees, what the model sees) per upload, via a private temporary folder, and
        warnings (a photograph that may not show a fundus)."""
        shown, model_inputs, warnings = [], [], []
        with tempfile.TemporaryDirectory(prefix="eyescreen-upload-") as private:
            for k, upload in enumerate(uploads):
                path = Path(private) / f"{k}-{upload.side}{self.check(upload)}"
                path.write_bytes(upload.data)
                label = f"{upload.side} eye ({upload.filename or 'unnamed'})"
                notes: list[str] = []
                try:
                    view = cropped_fundus(path, self.prep.image_size, notes)
                except ImageError as e:
                    raise UploadError(str(e).replace(str(path), label), 422) from None
                warnings += [note.replace(str(path), label) for note in notes]
                shown.append(view)
                model_inputs.append(enhance(view.copy(), self.prep.enhance))
        return shown, model_inputs, warnings

    def screen(self, uploads: list[Upload], explain: bool = False, method: str = "gradcam") -> dict:
        """One patient: one or more photographs of either eye or both. With several of a side (two fields
        per eye), every right-left combination is screened and the patient takes the one with the higher
        disease score, as `predict --pairs` does; each other photograph is reported beside it."""
        if not uploads:
            raise UploadError("no image: send a 'right' and/or a 'left' eye photograph", 400)
        sides = [u.side for u in uploads]
        if not set(sides) <= set(SIDES):
            raise UploadError("send each photograph as 'right' or 'left'", 400)
        for side in SIDES:
            if sides.count(side) > MAX_PER_SIDE:
                raise UploadError(
                    f"at most {MAX_PER_SIDE} photographs of one eye ({sides.count(side)} {side})", 400
                )
        shown, inputs, warnings = self._read(uploads)
        per_side = [[k for k, s in enumerate(sides) if s == side] or [-1] for side in SIDES]
        index = torch.tensor(list(itertools.product(*per_side)), dtype=torch.long)
        photos = torch.stack([torch.from_numpy(array).permute(2, 0, 1) for array in inputs])
        views = Views(photos, index, np.zeros(len(index), dtype=int), [], [], [])
        model = self._models.get()
        try:
            eyes, patient, driver = self._predict(model, views)
            v = decisive_views(patient, views.owner, 1, self.normal)[0]
            # each photograph as seen beside the decisive photograph of the other side
            seen_in = {int(k): (u, j) for u, row in enumerate(index) for j, k in enumerate(row)
                       if k >= 0 and (row[1 - j] == index[v, 1 - j])}  # fmt: skip
            decided = self._decision(patient[v], self.weights, self.referable)
            maps = self._maps(model, views, eyes, seen_in, decided, method) if explain else {}
        finally:
            self._models.put(model)
        result = {**self.describe(), "eyes": {}, "patient": decided, "warnings": warnings}
        result["patient"]["driven_by"] = SIDES[int(driver[v])]
        for k in sorted(seen_in, key=lambda k: (k not in index[v].tolist(), k)):  # the decisive ones first
            u, j = seen_in[k]
            entry = self._decision(eyes[u, j], self.eye_weights, self.eye_referable)
            entry["filename"] = uploads[k].filename
            if explain:
                entry["image_png"] = png_base64(shown[k])
                entry["overlay_png"] = png_base64(overlay_rgb(shown[k], maps[k]))
                entry["explained_class"] = entry["predicted"] if not self.binocular else decided["predicted"]
            if SIDES[j] in result["eyes"]:
                result["eyes"][SIDES[j]]["other_photographs"].append(entry)
            else:
                result["eyes"][SIDES[j]] = {**entry, "other_photographs": []}
        if explain:
            result["explanation"] = {"method": method}
        return result

    def _predict(self, model, views: Views):
        """Calibrated eye [V, 2, K] and patient [V, K] probabilities, and the driving eye, of every view."""
        eyes, patient, driver = predict_views(model, views, self.binocular, self.norm, self.device,
                                              self.precision, self.normal, self.fellow_weight)  # fmt: skip
        return (*calibrated(eyes, patient, self.eye_temperature, self.temperature), driver)

    def _decision(self, prob: np.ndarray, weights, referable) -> dict:
        """The class the decision rule names, the probabilities, and the referable flag."""
        k = int(decide(prob, weights))
        out = {
            "predicted": self.classes[k],
            "probability": float(prob[k]),
            "probabilities": {c: float(p) for c, p in zip(self.classes, prob, strict=True)},
            "referable": None,
        }
        if referable and self.normal is not None:
            out["referable"] = bool(1.0 - prob[self.normal] > referable["threshold"])
        return out

    def _maps(self, model, views: Views, eyes, seen_in: dict, decided: dict, method) -> dict[int, np.ndarray]:
        """Grad-CAM per photograph: of its own decision (single-eye model), or of the patient decision in
        the view that holds it (both-eye model, whose fusion sees both eyes at once)."""
        if self.binocular:
            used = sorted({u for u, _ in seen_in.values()})
            target = self.classes.index(decided["predicted"])
            cams = compute_pair_cams(model, views.images[used], views.mask[used], self.norm["mean"],
                                     self.norm["std"], method, targets=[target] * len(used))  # fmt: skip
            return {k: cams[used.index(u)][j] for k, (u, j) in seen_in.items()}
        order = sorted(seen_in)
        targets = [int(decide(eyes[seen_in[k]], self.eye_weights)) for k in order]
        cams = compute_cams(model, views.photos[order], self.norm["mean"], self.norm["std"], method,
                            targets=targets)  # fmt: skip
        return dict(zip(order, cams, strict=True))
