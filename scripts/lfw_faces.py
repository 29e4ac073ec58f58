"""Write the aligned faces of scikit-image's ``lfw_subset`` as PNG files plus a parts file with
fixed eye and nose boxes, the demo and test data of ``zfprobe correspondence``.

``skimage.data.lfw_subset()`` holds 200 grey 25x25 crops; the first 100 are faces, aligned so
that the eyes and the nose sit at about the same pixels in every one (the boxes below were read
off the mean of the 100 faces: eyes on row 8, at columns 6-7 and 14-15; the nose tip on rows
12-14 around column 10-11). ``left_eye`` / ``right_eye`` are as seen in the image (the
subject's right eye is ``left_eye``).

    python scripts/lfw_faces.py OUT_DIR [N]      # N faces (default 100) + OUT_DIR/parts.json
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

# [x0, y0, x1, y1] in the 25x25 file's pixels (x1, y1 exclusive)
BOXES = {"left_eye": [4, 6, 10, 11], "right_eye": [12, 6, 18, 11], "nose": [8, 10, 14, 16]}


def write_faces(out_dir: str, n: int = 100) -> tuple[list[str], str]:
    """The first ``n`` faces as ``face_000.png`` ... and ``parts.json``; returns (paths, parts path)."""
    from PIL import Image
    from skimage.data import lfw_subset

    faces = lfw_subset()[:min(int(n), 100)]
    os.makedirs(out_dir, exist_ok=True)
    paths, parts = [], {}
    for i, face in enumerate(faces):
        name = f"face_{i:03d}.png"
        path = os.path.join(out_dir, name)
        Image.fromarray(np.uint8(np.round(face * 255))).save(path)
        paths.append(path)
        parts[name] = BOXES
    parts_path = os.path.join(out_dir, "parts.json")
    with open(parts_path, "w") as f:
        json.dump(parts, f, indent=1)
    return paths, parts_path


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "lfw_faces"
    paths, parts_path = write_faces(out, int(sys.argv[2]) if len(sys.argv) > 2 else 100)
    print(f"{len(paths)} faces and {parts_path}")
