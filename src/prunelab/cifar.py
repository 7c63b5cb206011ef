"""CIFAR-10 and CIFAR-100 from their python archives (a tar.gz of pickled batches).

The archive is read in place, member by member, never extracted, and its pickles
may hold plain arrays, lists and bytes only (``ArrayUnpickler``). Sources, in
order: the archive (or its unpacked folder) in a directory the user names; the
local cache; a download, kept only once its MD5 matches the published one.
"""

from __future__ import annotations

import http.client
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from prunelab.data import (
    Archive,
    DataError,
    DatasetSpec,
    RawData,
    cache_dir,
    download_checked,
    validate,
)
from prunelab.safe_pickle import ArrayUnpickler

MAX_MEMBER = 256 * 2**20  # bytes: CIFAR-100's training batch is about 155 MB


def find_archive(
    spec: DatasetSpec, *, data_dir: str | Path | None = None, download: bool = True
) -> tuple[RawData, str]:
    """The raw arrays of an archive dataset and where they came from."""
    archive = spec.archive
    if data_dir is not None:
        for place in _places(Path(data_dir), archive):
            if place.exists():
                return read_archive(place, spec), str(place)
        raise DataError(
            f"no {spec.name} in {data_dir}: put {archive.file} there (or the folder it "
            f"unpacks to, {_top(archive)})"
        )
    cached = cache_dir() / spec.name / archive.file
    if cached.is_file():
        return read_archive(cached, spec), str(cached)
    if not download:
        raise DataError(f"{spec.name} not found and downloading is switched off. {_how(spec)}")
    try:
        url = spec.url + archive.file
        return read_archive(download_checked(url, cached, archive.md5), spec), url
    except (OSError, http.client.HTTPException) as err:
        raise DataError(f"{spec.name}: download of {spec.url}{archive.file} failed ({err}). "
                        f"{_how(spec)}") from err  # fmt: skip


def _top(archive: Archive) -> str:
    return archive.train[0].split("/")[0]


def _places(folder: Path, archive: Archive) -> list[Path]:
    """The archive, the folder it unpacks to, or that folder itself."""
    top = _top(archive)
    return [folder / archive.file, folder / top] + ([folder] if folder.name == top else [])


def _how(spec: DatasetSpec) -> str:
    return (f"To get it, put {spec.archive.file} (from {spec.url}) in a folder given as "
            "`data_dir` (--data-dir), or allow the download.")  # fmt: skip


def read_archive(path: Path, spec: DatasetSpec) -> RawData:
    """The training and test batches of a CIFAR archive (a tar.gz, or its unpacked
    folder), as uint8 images [N, 3, 32, 32] and labels."""
    archive = spec.archive
    members = {}
    try:
        if path.is_dir():
            for name in (*archive.train, *archive.test):
                member = path.parent / name
                members[name] = member.read_bytes() if member.is_file() else None
        else:
            with tarfile.open(path, "r:gz") as tar:
                for name in (*archive.train, *archive.test):
                    members[name] = _member(tar, name, path)
    except (OSError, tarfile.TarError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a readable {spec.name} archive ({err})") from err
    missing = [name for name, blob in members.items() if blob is None]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} in it")
    train = [_batch(members[n], f"{path}:{n}", archive.labels) for n in archive.train]
    test = [_batch(members[n], f"{path}:{n}", archive.labels) for n in archive.test]
    raw = RawData(
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=np.concatenate([images for images, _ in test]),
        test_labels=np.concatenate([labels for _, labels in test]),
    )
    validate(raw, str(path), spec.classes)
    if raw.train_images.shape[1:] != spec.shape:
        raise DataError(f"{path}: images of shape {raw.train_images.shape[1:]}, expected "
                        f"{spec.shape}")  # fmt: skip
    return raw


def _member(tar: tarfile.TarFile, name: str, path: Path) -> bytes | None:
    """A regular file of the archive, of at most ``MAX_MEMBER`` bytes (no link, no bomb)."""
    try:
        member = tar.getmember(name)
    except KeyError:
        return None
    if not member.isfile() or member.size > MAX_MEMBER:
        raise DataError(f"{path}: {name} is not a plain file of at most {MAX_MEMBER:,} bytes")
    return tar.extractfile(member).read()


def _batch(blob: bytes, where: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: a dict whose b"data" is uint8 [N, 3072] (the red, green and blue
    planes of each 32x32 image, row by row) and whose labels are a list."""
    try:
        batch = ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key.encode()], np.int64)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError) as err:
        raise DataError(f"{where}: not a CIFAR batch ({type(err).__name__}: {err})") from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{where}: data must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32), labels
