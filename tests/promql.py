"""A small PromQL reader for tests: which metrics and labels a Grafana dashboard's queries use.

Not an evaluator and not a full parser: a lexer that knows PromQL's tokens (strings, numbers,
durations, ranges, operators, keywords, functions, aggregations) and a walk over them that finds
- selectors: a metric name and the label names of its `{...}` matchers;
- label names in grouping and vector matching: `by`, `without`, `on`, `ignoring`, `group_left`,
  `group_right`;
- label names passed to label functions: `label_replace`, `label_join`, `count_values`,
  `sort_by_label(_desc)`.

    queries(dashboard)    every panel's `targets[].expr` (rows and nested panels included), with
                          Grafana's variables replaced by plausible values
    selectors(expr)       {(metric, frozenset(label names in its matchers))}; metric is None for a
                          selector with no name (`{__name__=~"..."}`)
    labels_used(expr)     every label name the expression mentions
    metrics_used(expr)    every metric name it selects
    substitute(expr, ...) Grafana's `$var`, `${var}`, `${var:format}`, `[[var]]` replaced
    undefined_variables(dashboard)  variables queries use that the dashboard does not define
    variable_queries(dashboard)     (selector, label) of each `label_values(...)` template query

A malformed expression (unbalanced brackets, a broken matcher, a stray character) raises
`PromQLError`, so a typo in a dashboard fails its test rather than being read loosely.
"""

from __future__ import annotations

import json
import re
from typing import Iterator, NamedTuple

AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
FUNCTIONS = frozenset(
    {
        "abs",
        "absent",
        "absent_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "cos",
        "cosh",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "deg",
        "delta",
        "deriv",
        "double_exponential_smoothing",
        "end",
        "exp",
        "floor",
        "histogram_avg",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "info",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "mad_over_time",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "pi",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rad",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sin",
        "sinh",
        "sort",
        "sort_by_label",
        "sort_by_label_desc",
        "sort_desc",
        "sqrt",
        "start",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "tan",
        "tanh",
        "time",
        "timestamp",
        "vector",
        "year",
    }
)
BINARY_KEYWORDS = frozenset({"and", "or", "unless", "atan2", "bool"})
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
NUMBER_WORDS = frozenset({"inf", "nan"})
# Label-name arguments (0-based argument positions; None: this one and every later one).
LABEL_ARGUMENTS = {
    "label_replace": (1, 3),
    "label_join": (1, 3, None),
    "count_values": (0,),
    "sort_by_label": (1, None),
    "sort_by_label_desc": (1, None),
}
MATCH_OPS = frozenset({"=", "!=", "=~", "!~"})

# Grafana's built-in variables, as a dashboard sees them over the last hour.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__interval_ms": "30000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__auto_interval": "30s",
    "__from": "1700000000000",
    "__to": "1700003600000",
    "__name": "name",
    "__org": "1",
    "__user": "admin",
    "__dashboard": "dashboard",
}


class PromQLError(ValueError):
    pass


class Token(NamedTuple):
    kind: str  # ident, string, number, duration, range, op, lparen, rparen, lbrace, rbrace, comma
    text: str
    at: int


