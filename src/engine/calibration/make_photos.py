"""Makes the calibration photos compiled into the engine (src/engine/calibration/photos/).

Each source photo is converted to RGB, downscaled so its short side is 256 px (Lanczos), and
saved as a baseline JPEG of quality 90 without metadata: large enough for the 224 px centre crop
of the model's preprocessing, small enough that the whole set stays under 300 KB in the binary.

Usage: python make_photos.py SOURCE_DIR
SOURCE_DIR holds the originals (scikit-image 0.26 data and Pillow 13.0 test images; see
LICENSES.md for where each comes from and its licence). Needs Pillow.
"""

import sys
from pathlib import Path

from PIL import Image

# (source file, name in the set): varied subjects, colour and grayscale, faces, textures.
PHOTOS = [
    ("skimage_chelsea.png", "cat.jpg"),
    ("skimage_coffee.png", "coffee.jpg"),
    ("skimage_astronaut.png", "astronaut.jpg"),
    ("skimage_rocket.jpg", "rocket.jpg"),
    ("skimage_camera.png", "cameraman.jpg"),
    ("skimage_coins.png", "coins.jpg"),
    ("skimage_brick.png", "brick.jpg"),
    ("pillow_flower.jpg", "flower.jpg"),
]

SHORT_SIDE = 256


def main() -> None:
    source = Path(sys.argv[1])
    out = Path(__file__).resolve().parent / "photos"
    out.mkdir(exist_ok=True)
    for src, name in PHOTOS:
        img = Image.open(source / src).convert("RGB")
        scale = SHORT_SIDE / min(img.size)
        if scale < 1:
            size = (round(img.width * scale), round(img.height * scale))
            img = img.resize(size, Image.LANCZOS)
        img.save(out / name, "JPEG", quality=90, optimize=True)
        print(f"{name}: {img.size[0]}x{img.size[1]}, {(out / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
