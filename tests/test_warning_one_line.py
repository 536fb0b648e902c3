"""A `finetune: warning:` naming a file whose name holds a newline or a terminal escape was split over two
lines (and coloured the terminal): error lines fold such characters away, warnings now do too."""

import contextlib
import importlib
import io
import warnings

from finetune.cli import _show_warning

TRAIN = importlib.import_module("finetune.train")  # (finetune.train is also the function)


def test_warnings_stay_on_one_line_whatever_file_they_name() -> None:
    with contextlib.redirect_stderr(io.StringIO()) as err:
        TRAIN.warn("skipped 1 unreadable image(s) (e.g. 'bro\nken\x1b[31m.jpg': not an image)")
    assert err.getvalue() == "finetune: warning: skipped 1 unreadable image(s) (e.g. 'bro ken .jpg': not an image)\n"
    with contextlib.redirect_stderr(io.StringIO()) as err:  # (finetune's warnings.warn, as the CLI shows them)
        _show_warning(warnings.showwarning, UserWarning("'a\nb.pt' holds no weights"), UserWarning,
                      TRAIN.__file__, 1)
    assert err.getvalue() == "finetune: warning: 'a b.pt' holds no weights\n"
