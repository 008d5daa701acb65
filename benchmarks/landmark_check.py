"""Contact sheet of the located optic disc (cyan) and macula (green) on the bundled sample, for a
visual check of the heuristics in eyescreen.anatomy.

    python benchmarks/landmark_check.py [OUT.png]

The README's count (disc right on 18 of 24 images) is from looking at this sheet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from eyescreen.anatomy import locate  # noqa: E402
from eyescreen.demo import sample_manifest  # noqa: E402
from eyescreen.preprocess import Preprocessing, preprocess_image  # noqa: E402


def main(out: Path) -> None:
    images = sorted((sample_manifest().parent / "images").glob("*.jpg"))
    chosen = images[1:48:3] + images[0:24:3]  # 24 images, both eyes represented
    fig, axes = plt.subplots(3, 8, figsize=(16, 6.6))
    for ax, path in zip(axes.ravel(), chosen, strict=False):
        image = preprocess_image(path, Preprocessing(224))
        marks = locate(image)
        ax.imshow(image)
        ax.set_title(path.name, fontsize=8)
        ax.axis("off")
        for centre, radius, colour in ((marks.disc, 0.75 * marks.disc_diameter, "cyan"),
                                       (marks.macula, marks.disc_diameter, "lime")):  # fmt: skip
            ax.add_patch(plt.Circle((centre[1], centre[0]), radius, fill=False, color=colour, lw=1.5))
    fig.tight_layout()
    fig.savefig(out, dpi=60)
    print(f"written {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "landmarks.png"))
