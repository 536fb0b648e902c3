"""finetune cam names each overlay after its image and predicted class: with CJK (or emoji) names of 60+
characters the name passed 255 bytes and cam stopped with 'File name too long'."""

from finetune.cam import _safe


def test_overlay_name_parts_fit_a_file_name() -> None:
    stem, cls = "写真" + "画" * 68, "猫" * 70
    name = f"0000_{_safe(stem)}_{_safe(cls)}.png"
    assert len(name.encode("utf-8")) <= 255, len(name.encode("utf-8"))
    assert _safe(cls) == "猫" * 20  # (60 bytes: whole characters)
    assert _safe("x" * 70) == "x" * 60 and _safe("a b/c") == "a_b_c"
