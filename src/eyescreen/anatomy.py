"""Where does the model look? Locate the optic disc and the macula and measure CAM mass on each.

Heuristics for colour fundus photographs, on the preprocessed square image:
* optic disc: the brightest compact region of the field of view (smoothed luminance maximum);
* macula: the darkest smoothed point within one disc diameter of the spot 2.5 disc diameters
  temporal of the disc (towards the centre of the field of view, horizontally).
The disc diameter is taken as a fixed share of the field-of-view diameter (about 1/7 on 45° photos).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .preprocess import field_of_view

DISC_DIAMETER_FRACTION = 0.14  # disc diameter / field-of-view diameter
# Raise when `locate` changes: cached disc positions (discs.py) are keyed by it.
LOCATOR_VERSION = 2


@dataclass(frozen=True)
class Landmarks:
    disc: tuple[float, float]  # (row, col)
    macula: tuple[float, float]
    disc_diameter: float
    fov: np.ndarray  # boolean mask

    def masks(self) -> dict[str, np.ndarray]:
        """Disc (radius 0.75 DD: the disc and a margin), macula (radius 1 DD), and the rest of the field."""
        h, w = self.fov.shape
        rows, cols = np.mgrid[:h, :w]

        def disk(centre, radius):
            return ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2) & self.fov

        disc = disk(self.disc, 0.75 * self.disc_diameter)
        macula = disk(self.macula, self.disc_diameter) & ~disc
        return {"disc": disc, "macula": macula, "rest": self.fov & ~disc & ~macula}


def _blur(values: np.ndarray, inside: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the field of view only (normalised convolution): the black outside does not
    darken the local mean near the rim, which made the rim's glare look like a bright blob."""
    weight = ndimage.gaussian_filter(inside, sigma)
    return ndimage.gaussian_filter(values * inside, sigma) / np.maximum(weight, 1e-3)


def locate(image: np.ndarray) -> Landmarks:
    """Find disc and macula in a uint8 RGB (H, W, 3) fundus image."""
    fov = field_of_view(image)
    rows, cols = np.nonzero(fov)
    if len(rows) == 0:
        raise ValueError("no field of view: cannot locate disc and macula")
    diameter = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    dd = DISC_DIAMETER_FRACTION * diameter
    inner = ndimage.binary_erosion(fov, iterations=max(1, int(0.3 * dd)))  # ignore glare along the rim
    lum = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    inside = fov.astype(np.float32)
    # Difference of Gaussians: a bright blob about one disc across stands out; broad glare does not.
    blob = _blur(lum, inside, max(1.0, dd / 4)) - _blur(lum, inside, max(2.0, dd))
    disc = np.unravel_index(np.argmax(np.where(inner, blob, -np.inf)), blob.shape)
    centre_col = (cols.min() + cols.max()) / 2
    direction = 1.0 if centre_col >= disc[1] else -1.0  # temporal = towards the centre
    guess = (disc[0], disc[1] + direction * 2.5 * dd)
    r, c = np.mgrid[: fov.shape[0], : fov.shape[1]]
    window = ((r - guess[0]) ** 2 + (c - guess[1]) ** 2 <= dd**2) & inner
    if window.any():
        dark = _blur(lum, inside, max(1.0, dd / 3))
        macula = np.unravel_index(np.argmin(np.where(window, dark, np.inf)), dark.shape)
    else:
        macula = (int(round(guess[0])), int(round(np.clip(guess[1], 0, fov.shape[1] - 1))))
    return Landmarks(tuple(map(float, disc)), tuple(map(float, macula)), float(dd), fov)


def cam_shares(cam: np.ndarray, landmarks: Landmarks) -> dict[str, float]:
    """Share of the map's mass inside the field of view that falls on disc, macula and the rest,
    and the share of the field-of-view area each covers (the value for a uniform map)."""
    masks = landmarks.masks()
    total_mass = float(cam[landmarks.fov].sum()) or 1.0
    total_area = float(landmarks.fov.sum()) or 1.0
    out = {}
    for name, m in masks.items():
        out[f"{name}_mass"] = float(cam[m].sum()) / total_mass
        out[f"{name}_area"] = float(m.sum()) / total_area
    return out


def eye_shares(images: np.ndarray, cams: np.ndarray) -> list[dict[str, float] | None]:
    """`cam_shares` for each eye; None where the landmarks cannot be found."""
    out = []
    for image, cam in zip(images, cams, strict=True):
        try:
            out.append(cam_shares(cam, locate(image)))
        except ValueError:
            out.append(None)
    return out


def summarise_shares(
    per_eye: list[dict[str, float] | None],
    labels: list[str],
    classes: list[str],
    patients: list[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """Mean mass and area shares per true class (eyes without landmarks are skipped). With `patients`,
    each mass share gets a 95% interval resampling whole patients (both eyes of one are correlated)."""
    from .metrics import patient_resamples

    rows = []
    for c in classes:
        idx = [
            i
            for i, (s, label) in enumerate(zip(per_eye, labels, strict=True))
            if s is not None and label == c
        ]
        if not idx:
            continue
        keys = list(per_eye[idx[0]].keys())
        values = np.array([[per_eye[i][k] for k in keys] for i in idx])
        row = {"class": c, "n": len(idx)} | {k: float(v) for k, v in zip(keys, values.mean(0), strict=True)}
        if patients is not None:
            groups = np.array([patients[i] for i in idx])
            row["patients"] = len(set(groups))
            rng = np.random.default_rng(seed)
            means = np.array([values[r].mean(0) for r in patient_resamples(groups, n_resamples, rng)])
            for j, k in enumerate(keys):
                if k.endswith("_mass"):
                    row[f"{k}_ci"] = [
                        float(np.quantile(means[:, j], 0.025)),
                        float(np.quantile(means[:, j], 0.975)),
                    ]
        rows.append(row)
    return rows


def shares_markdown(rows: list[dict], method: str) -> str:
    with_ci = any("disc_mass_ci" in r for r in rows)
    lines = [
        f"Share of {method} mass inside the field of view, per true class (map for the predicted class).",
        "In brackets: the share of the field-of-view area, i.e. what a uniform map would give"
        + ("; in square brackets: 95% interval, resampling patients." if with_ci else "."),
        "",
        "| class | "
        + ("eyes (patients)" if with_ci else "n")
        + " | optic disc | macula | rest of the fundus |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = []
        for k in ("disc", "macula", "rest"):
            ci = r.get(f"{k}_mass_ci")
            interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            cells.append(f"{r[f'{k}_mass']:.3f}{interval} ({r[f'{k}_area']:.3f})")
        n = f"{r['n']} ({r['patients']})" if "patients" in r else str(r["n"])
        lines.append(f"| {r['class']} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_shares(rows: list[dict], path, method: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    names = [r["class"] for r in rows]
    bottom = np.zeros(len(rows))
    for key, colour in (("disc", "#f4a261"), ("macula", "#2a9d8f"), ("rest", "#cccccc")):
        values = np.array([r[f"{key}_mass"] for r in rows])
        ax.bar(names, values, bottom=bottom, color=colour, label=key)
        areas = np.array([r[f"{key}_area"] for r in rows])
        ax.scatter(names, bottom + areas, marker="_", s=400, color="black")
        bottom += values
    ax.set(ylabel=f"share of {method} mass", ylim=(0, 1), title="Where the model looks (ticks: area share)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
