"""The metric names a PromQL expression reads, for checking that alerts, recording rules and
dashboard panels only name metrics something exports.

Not a PromQL parser: it drops string literals, label matchers, range and offset brackets and the
label lists of ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``, then keeps
every identifier that is not a function call, a keyword or a number. That is enough for the
expressions this project writes, and a name it cannot see would only make a check stricter.
"""

from __future__ import annotations

import re

_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                       "bool", "offset", "inf", "nan", "Inf", "NaN"})
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expression: str) -> set[str]:
    """Every metric name ``expression`` selects."""
    text = _STRINGS.sub('""', expression)
    text = _BRACES.sub("", text)
    text = _BRACKETS.sub("", text)
    text = _LABEL_LISTS.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name in _KEYWORDS:
            continue
        names.add(name)
    return names
