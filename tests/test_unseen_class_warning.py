"""A class whose every training image is unreadable is named after the first epoch: the model has an
output for it and never sees one (a class folder without images is refused up front)."""

from __future__ import annotations

from finetune.data.decode import BadFile


def test_a_class_without_one_readable_training_image_is_named() -> None:
    from finetune.data.samples import Samples
    from finetune.train import unseen_classes

    s = Samples.from_lists(["a.jpg", "b.jpg", "c.jpg", "d.jpg"], [0, 2, 2, 0], ("cat", "bird", "dog"))
    bad = [BadFile(1, "b.jpg", "not an image"), BadFile(2, "c.jpg", "truncated"), BadFile(3, "d.jpg", "truncated")]
    assert unseen_classes(s, bad) == [
        "class 'dog': none of its 2 training images can be read (e.g. 'b.jpg': not an image): the model never sees "
        "it; fix or remove them, or remove the class"]  # ('bird' has no images at all: refused up front, not here)
    assert unseen_classes(s, bad[:1]) == []
