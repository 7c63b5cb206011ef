import torch

from prunelab.augment import random_affine


def test_zero_ranges_leave_images_unchanged():
    images = torch.rand(4, 1, 28, 28)
    out = random_affine(images, torch.Generator().manual_seed(0), degrees=0, zoom=0, shift=0)
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_small_transforms_move_pixels_a_little_and_follow_the_generator():
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 10:18, 10:18] = 1.0
    a = random_affine(images, torch.Generator().manual_seed(1), degrees=2, zoom=0.01, shift=0.01)
    b = random_affine(images, torch.Generator().manual_seed(1), degrees=2, zoom=0.01, shift=0.01)
    assert torch.equal(a, b)
    change = (a - images).abs()
    assert change.max() > 0.01  # something moved
    assert change.mean() < 0.05  # but only a little: 2 degrees, 1% zoom and shift
    assert not torch.equal(a[0], a[1])  # each image draws its own transform
