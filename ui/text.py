"""Text made safe for Streamlit's Markdown (a module of its own: everything in ui/ may import it)."""

from __future__ import annotations

_MARKDOWN = set("\\`*_{}[]()#+-.!|<>~$:&=\"'")


def md(text) -> str:
    """User text (a word, a file name, a path, an error quoting them) made inert for Streamlit's Markdown:
    every Markdown, directive and LaTeX character is backslash-escaped, so ``![t](http://…)`` shows as
    those characters instead of making the browser fetch a URL."""
    return "".join("\\" + ch if ch in _MARKDOWN else ch for ch in str(text)).replace("\n", "  \n")
