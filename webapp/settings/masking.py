"""Passwords out of every URL, DSN and message: what the service prints is safe to ship to a log store."""

from __future__ import annotations

import re

# key=value DSNs and URL query strings: password=..., a quoted value (with \' escapes) or up to & or a space.
_PASSWORD_PARAM = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&'\"]+)", re.IGNORECASE)
# In free text a URL, or a host libpq misread, is a word: it ends at whitespace or a quote.
_WORD_WITH_AT = re.compile(r"[^\s'\"<>]*@[^\s'\"<>]*")
_ANY_SECRET = re.compile(r"@|password", re.IGNORECASE)


def mask_url(url: str | None) -> str:
    """Return a URL or key=value DSN with any password replaced by ***, safe for logs and messages."""
    if not url:
        return ""
    scheme, sep, rest = url.partition("://")
    return scheme + sep + _mask_user_info(rest) if sep else _PASSWORD_PARAM.sub(r"\1***", url)


def mask_secrets(text: str) -> str:
    """Return free text (a driver's message, a log line) with every password in it masked.

    URLs and key=value DSNs as mask_url masks them, and any other word with an @ up to its last @:
    libpq reads the tail of a password with an unescaped @ as the host, and quotes that host in
    its errors ("failed to resolve host 'ss@w0rd@127.0.0.1'").
    """
    if not _ANY_SECRET.search(text):  # the common case, and cheap
        return text
    return _WORD_WITH_AT.sub(_mask_word, _PASSWORD_PARAM.sub(r"\1***", text))


def _mask_word(match: re.Match[str]) -> str:
    scheme, sep, rest = match[0].partition("://")
    return scheme + sep + _mask_user_info(rest) if sep else "***" + match[0][match[0].rfind("@"):]


def _mask_user_info(rest: str) -> str:
    """What follows a URL's ://, masked from the user's first : up to the LAST @.

    Trap: a password may hold @ / ? # : unescaped. libpq ends the user info at the first @ and
    reads the rest as the host, so masking up to the first @ leaks the password's tail; masking up
    to the last @ hides too much only when the query string holds an @: the safe side.
    """
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        if colon:
            user += ":***"
        elif "/" in user or "@" in user:  # no password, but not a plain user name either
            user = "***"
        rest = user + rest[at:]
    return _PASSWORD_PARAM.sub(r"\1***", rest)
