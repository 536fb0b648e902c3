"""--val-split 0.1 of many classes of one or two images held out a third or half of the images (each class
with two keeps one for validation), and never validated the one-image classes, silently: now a warning."""

import warnings

import numpy as np
import pytest

from finetune.data.samples import Samples, stratified_split
from finetune.errors import DataWarning


def _samples(per_class: list[int]) -> Samples:
    labels = np.repeat(np.arange(len(per_class)), per_class)
    return Samples.from_lists([f"{i}.jpg" for i in range(len(labels))], labels, [f"c{i}" for i in range(len(per_class))])


def test_small_classes_hold_out_far_more_than_asked_with_a_warning() -> None:
    with pytest.warns(DataWarning, match=r"held out 20 of 60 images \(33%\).* 20 classes with one image"):
        train, val = stratified_split(_samples([1, 2] * 20), 0.1, seed=0)
    assert (len(train), len(val)) == (40, 20)


def test_no_warning_when_the_split_is_what_was_asked() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, val = stratified_split(_samples([20] * 30), 0.1, seed=0)
    assert (len(train), len(val)) == (540, 60)
