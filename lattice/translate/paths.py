"""The mesh's path policy: how every connection manager normalizes a request's path, and which
paths it refuses with 400 before any filter, route or policy reads them.

MeshConfig `pathNormalization.normalization` picks it (`lattice server --mesh-config`):
- `DEFAULT` (or unset), Lattice's own, stricter than any of Istio's: RFC 3986 normalization,
  slashes merged, escaped slashes (`%2F`, `%5C`) refused, and refused too are paths that common
  servers read differently from Envoy (AMBIGUOUS below);
- Istio's `NONE`, `BASE`, `MERGE_SLASHES` and `DECODE_AND_MERGE_SLASHES`, exactly as Istio maps
  them onto Envoy, for meshes that must keep Istio's behaviour (Istio's own default is `BASE`).

Why refuse rather than normalize: a DENY on `/admin` is only as good as the agreement between the
proxy and the app on what `/admin` is. Envoy keeps `/admin;x=1`, `/admin.`, `/admin%20`,
`/%2561dmin` and `/%C0%AFadmin` as paths other than `/admin`; Tomcat and Spring drop `;`
parameters, IIS and .NET drop trailing dots and spaces, some servers decode twice or accept
overlong UTF-8. No normalization can guess which app is behind the proxy, so such paths are
refused (they are never written by honest clients). The query string is not checked: policy
does not match on it.

The refusal is a fault filter aborting with 400 when a regular expression matches `:path` (after
Envoy's normalization), first in every chain (translate/http_filters.py), under a name of its own
so a VirtualService's per-route fault never overrides it.
"""

from __future__ import annotations

import re

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from lattice.translate.protos import pack

DEFAULT = "DEFAULT"
ISTIO_MODES = ("NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")
MODES = (DEFAULT, *ISTIO_MODES)
FILTER_NAME = "lattice.path_policy"  # not envoy.filters.http.fault: per-route faults must not reach it

_HEX = "[0-9a-f]"
_CONT = f"%[89ab]{_HEX}"  # a UTF-8 continuation byte, percent-encoded
# One well-formed multi-byte UTF-8 character, percent-encoded (RFC 3629, section 4): no overlong
# forms, no surrogates, nothing above U+10FFFF.
_UTF8 = "|".join(
    (
        f"%(?:c[2-9a-f]|d{_HEX}){_CONT}",
        f"%(?:e0%[ab]{_HEX}|e[1-9a-cef]{_CONT}|ed%[89]{_HEX}){_CONT}",
        f"%(?:f0%[9ab]{_HEX}|f[1-3]{_CONT}|f4%8{_HEX}){_CONT}{_CONT}",
    )
)
# What a path may not contain before its query (each: what it is, a regex of it).
AMBIGUOUS: tuple[tuple[str, str], ...] = (
    # `;` parameters: Tomcat, Jetty and Spring drop `;...` from a segment, so /admin;x=1 is /admin
    # (and an app that decodes before it splits reads %3B as one).
    ("path parameters (;)", ";|%3b"),
    # A percent-encoded percent sign: an app that decodes twice reads %2561 as a.
    ("an encoded percent sign (%25)", "%25"),
    # Encoded control characters: servers trim, split or stop at them.
    ("an encoded control character", "%(?:[01][0-9a-f]|7f)"),
    # A segment ending in a dot, space or tab: Windows servers (IIS, .NET) drop them, so /admin. is /admin.
    ("a segment ending in a dot, space or tab", r"(?:\.|%2e|%20|%09| |\t)(?:[/?]|$)"),
)
# Envoy matches a header's regex against the whole value (RE2 FullMatch), hence the trailing `.*`.
REFUSED = "(?is)[^?]*(?:" + "|".join(regex for _, regex in AMBIGUOUS) + ").*"
# Percent-encoded bytes that do not form UTF-8 (overlong forms such as %C0%AF for '/', lone
# continuation bytes, truncated sequences): a path the whole of which is not this is refused.
WELL_FORMED = rf"(?is)(?:[^%?]|%[0-7]{_HEX}|{_UTF8})*(?:\?.*)?"


def configure(manager: hcm.HttpConnectionManager, mode: str) -> None:
    """Envoy's normalization for `mode`, as Istio sets it for its own modes."""
    if mode not in MODES:
        raise ValueError(f"unknown path normalization {mode!r}; expected one of {', '.join(MODES)}")
    keep = hcm.HttpConnectionManager.KEEP_UNCHANGED
    if mode == "NONE":
        manager.normalize_path.value = False
        manager.merge_slashes = False
        manager.path_with_escaped_slashes_action = keep
        return
    manager.normalize_path.value = True
    manager.merge_slashes = mode != "BASE"
    manager.path_with_escaped_slashes_action = {
        DEFAULT: hcm.HttpConnectionManager.REJECT_REQUEST,
        "BASE": keep,
        "MERGE_SLASHES": keep,
        "DECODE_AND_MERGE_SLASHES": hcm.HttpConnectionManager.UNESCAPE_AND_FORWARD,
    }[mode]


def refusal_filters(mode: str) -> list[hcm.HttpFilter]:
    """The filters answering 400 for ambiguous paths: under Lattice's default only."""
    if mode != DEFAULT:
        return []
    return [
        _refuse(FILTER_NAME, _path_matcher(REFUSED)),
        _refuse(f"{FILTER_NAME}.utf8", _path_matcher(WELL_FORMED, invert=True)),
    ]


def refused(path: str) -> str | None:
    """Why Lattice's default policy refuses `path` (a normalized :path), or None: what the filters
    decide, for `lattice authz check` and tests, with Python's `re` (these patterns mean the same in RE2)."""
    for what, regex in AMBIGUOUS:
        if re.fullmatch(f"(?is)[^?]*(?:{regex}).*", path):
            return what
    if not re.fullmatch(WELL_FORMED, path):
        return "percent-encoded bytes that are not UTF-8"
    return None


def _path_matcher(regex: str, invert: bool = False) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(
        name=":path",
        string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex)),
        invert_match=invert,
    )


def _refuse(name: str, matcher: rc.HeaderMatcher) -> hcm.HttpFilter:
    abort = fault_pb2.FaultAbort(http_status=400, percentage=percent_pb2.FractionalPercent(numerator=100))
    return hcm.HttpFilter(name=name, typed_config=pack(fault_pb2.HTTPFault(abort=abort, headers=[matcher])))
