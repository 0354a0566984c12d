"""Names from the file system and from data files, made safe to show and store.

Linux file names are bytes: Python turns bytes that are not UTF-8 into lone surrogates
("caf\\udce9"), which no UTF-8 file, JSON writer with ensure_ascii=False or plot can take. Here
they become the escapes Python prints ("caf\\xe9"); class names also lose control characters.
"""

from __future__ import annotations


def valid_text(text: str) -> str:
    """`text` as valid Unicode: undecodable file-name bytes become \\xNN escapes."""
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes the name had on disk
    except UnicodeEncodeError:  # a surrogate that did not come from a file name
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def class_name(name: str | bytes) -> str:
    """A printable class name: valid Unicode, control characters shown as escapes (\\t, \\x1b)."""
    text = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else valid_text(name)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
