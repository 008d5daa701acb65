"""How often the "may not be a fundus photograph" warning fires on real fundus photographs.

python benchmarks/fundus_warning_check.py ../shared/datasets/odir5k-256/images --limit 2500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eyescreen.data import list_images
from eyescreen.preprocess import ImageError, crop_to_field, read_image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="folders or files of fundus photographs")
    parser.add_argument("--limit", type=int, default=2500, help="the first N files in name order")
    args = parser.parse_args()
    files = sorted(list_images([Path(p) for p in args.inputs]))[: args.limit]
    warned, unreadable = [], 0
    for path in files:
        notes: list[str] = []
        try:
            crop_to_field(read_image(path), path, notes)
        except ImageError:
            unreadable += 1
        warned += notes
    print(f"{len(files)} files, {unreadable} unreadable, warned on {len(warned)}:")
    print("\n".join(warned))
    return 0


if __name__ == "__main__":
    sys.exit(main())