_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\[\]]*\])
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w:]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=@])
  | (?P<lparen>\() | (?P<rparen>\)) | (?P<lbrace>\{) | (?P<rbrace>\}) | (?P<comma>,)
    """,
    re.VERBOSE,
)
_RANGE = re.compile(
    r"\[\s*(?:\d+(?:ms|[smhdwy]))+\s*(?::\s*(?:(?:\d+(?:ms|[smhdwy]))+)?\s*)?\]|\[\s*\d+(?:\.\d+)?\s*\]"
)


def tokens(expr: str) -> list[Token]:
    out, at = [], 0
    while at < len(expr):
        m = _TOKEN.match(expr, at)
        if m is None:
            raise PromQLError(f"unexpected {expr[at]!r} at {at} in {expr!r}")
        kind = m.lastgroup
        if kind == "range" and not _RANGE.fullmatch(m.group()):
            raise PromQLError(f"{m.group()!r} at {at} is not a range or subquery duration in {expr!r}")
        if kind != "space":
            out.append(Token(kind, m.group(), at))
        at = m.end()
    _check_balanced(out, expr)
    return out


def _check_balanced(toks: list[Token], expr: str) -> None:
    closing = {"rparen": "lparen", "rbrace": "lbrace"}
    stack: list[Token] = []
    for t in toks:
        if t.kind in ("lparen", "lbrace"):
            stack.append(t)
        elif t.kind in closing:
            if not stack or stack.pop().kind != closing[t.kind]:
                raise PromQLError(f"unbalanced {t.text!r} at {t.at} in {expr!r}")
    if stack:
        raise PromQLError(f"{stack[-1].text!r} at {stack[-1].at} is never closed in {expr!r}")


class _Reading(NamedTuple):
    selectors: set[tuple[str | None, frozenset[str]]]
    labels: set[str]


def read(expr: str) -> _Reading:
    """Selectors and label names of one expression (Grafana variables replaced first)."""
    toks = tokens(substitute(expr, fallback="1") if ("$" in expr or "[[" in expr) else expr)
    toks += [Token("end", "end of expression", len(expr))] * 2  # a look-ahead past the end reads these
    found = _Reading(set(), set())
    i = 0
    while i < len(toks):
        i = _step(toks, i, found)
    return found


def _step(toks: list[Token], i: int, found: _Reading) -> int:
    t = toks[i]
    following = toks[i + 1] if i + 1 < len(toks) else None
    if t.kind == "lbrace":  # a selector without a metric name
        return _selector(toks, None, i, found)
    if t.kind != "ident":
        return i + 1
    word = t.text.lower()
    if word in GROUPING:
        if following is not None and following.kind == "lparen":
            return _label_list(toks, i + 1, found)
        if word in ("group_left", "group_right"):
            return i + 1
        raise PromQLError(f"{t.text!r} at {t.at} needs a label list")
    if word in AGGREGATIONS or word in BINARY_KEYWORDS or word in NUMBER_WORDS or word == "offset":
        if t.text in LABEL_ARGUMENTS:
            _label_arguments(toks, i, found)
        return i + 1
    if following is not None and following.kind == "lparen":
        if t.text not in FUNCTIONS:
            raise PromQLError(f"unknown function {t.text!r} at {t.at}")
        if t.text in LABEL_ARGUMENTS:
            _label_arguments(toks, i, found)
        return i + 1
    if following is not None and following.kind == "lbrace":
        return _selector(toks, t.text, i + 1, found)
    found.selectors.add((t.text, frozenset()))
    return i + 1


def _selector(toks: list[Token], metric: str | None, i: int, found: _Reading) -> int:
    """Matchers from the `{` at i; returns the index after `}`."""
    labels: set[str] = set()
    i += 1
    while toks[i].kind != "rbrace":
        name = toks[i]
        if name.kind == "string" and toks[i + 1].kind in ("comma", "rbrace"):  # {"metric.name", ...}
            metric, i = _unquote(name.text), i + 1
        else:
            op, value = toks[i + 1], toks[i + 2]
            if name.kind not in ("ident", "string") or op.text not in MATCH_OPS or value.kind != "string":
                raise PromQLError(f"bad label matcher at {name.at}: {name.text} {op.text} {value.text}")
            label = _unquote(name.text) if name.kind == "string" else name.text
            if label == "__name__" and op.text == "=":
                metric = _unquote(value.text)
            elif label != "__name__":
                labels.add(label)
            i += 3
        if toks[i].kind == "comma":
            i += 1
        elif toks[i].kind != "rbrace":
            raise PromQLError(f"expected ',' or '}}' at {toks[i].at}, found {toks[i].text!r}")
    found.selectors.add((metric, frozenset(labels)))
    found.labels.update(labels)
    return i + 1


def _label_list(toks: list[Token], i: int, found: _Reading) -> int:
    """Label names from the `(` at i; returns the index after `)`."""
    i += 1
    while toks[i].kind != "rparen":
        t = toks[i]
        if t.kind not in ("ident", "string") or toks[i + 1].kind not in ("comma", "rparen"):
            raise PromQLError(f"expected a label name at {t.at}, found {t.text!r}")
        found.labels.add(_unquote(t.text) if t.kind == "string" else t.text)
        i += 2 if toks[i + 1].kind == "comma" else 1
    return i + 1


def _label_arguments(toks: list[Token], i: int, found: _Reading) -> None:
    """Label names among the string arguments of the label function at i."""
    positions = LABEL_ARGUMENTS[toks[i].text]
    start = i + 1
    if toks[start].kind == "ident" and toks[start].text.lower() in GROUPING:  # `count_values by (x) ("label", v)`
        start = _label_list(toks, start + 1, _Reading(set(), set()))
    if start >= len(toks) or toks[start].kind != "lparen":
        raise PromQLError(f"{toks[i].text} at {toks[i].at} takes arguments in parentheses")
    depth, argument = 0, 0
    for t in toks[start:]:
        if t.kind in ("lparen", "lbrace"):
            depth += 1
        elif t.kind in ("rparen", "rbrace"):
            depth -= 1
            if depth == 0:
                return
        elif t.kind == "comma" and depth == 1:
            argument += 1
        elif t.kind == "string" and depth == 1 and _label_position(argument, positions):
            label = _unquote(t.text)
            if label:
                found.labels.add(label)


def _label_position(argument: int, positions: tuple) -> bool:
    if argument in positions:
        return True
    return None in positions and argument >= positions[positions.index(None) - 1]


def _unquote(text: str) -> str:
    if text[0] == "`":
        return text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text[1:-1])


def selectors(expr: str) -> set[tuple[str | None, frozenset[str]]]:
    return read(expr).selectors


def labels_used(expr: str) -> set[str]:
    return read(expr).labels


def metrics_used(expr: str) -> set[str]:
    return {metric for metric, _ in read(expr).selectors if metric is not None}


# --- Grafana ---------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)(?:[.:][^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")


def substitute(expr: str, values: dict[str, str] | None = None, fallback: str | None = None) -> str:
    """Grafana's variables replaced: built-ins by their values over the last hour, the others by
    `values` (a dashboard's current choices). Any other `$name` stays as it is, as Grafana leaves
    it (`"$1"` in label_replace), unless `fallback` is given ("1" reads as a string, a number and
    a label value alike)."""
    values = {**BUILTINS, **(values or {})}

    def value(m: re.Match) -> str:
        found = values.get(m.group(1) or m.group(2) or m.group(3))
        return found if found is not None else fallback if fallback is not None else m.group()

    return _VARIABLE.sub(value, expr)


def undefined_variables(dashboard: dict) -> set[str]:
    """Variables the queries use that are neither Grafana's built-ins nor the dashboard's own."""
    known = set(BUILTINS) | set(variables(dashboard))
    used = {
        m.group(1) or m.group(2) or m.group(3)
        for p in panels(dashboard)
        for t in p.get("targets", [])
        for m in _VARIABLE.finditer(t.get("expr", ""))
    }
    return {name for name in used - known if not name.isdigit()}  # $1: a label_replace group


def variables(dashboard: dict) -> dict[str, str]:
    """Each template variable's current value, else its first option, else `.*` (what "All"
    stands for, and a match for any value)."""
    out = {}
    for var in dashboard.get("templating", {}).get("list", []):
        current = (var.get("current") or {}).get("value")
        if current is None and var.get("options"):
            current = var["options"][0].get("value")
        if isinstance(current, list):
            current = "|".join(current)
        if current in (None, "", "$__all"):
            current = ".*"
        out[var["name"]] = str(current)
    return out


_LABEL_VALUES = re.compile(r"\s*label_values\(\s*(?:(.*\S)\s*,\s*)?([a-zA-Z_]\w*)\s*\)\s*", re.S)
_QUERY_RESULT = re.compile(r"\s*query_result\((.*)\)\s*", re.S)


def variable_queries(dashboard: dict) -> list[tuple[str | None, str | None]]:
    """What each query variable asks Prometheus: `label_values(selector, label)` gives
    (selector, label), `label_values(label)` (None, label), `query_result(expr)` (expr, None);
    Grafana's variables replaced as in `queries`."""
    values, out = variables(dashboard), []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        text = substitute(query.get("query", "") if isinstance(query, dict) else str(query or ""), values)
        if m := _LABEL_VALUES.fullmatch(text):
            out.append((m.group(1), m.group(2)))
        elif m := _QUERY_RESULT.fullmatch(text):
            out.append((m.group(1), None))
        elif text.strip():
            raise PromQLError(f"variable {var.get('name')!r}: cannot read the query {text!r}")
    return out


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, rows' nested panels included, rows themselves too."""
    stack = list(reversed(dashboard.get("panels", [])))
    while stack:
        panel = stack.pop()
        yield panel
        stack.extend(reversed(panel.get("panels", [])))


def queries(dashboard: dict | str) -> list[str]:
    """Every `targets[].expr` of every panel, Grafana's variables replaced by plausible values."""
    board = json.loads(dashboard) if isinstance(dashboard, str) else dashboard
    values = variables(board)
    return [substitute(t["expr"], values) for p in panels(board) for t in p.get("targets", []) if t.get("expr")]
