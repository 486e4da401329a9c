"""Namespaces stay apart in the artifact store: which URIs a user may name.

A workload pod reads and writes the store with its namespace's credentials (object storage) or its
namespace's claim (PVC), but a spec could still name any path. So every URI a user writes must lie
under ``<root>/<namespace>/`` or under one of the extra prefixes the platform team allows (the
chart's ``artifacts.allowedURIPrefixes``). Fields that name training data may also name bundled
datasets (``builtin:``) and public ``https://`` data, which carry no store credentials; fields
that name artifacts may not.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from mlkube.layout import join, with_scheme

FORBIDDEN_URI = "ForbiddenURI"
"""The condition reason for a URI outside the namespace's part of the store."""
PUBLIC_DATA = ("builtin:", "https://")


@dataclass(frozen=True)
class ForbiddenURI:
    """A user-written URI outside what the namespace may touch."""

    field: str
    """Its path in the spec, as ``kubectl explain`` spells it, e.g. ``spec.dataset.uri``."""
    uri: str
    allowed: tuple[str, ...]

    @property
    def message(self) -> str:
        return f"{self.field}: {self.uri} is outside this namespace's store; it must start with {' or '.join(self.allowed)}"


def directory(uri: str) -> str:
    """`uri` with exactly one trailing slash, so that as a prefix ``team-a`` never matches
    ``team-ab``."""
    return uri.rstrip("/") + "/"


def namespace_prefix(root: str, namespace: str) -> str:
    """``<root>/<namespace>/``, the part of the store one namespace owns."""
    return directory(join(root, namespace))


def _normalised(uri: str) -> str:
    return with_scheme(uri) if uri.startswith("/") else uri


def _escapes(uri: str) -> bool:
    """A path with ``.`` or ``..`` segments, or an empty one, could climb out of its prefix."""
    path = uri.split("://", 1)[-1]
    return any(segment in (".", "..") for segment in path.split("/")) or "//" in path.lstrip("/")


def uri_allowed(uri: str, prefixes: Iterable[str], public: bool = False) -> bool:
    """True when `uri` lies under one of `prefixes`, or is bundled or public data and `public`."""
    if uri.startswith(PUBLIC_DATA):
        return public
    uri = _normalised(uri)
    if _escapes(uri):
        return False
    return any(uri.startswith(directory(p)) for p in prefixes)


def allowed_prefixes(root: str, namespace: str, extra: Iterable[str]) -> tuple[str, ...]:
    return (namespace_prefix(root, namespace), *(directory(p) for p in extra))


def forbidden_uri(
    uris: Mapping[str, str | None],
    root: str,
    namespace: str,
    extra: Iterable[str] = (),
    data_fields: Collection[str] = (),
) -> ForbiddenURI | None:
    """The first of `uris` (spec field -> URI, None when unset) the namespace may not name;
    `data_fields` name training data, where bundled and public datasets are allowed too."""
    prefixes = allowed_prefixes(root, namespace, extra)
    for field, uri in uris.items():
        if uri is not None and not uri_allowed(uri, prefixes, public=field in data_fields):
            return ForbiddenURI(field, uri, prefixes)
    return None
