"""Random views of image batches (geopath.core.augment): each view is a shifted window of its zero-padded image,
mirrored or not; the views come from their own generator; non-image inputs are refused in one line."""

from __future__ import annotations

import pytest
import torch

from geopath.core.augment import augmentation, check_images, random_crop, random_flip, shift_pad
from geopath.core.choices import Augment
from geopath.core.dataset import Dataset
from geopath.core.train import train
from geopath.errors import UsageError


def _images(n=64, c=3, h=8, w=10):
    return torch.randn(n, c, h, w, dtype=torch.float64)


def _windows(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every H×W window of ``image`` zero-padded by ``pad``: the (2·pad + 1)² possible crops (a dense reference)."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=image.dtype)
    padded[:, pad:pad + h, pad:pad + w] = image
    return [padded[:, i:i + h, j:j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]


def test_shift_pad_is_an_eighth_of_the_shorter_side():
    assert (shift_pad(32, 32), shift_pad(28, 28), shift_pad(8, 10), shift_pad(4, 4)) == (4, 3, 1, 1)


def test_random_crop_takes_one_window_of_the_padded_image_per_sample_and_varies_it():
    x = _images()
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.is_contiguous()
    chosen = []
    for image, view in zip(x, out):
        hits = [k for k, window in enumerate(_windows(image, 2)) if torch.equal(window, view)]
        assert len(hits) == 1  # exactly one of the 25 windows (random data: no two coincide)
        chosen.append(hits[0])
    assert len(set(chosen)) > 10  # independent offsets per sample, not one shift for the batch
    assert 12 in chosen  # the centre window (no shift) is among the draws


def test_random_flip_mirrors_about_half_of_the_images():
    x = _images(n=400)
    out = random_flip(x, torch.Generator().manual_seed(0))
    same = torch.tensor([torch.equal(a, b) for a, b in zip(x, out)])
    mirrored = torch.tensor([torch.equal(a.flip(-1), b) for a, b in zip(x, out)])
    assert bool((same ^ mirrored).all())  # each image is itself or its mirror image
    assert 150 < int(mirrored.sum()) < 250


def test_augmentation_is_reproducible_from_its_seed_and_none_is_no_transform():
    x = _images()
    assert augmentation("none", 0) is None
    a, b, c = augmentation(Augment.CROP_FLIP, 3), augmentation("crop-flip", 3), augmentation("crop-flip", 4)
    first = a(x)
    assert torch.equal(first, b(x)) and not torch.equal(first, c(x))
    assert not torch.equal(first, a(x))  # the generator moves on: a new view per batch
    crop = augmentation("crop", 3)(x)  # the same offsets as crop-flip's, without the mirroring
    assert all(torch.equal(v, f) or torch.equal(v.flip(-1), f) for v, f in zip(crop, first))
    flipped = augmentation("flip", 3)(x)  # mirroring only: every image whole, some of them mirrored
    assert all(torch.equal(v, f) or torch.equal(v.flip(-1), f) for v, f in zip(x, flipped))
    assert not torch.equal(flipped, x)


def test_non_image_inputs_are_refused_in_one_line():
    check_images("crop-flip", (3, 32, 32))
    check_images("none", (784,))
    with pytest.raises(UsageError, match=r"--settle-augment crop needs image inputs \(C×H×W\); these are 784 per"):
        check_images("crop", (784,))


def test_train_feeds_the_views_to_the_model_and_the_loss_and_keeps_the_batch_order():
    """The loss function (a distillation teacher) sees the same views as the model; an identity view
    leaves training bit-identical, so the views draw nothing from the batch order's generator."""
    torch.manual_seed(0)
    ds = Dataset(torch.randn(96, 1, 6, 6), torch.randint(0, 3, (96,)), "toy", "train")

    def net():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))

    seen = []

    def loss(logits, x, y):
        seen.append(x.clone())
        return torch.nn.functional.cross_entropy(logits, y)

    plain, same = net(), net()
    train(plain, ds, epochs=1, batch_size=32, seed=5)
    train(same, ds, epochs=1, batch_size=32, seed=5, augment=lambda x: x)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), same.parameters()))
    shifted = net()
    train(shifted, ds, epochs=1, batch_size=32, seed=5, augment=lambda x: x + 100.0, loss_fn=loss)
    gen = torch.Generator().manual_seed(5)
    order = torch.randperm(96, generator=gen)
    assert torch.equal(seen[0], ds.x[order[:32]] + 100.0)  # the first batch, as its view
    assert not torch.equal(plain[1].weight, shifted[1].weight)
