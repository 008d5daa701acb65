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
import queue
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .calibrate import apply_temperature, class_weights, decide, eye_calibration
from .checkpoint import load_model
from .ensemble import model_name
from .explain import compute_cams, compute_pair_cams, overlay_rgb
from .fellow import stored_weight
from .inference import resolve_device, resolve_precision
from .model_card import card_lines, describe_checkpoint
from .models import takes_both_eyes
from .predict_pairs import SIDES, patient_predictions
from .preprocess import ImageError, Preprocessing, cropped_fundus, enhance

MAX_UPLOAD_BYTES = 20 * 1024 * 1024

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
            for upload in uploads:
                path = Path(private) / f"{upload.side}{self.check(upload)}"
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
        if not uploads:
            raise UploadError("no image: send a 'right' and/or a 'left' eye photograph", 400)
        sides = [u.side for u in uploads]
        if len(set(sides)) != len(sides) or not set(sides) <= set(SIDES):
            raise UploadError("send at most one 'right' and one 'left' eye photograph", 400)
        shown, inputs, warnings = self._read(uploads)
        size = self.prep.image_size
        images = torch.zeros((1, 2, 3, size, size), dtype=torch.uint8)
        mask = torch.zeros((1, 2), dtype=torch.bool)
        for side, array in zip(sides, inputs, strict=True):
            images[0, SIDES.index(side)] = torch.from_numpy(array).permute(2, 0, 1)
            mask[0, SIDES.index(side)] = True
        model = self._models.get()
        try:
            eyes, patient, driver = patient_predictions(
                model, images, mask, self.binocular, self.norm, self.device, self.precision, self.normal,
                self.fellow_weight,
            )  # fmt: skip
            eyes = apply_temperature(eyes.reshape(-1, len(self.classes)), self.eye_temperature).reshape(
                eyes.shape
            )
            patient = apply_temperature(patient, self.temperature)
            maps = self._maps(model, images, mask, eyes[0], patient[0], method) if explain else {}
        finally:
            self._models.put(model)
        result = {
            **self.describe(),
            "eyes": {},
            "patient": self._decision(patient[0], self.weights, self.referable),
            "warnings": warnings,
        }
        result["patient"]["driven_by"] = SIDES[int(driver[0])]
        for upload, view in zip(uploads, shown, strict=True):
            side = upload.side
            entry = self._decision(eyes[0, SIDES.index(side)], self.eye_weights, self.eye_referable)
            entry["filename"] = upload.filename
            if explain:
                entry["image_png"] = png_base64(view)
                entry["overlay_png"] = png_base64(overlay_rgb(view, maps[side]))
                entry["explained_class"] = (
                    entry["predicted"] if not self.binocular else result["patient"]["predicted"]
                )
            result["eyes"][side] = entry
        if explain:
            result["explanation"] = {"method": method}
        return result

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

    def _maps(self, model, images, mask, eye_prob, patient_prob, method) -> dict[str, np.ndarray]:
        """Grad-CAM per present eye: of each eye's own decision (single-eye model) or of the patient
        decision (both-eye model, whose fusion sees both eyes at once)."""
        if self.binocular:
            cams = compute_pair_cams(model, images, mask, self.norm["mean"], self.norm["std"], method,
                                     targets=[int(decide(patient_prob, self.weights))])[0]  # fmt: skip
            return {side: cams[j] for j, side in enumerate(SIDES) if mask[0, j]}
        present = [j for j in range(2) if mask[0, j]]
        cams = compute_cams(model, images[0, present], self.norm["mean"], self.norm["std"], method,
                            targets=[int(decide(eye_prob[j], self.eye_weights)) for j in present])  # fmt: skip
        return {SIDES[j]: cam for j, cam in zip(present, cams, strict=True)}
