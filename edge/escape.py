"""Text from elsewhere (class names, file names) made safe for each kind of output.

Class names come from users' folders and CSVs, so from whoever made the data,
and a model file from elsewhere carries its own. Every output escapes them:

- terminal (tables, stderr, the camera's lines): `escape_name`, as
  `ls --quoting-style=escape` shows names. A backslash doubles; a control
  character (C0, C1, ESC, DEL), a bidi override, any other unprintable
  character or a byte that is not UTF-8 becomes \\ooo, one octal escape per
  UTF-8 byte (\\t \\n \\r and the other C escapes stay short). `unescape_name`
  gives the exact bytes back. Tables also cut a long label to TABLE_WIDTH
  characters, ending in `...` (`shown`).
- CSV (`noodle-edge classify --csv`, predictions.csv): the same escapes, then
  a cell that would begin with `=`, `+`, `-`, `@`, a tab or a CR, which a
  spreadsheet runs as a formula, gets a `'` in front, as OWASP advises; so
  does one that begins with `'` itself, so `csv_value` can undo both exactly.
- Markdown and HTML (report.md, README-PI.md): the same escapes, then `&`,
  `<` and `>` as entities and the characters that make tables, links and
  emphasis (`|`, `` ` ``, `*`, `_`, `[`, `]`) escaped with a backslash.
- JSON needs nothing more: json.dumps writes every control and non-ASCII
  character as \\uXXXX.

What a class name may be when noodle trains (`label_problem`): 1 to
LABEL_MAX printable characters (Python's str.isprintable: no control, format
or bidi characters, no line breaks); anything else is refused, naming the
folder or CSV line it came from.

Standard library only: this file ships to the device.
"""
from __future__ import annotations

import sys

# The longest class name `noodle train` accepts.
LABEL_MAX = 100
# Human-readable tables cut labels to this many characters.
TABLE_WIDTH = 40
ELLIPSIS = "..."
# Items a one-line list names before "... and N more" (the JSON beside it has them all):
# at 117 classes a full list ran to thousands of characters.
LISTED = 8
# A cell starting with one of these is a formula to a spreadsheet (OWASP's list), or
# (the quote) one that was neutralized: both get a leading quote.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "'")

_C_ESCAPES = {"\\": "\\\\", "\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v",
              "\f": "\\f", "\r": "\\r"}
_C_UNESCAPES = {v[1]: k.encode() for k, v in _C_ESCAPES.items()}
_MARKDOWN = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_",
             "[": "\\[", "]": "\\]"}


def listed(items: list[str], limit: int = LISTED) -> str:
    """`items` joined by ", ", cut after the first `limit` with ", ... and N more"."""
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def escape_name(name: str, encoding: str | None = None) -> str:
    """A name or label as printable text; `encoding` (default: stdout's) decides what else to escape."""
    encoding = encoding or getattr(sys.stdout, "encoding", None) or "utf-8"
    if "\\" not in name and name.isprintable() and _encodable(name, encoding):
        return name  # nearly every name: no per-character work
    out = []
    for ch in name:
        if ch in _C_ESCAPES:
            out.append(_C_ESCAPES[ch])
        elif "\udc80" <= ch <= "\udcff":  # os.fsdecode's stand-in for an undecodable byte
            out.append(f"\\{ord(ch) - 0xDC00:03o}")
        elif not ch.isprintable() or not _encodable(ch, encoding):
            out.append("".join(f"\\{b:03o}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "".join(out)


def unescape_name(text: str) -> bytes:
    """The exact bytes of a name that escape_name printed (for CSV and the table)."""
    out, i = bytearray(), 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
        elif text[i + 1 : i + 2] in _C_UNESCAPES:
            out += _C_UNESCAPES[text[i + 1]]
            i += 2
        else:
            out.append(int(text[i + 1 : i + 4], 8))
            i += 4
    return bytes(out)


def _encodable(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def shown(label: str, width: int | None = TABLE_WIDTH, encoding: str | None = None) -> str:
    """A label for a terminal: escaped, and cut to `width` characters (None: whole)."""
    text = escape_name(label, encoding)
    if width is not None and len(text) > width:
        return text[: max(width - len(ELLIPSIS), 1)] + ELLIPSIS
    return text


def csv_cell(text: str, encoding: str | None = "utf-8") -> str:
    """A CSV cell: escaped, and neutralized when a spreadsheet would read a formula."""
    text = escape_name(text, encoding)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def csv_value(cell: str) -> str:
    """What csv_cell was given, from the cell (a name that was not UTF-8 keeps its surrogates)."""
    if cell.startswith("'"):
        cell = cell[1:]
    return unescape_name(cell).decode("utf-8", "surrogateescape")


def markdown(text: str, width: int | None = None) -> str:
    """Text for a Markdown table or paragraph (HTML-safe too); cut to `width` characters."""
    text = shown(text, width, "utf-8")
    return "".join(_MARKDOWN.get(ch, ch) for ch in text)


def label_problem(label: str) -> str | None:
    """Why `label` cannot be a class name noodle trains, or None when it can."""
    if not label:
        return "an empty class name"
    bad = next((ch for ch in label if not ch.isprintable()), None)
    if bad is not None:
        return (f"class name '{shown(label)}' holds {escape_name(bad, 'ascii')} (U+{ord(bad):04X}), a "
                "control, format or bidi character that would reach terminals and reports raw; "
                "rename it with printable characters only")
    if len(label) > LABEL_MAX:
        return (f"class name '{shown(label)}' is {len(label)} characters long; a class name is "
                f"at most {LABEL_MAX}: shorten it")
    return None
