"""Your own images as a dataset: ``DIR/train/<class>/<image>`` and
``DIR/test/<class>/<image>``, one folder per class (as torchvision's ImageFolder lays
them out), read with Pillow.

Classes are the training folders' names in sorted order. Images must share one size;
they are read as greyscale when every one of them is, as RGB otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from prunelab.data import DataError, RawData, validate

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GREY = {"1", "L", "LA"}  # 8-bit (or 1-bit) modes read as one channel, alpha dropped
DEEP = {"I", "I;16", "I;16B", "I;16L", "F"}  # 16- and 32-bit ones: converting would clip
UNREADABLE = (OSError, UnidentifiedImageError, Image.DecompressionBombError)
LAYOUT = "DIR/train/<class>/<images> and DIR/test/<class>/<images>"


def read_class_folders(root: str | Path) -> RawData:
    """The training and test images under ``root`` as uint8 arrays [N, C, H, W], with
    labels by class folder."""
    root = Path(root)
    parts = {part: root / part for part in ("train", "test")}
    for part, folder in parts.items():
        if not folder.is_dir():
            raise DataError(f"no {part}/ folder in {root}: a folder dataset is {LAYOUT}")
    classes = sorted(d.name for d in parts["train"].iterdir() if _is_class(d))
    if not classes:
        raise DataError(f"{parts['train']} holds no class folders ({LAYOUT})")
    unknown = sorted({d.name for d in parts["test"].iterdir() if _is_class(d)} - set(classes))
    if unknown:
        raise DataError(f"{parts['test']}: classes {', '.join(unknown)} have no training images")
    files = {part: _files(folder, classes) for part, folder in parts.items()}
    headers = {path: _header(path) for listed in files.values() for path, _ in listed}
    sizes = {size for _, size in headers.values()}
    if len(sizes) > 1:
        first = next(iter(headers))
        odd = next(p for p, (_, size) in headers.items() if size != headers[first][1])
        raise DataError(f"images differ in size: {first} is {headers[first][1]}, {odd} is "
                        f"{headers[odd][1]} (resize them to one size first)")  # fmt: skip
    mode = "L" if all(m in GREY for m, _ in headers.values()) else "RGB"
    arrays = {part: _read(listed, mode) for part, listed in files.items()}
    raw = RawData(*arrays["train"], *arrays["test"], classes=len(classes))
    validate(raw, str(root), len(classes))
    return raw


def _is_class(folder: Path) -> bool:
    return folder.is_dir() and not folder.name.startswith(".")  # not .ipynb_checkpoints


def _files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    listed = [
        (path, label)
        for label, name in enumerate(classes) if (folder / name).is_dir()
        for path in sorted((folder / name).iterdir()) if path.suffix.lower() in SUFFIXES
    ]  # fmt: skip
    if not listed:
        raise DataError(f"{folder}: no images ({', '.join(sorted(SUFFIXES))}) in its class "
                        "folders")  # fmt: skip
    return listed


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    try:
        with Image.open(path) as image:
            mode, size = image.mode, image.size
    except UNREADABLE as err:
        raise DataError(f"{path}: not a readable image ({err})") from err
    if mode in DEEP:
        raise DataError(f"{path}: a {mode} image (16 or 32 bits per pixel); convert the "
                        "images to 8 bits first")  # fmt: skip
    return mode, size


def _read(listed: list[tuple[Path, int]], mode: str) -> tuple[np.ndarray, np.ndarray]:
    images = []
    for path, _ in listed:
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert(mode), dtype=np.uint8)
        except UNREADABLE as err:
            raise DataError(f"{path}: not a readable image ({err})") from err
        images.append(pixels[None] if mode == "L" else pixels.transpose(2, 0, 1))
    return np.stack(images), np.array([label for _, label in listed], dtype=np.int64)
