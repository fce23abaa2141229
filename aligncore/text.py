"""Names are data, not markup: how a file, folder or generator name is written into each kind of output.

Any byte sequence a file system allows can be a name: control characters (a carriage return, an
escape sequence that recolours a terminal), Unicode bidi overrides, bytes that are not UTF-8 (Python
holds them as lone surrogates, ``os.fsdecode``), ``<script>``, ``|``, ``=HYPERLINK(...)``, ``$\\foo$``.

- :func:`escape_text` is the one visible, reversible spelling of a name: a backslash becomes ``\\\\``;
  control, format (bidi), line-separator and surrogate code points become ``\\xNN`` / ``\\uNNNN`` /
  ``\\UNNNNNNNN``; everything else is kept. :func:`unescape_text` gives the exact original back.
- :func:`csv_cell` is :func:`escape_text` plus the OWASP rule against CSV formula injection: a cell
  that would start with ``=``, ``+``, ``-`` or ``@`` (tab and carriage return are already escaped) is
  prefixed with ``'``, and so is one that starts with ``'`` itself, so :func:`read_csv_cell` can drop
  exactly one. Spreadsheets show such a cell as text; programs read it back losslessly with
  :func:`read_csv_cell`, or use the ``path_encoded`` column (:func:`encode_path`) that run folders add.
- :func:`md_cell` makes a name inert in Markdown (a GFM table cell): HTML special characters become
  entities, Markdown punctuation and ``|`` are backslash-escaped.
- :func:`terminal_text` keeps escape sequences from reaching a terminal raw.
- :func:`plot_text` and :func:`literal_text`: a figure label matplotlib draws literally (no mathtext).
"""

from __future__ import annotations

import html
import re
import unicodedata
from urllib.parse import unquote_to_bytes

#: Unicode categories escaped in every output: controls, format characters (bidi overrides,
#: zero-width), surrogates (undecodable bytes), line and paragraph separators
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: what a spreadsheet evaluates at the start of a cell (OWASP); tab and CR never survive escape_text
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")
#: backslash-escaped in Markdown: the punctuation that means something inside a line of CommonMark/GFM
#: (code, emphasis, links and images, table columns, strikethrough, GitHub math); a table cell never
#: starts a line, so block markers (#, -, +, 1.) are left alone
_MD_PUNCT = frozenset("\\`*_[]|~$")
_MD_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&#39;"}


def _needs_escape(ch: str) -> bool:
    return ch == "\\" or unicodedata.category(ch) in _ESCAPED_CATEGORIES


def _escape_char(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    o = ord(ch)
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def escape_text(value: object) -> str:
    """``value`` as text with every control, format, separator and surrogate code point (and ``\\``) escaped."""
    s = "" if value is None else str(value)
    if s.isascii() and s.isprintable() and "\\" not in s:  # the usual name, without a per-character scan
        return s  # (the ASCII characters that are not printable are exactly the escaped controls, Cc)
    if not any(_needs_escape(ch) for ch in s):
        return s
    return "".join(_escape_char(ch) if _needs_escape(ch) else ch for ch in s)


def unescape_text(s: str) -> str:
    """The inverse of :func:`escape_text` (a backslash not starting one of its escapes is kept)."""
    if "\\" not in s:
        return s

    def one(m: re.Match) -> str:
        body = m.group(1)
        return "\\" if body == "\\" else chr(int(body[1:], 16))

    return _ESCAPE.sub(one, s)


def csv_cell(value: object) -> str:
    """A text cell for a CSV a spreadsheet may open: escaped, and never read as a formula."""
    s = escape_text(value)
    return "'" + s if s.startswith((*FORMULA_START, "'")) else s


def read_csv_cell(cell: str) -> str:
    """The exact text :func:`csv_cell` was given."""
    return unescape_text(cell[1:] if cell.startswith("'") else cell)


def md_cell(value: object) -> str:
    """Text that renders literally in Markdown (GFM tables included): no HTML, links, emphasis or columns."""
    out = []
    for ch in escape_text(value):
        if ch in _MD_PUNCT:
            out.append("\\" + ch)
        else:
            out.append(_MD_ENTITIES.get(ch, ch))
    return "".join(out)


def html_text(value: object) -> str:
    """Text for an HTML page: escaped for HTML, with control characters shown as escapes."""
    return html.escape(escape_text(value), quote=True)


def _visible(s: str) -> str:
    """Control, format, separator and surrogate code points as escapes; a backslash stays one backslash
    (display only: idempotent, not reversible)."""
    return "".join(_escape_char(ch) if ch != "\\" and _needs_escape(ch) else ch for ch in s)


def terminal_text(value: object, keep_newlines: bool = False) -> str:
    """Text safe to print on a terminal: escape sequences and other controls are shown, never executed.

    ``keep_newlines`` keeps ``\\n`` (a message of several lines). Applying it twice changes nothing.
    """
    s = "" if value is None else str(value)
    if not keep_newlines:
        return _visible(s)
    return "\n".join(_visible(line) for line in s.split("\n"))


def plot_text(value: object) -> str:
    """A matplotlib label: control characters shown as escapes. Draw it inside :func:`literal_text` so
    ``$`` never starts mathtext."""
    return _visible("" if value is None else str(value))


def literal_text():
    """A matplotlib rc context in which every label is drawn as it is written (no mathtext, no TeX)."""
    import matplotlib

    return matplotlib.rc_context({"text.parse_math": False, "text.usetex": False})


# ---------------------------------------------------------------------- exact file paths

#: bytes left as they are in :func:`encode_path` (never a formula start, never a CSV special character)
_PATH_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/._~")
_PATH_SAFE_BYTES = bytes(sorted(_PATH_SAFE))


def encode_path(path: str) -> str:
    """The exact bytes of a path (``os.fsencode``), percent-encoded (RFC 3986): ASCII, lossless, and never
    a spreadsheet formula. ``urllib.parse.unquote_to_bytes`` (or :func:`decode_path`) reverses it."""
    import os

    data = os.fsencode(path)
    if not data.translate(None, _PATH_SAFE_BYTES):  # every byte safe: the path as it is
        return data.decode("ascii")
    return "".join(chr(b) if b in _PATH_SAFE else f"%{b:02X}" for b in data)


def decode_path(cell: str) -> str:
    """The path :func:`encode_path` was given (``os.fsdecode`` of the decoded bytes)."""
    import os

    return os.fsdecode(unquote_to_bytes(cell))
