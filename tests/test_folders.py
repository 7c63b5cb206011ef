"""Your own images, one folder per class: classes, pixels, greyscale or colour, clear
errors, and a study from the command line."""

import numpy as np
import pytest
from PIL import Image

from prunelab.data import DataError, load_dataset
from prunelab.export import load_sparse
from prunelab.models import ModelConfig, build_model
from tests.conftest import run


def write_folders(root, classes=("cat", "dog", "emu"), per_class=(6, 2), size=(16, 12),
                  mode="RGB", seed=0):  # fmt: skip
    """PNG images laid out as DIR/train/<class>/ and DIR/test/<class>/; their pixels."""
    rng = np.random.default_rng(seed)
    pixels = {}
    for part, count in zip(("train", "test"), per_class, strict=True):
        for name in classes:
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(count):
                shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
                array = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(array, mode).save(folder / f"{i}.png")
                pixels[(part, name, i)] = array
    return pixels


def test_classes_are_the_sorted_folder_names_and_pixels_are_kept(tmp_path):
    pixels = write_folders(tmp_path)
    ds = load_dataset("folder", data_dir=tmp_path, val_size=3)
    assert ds.num_classes == 3 and ds.shape == (3, 12, 16)
    assert len(ds.train) + len(ds.val) == 18 and len(ds.test) == 6
    assert ds.test.y.tolist() == [0, 0, 1, 1, 2, 2]  # cat, dog, emu
    dog = pixels[("test", "dog", 1)]  # [H, W, 3] -> [3, H, W]
    assert np.array_equal((ds.test.x[3] * 255).round().byte().numpy(), dog.transpose(2, 0, 1))


def test_greyscale_images_give_one_channel_and_mixed_ones_three(tmp_path):
    write_folders(tmp_path / "grey", mode="L")
    assert load_dataset("folder", data_dir=tmp_path / "grey", val_size=3).shape == (1, 12, 16)
    write_folders(tmp_path / "mixed", mode="L")
    Image.new("RGB", (16, 12), (200, 10, 10)).save(tmp_path / "mixed/train/cat/red.png")
    assert load_dataset("folder", data_dir=tmp_path / "mixed", val_size=3).shape == (3, 12, 16)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "test/cat/0.png").write_bytes(b"not a png"), "0.png: not a readable"),
        (lambda root: Image.new("RGB", (8, 8)).save(root / "train/dog/big.png"),
         "images differ in size"),
        (lambda root: (root / "test/owl").mkdir(), "classes owl have no training images"),
        (lambda root: [p.unlink() for p in (root / "test").glob("*/*.png")], "no images"),
        (lambda root: Image.fromarray(np.zeros((12, 16), np.uint16)).save(root / "test/cat/9.png"),
         "16 or 32 bits per pixel"),
        (lambda root: Image.new("1", (400, 400)).save(root / "train/cat/huge.png"),
         "huge.png: not a readable image"),
    ],
)  # fmt: skip
def test_broken_folders_are_one_clear_error(tmp_path, damage, message, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)  # 400x400 is then a bomb
    write_folders(tmp_path)
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        load_dataset("folder", data_dir=tmp_path, val_size=3)


def test_the_layout_is_asked_for_when_missing(tmp_path):
    with pytest.raises(DataError, match="reads --data-dir DIR"):
        load_dataset("folder")
    with pytest.raises(DataError, match="no train/ folder"):
        load_dataset("folder", data_dir=tmp_path)


def test_lenet5_says_when_images_are_too_small():
    with pytest.raises(ValueError, match="at least 12x12"):
        build_model(ModelConfig("lenet5", input_shape=(3, 8, 8)))


def test_a_study_of_a_folder_runs_and_its_export_knows_the_images(tmp_path):
    write_folders(tmp_path / "images", per_class=(12, 4))
    out = tmp_path / "run"
    result = run("study", "--dataset", "folder", "--data-dir", str(tmp_path / "images"),
                 "--model", "resnet20", "--hidden", "4,8,8", "--val-size", "6", "--epochs", "1",
                 "--ks", "0.5", "--methods", "unit", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    exported = run("export", str(out), "--method", "unit", "--k", "0.5", "--format", "sparse",
                   "-o", str(tmp_path / "m.safetensors"),
                   "--data-dir", str(tmp_path / "images"))  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    model, config = load_sparse(tmp_path / "m.safetensors")
    assert (config.input_shape, config.classes) == ((3, 12, 16), 3)
    # other images, of the same shape or not: the stored dense model is not reused for them
    write_folders(tmp_path / "others", per_class=(12, 4), seed=1)
    write_folders(tmp_path / "grey", per_class=(12, 4), mode="L")
    for other in ("others", "grey"):
        again = run("study", "--dataset", "folder", "--data-dir", str(tmp_path / other),
                    "--model", "resnet20", "--hidden", "4,8,8", "--val-size", "6",
                    "--epochs", "1", "--ks", "0.5", "--methods", "unit",
                    "--out", str(out))  # fmt: skip
        assert again.returncode != 0 and "trained on other folder data" in again.stderr


def test_a_folder_study_config_forgets_another_datasets_shape():
    import dataclasses

    from prunelab.study_config import StudyConfig

    cifar = StudyConfig(dataset="cifar10")
    assert cifar.model.input_shape == (3, 32, 32)
    folder = dataclasses.replace(cifar, dataset="folder")
    assert folder.model == StudyConfig(dataset="folder").model
    assert hash(folder)  # configs stay hashable, keyword arguments and all
