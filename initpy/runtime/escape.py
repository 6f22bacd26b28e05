"""Escaping text from outside (a disk, the network, a server) before it is shown.

`printable()` for a line that reaches a console or a journal, `one_line()`
for a value quoted in a message of several lines. A leaf: the report
(initpy/runtime/report.py) says every console line through it, and the
booted host's programs (initpy/host) log a server's words through it too.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every character that is not printable escaped as Python escapes it.

    ESC, CR, backspace, newline, DEL, the C1 controls and Unicode's
    invisible and line-breaking characters (bidi overrides, U+2028) become
    `\\x1b`, `\\r`, `\\u202e`...; everything else, spaces and non-ASCII
    letters included, is kept. `repr()` of a string is printable already.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# What str.splitlines() breaks a line at: any of them could start a line of
# its own in a viewer, not only "\n".
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_ESCAPED_BREAKS = {ord(c): repr(c)[1:-1] for c in LINE_BREAKS}


def one_line(text: str) -> str:
    """`text` with its line breaks escaped (`\\n`, `\\r`, `\\u2028`...), the rest kept.

    For a value from a disk or the network quoted in a message: the lines
    of a message are its author's (say() prints each as a line of its own),
    so a quoted value must not bring one. Other control characters stay, for
    report.json to keep them as they were; say() escapes them when printing.
    """
    return text.translate(_ESCAPED_BREAKS)
