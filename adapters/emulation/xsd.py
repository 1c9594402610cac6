"""QuickBooks Online request bodies checked against Intuit's XSD data model (the only
machine-readable QBO description; contract-validation.md 2d), every error with its field path."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

from adapters.emulation.specs import missing_reason, spec_path

__all__ = [
    "NAMESPACE",
    "QUICKBOOKS_XSD",
    "QuickBooksSchema",
    "quickbooks_schema",
    "to_xsd_data",
    "violations",
]

QUICKBOOKS_XSD = "quickbooks/xsd/IntuitRestServiceDef.xsd"
NAMESPACE = "http://schema.intuit.com/finance/v3"

# Lower-case JSON keys that are XML attributes in the schema: ReferenceType's name/type and
# IntuitEntity's domain/sparse/status.
_ATTRIBUTES = frozenset({"name", "type", "domain", "sparse", "status"})

# What python-quickbooks 0.9.12 sends that the real QBO accepts but the XSD types differently
# (contract-validation.md 2d): the SDK's default `LineNum: 0` (XSD: positiveInteger), integer
# `SyncToken`, and the integer `TxnLineId` of `to_linked_txn()` (XSD: xs:string). Nothing else is
# relaxed: a wrong type anywhere else is a violation.
_INTEGER_STRINGS = frozenset({"SyncToken", "TxnLineId", "TxnId"})


def to_xsd_data(body: Any) -> Any:
    """A QBO JSON value turned into the dict shape xmlschema encodes, with the SDK's tolerated
    quirks normalised (see `_INTEGER_STRINGS`); `""`, `[]` and null mean "not set" and go."""
    if isinstance(body, Mapping):
        out: dict[str, Any] = {}
        for key, value in body.items():
            if value is None or value == "" or (isinstance(value, list) and not value):
                continue
            if key == "LineNum" and value == 0 and not isinstance(value, bool):
                continue  # the SDK's default for an unnumbered line
            if key in _INTEGER_STRINGS and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if key == "value":
                out["$"] = to_xsd_data(value)
            elif key in _ATTRIBUTES:
                out["@" + key] = to_xsd_data(value)
            else:
                out[key] = to_xsd_data(value)
        return out
    if isinstance(body, list):
        return [to_xsd_data(item) for item in body]
    return body


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _strip_namespace(text: str) -> str:
    return text.replace("{" + NAMESPACE + "}", "")


class QuickBooksSchema:
    """The loaded XSD set; `violations(entity, body)` is thread-safe (xmlschema's encoders keep
    no per-call state, but loading and first use are serialised anyway)."""

    def __init__(self, path: Path) -> None:
        import xmlschema

        self.path = path
        self._schema = xmlschema.XMLSchema(str(path))
        self._lock = threading.Lock()

    @property
    def entities(self) -> frozenset[str]:
        return frozenset(self._schema.elements)

    def violations(self, entity: str, body: Any) -> list[str]:
        """Every way `body` (QBO JSON of one `entity`, e.g. 'Invoice') breaks the schema, one
        line each, starting with the dotted path of the field: empty when it conforms."""
        element = self._schema.elements.get(entity)
        if element is None:
            return [f"{entity}: not an entity of the QuickBooks data model"]
        if not isinstance(body, Mapping):
            return [f"{entity}: the body must be a JSON object, not {type(body).__name__}"]
        data = to_xsd_data(body)
        with self._lock:
            encoded, errors = element.encode(  # type: ignore[misc]
                data,
                namespaces={"": NAMESPACE},
                validation="lax",
                unordered=True,
            )
        tree = encoded if isinstance(encoded, Element) else None
        paths = _PathIndex(tree, entity)
        found: list[str] = []
        pending = list(errors)
        while pending:
            error = pending.pop(0)
            reason = _strip_namespace(str(error.reason or error.message))
            node = getattr(error, "elem", None)
            unknown = _UNKNOWN.search(reason)
            if unknown is not None:
                # xmlschema points at the previous sibling (or the parent) and follows up with
                # "content of <parent> is not complete": name the field under its parent instead
                parent = _take_incomplete(pending)
                where = paths.of(parent) if parent is not None else paths.parent_of(node)
                found.append(
                    f"{where}.{unknown.group(1)}: not a field of {_local_or(parent, node)}"
                )
                continue
            found.append(f"{paths.of(node)}: {reason}")
        if tree is not None:
            errors_at = {line.split(":", 1)[0] for line in found}
            found.extend(_unconsumed(data, tree, entity, errors_at=errors_at))
        return _unique(found)


_UNKNOWN = re.compile(r"'([A-Za-z0-9_]+)' does not match any declared element")
_INCOMPLETE = "is not complete"


def _take_incomplete(pending: list[Any]) -> Element | None:
    """Remove and return the parent named by the "not complete" error that follows an unknown
    field, if there is one."""
    for index, error in enumerate(pending):
        if _INCOMPLETE in str(error.reason or error.message):
            node = getattr(error, "elem", None)
            del pending[index]
            return node if isinstance(node, Element) else None
    return None


def _local_or(parent: Element | None, node: Any) -> str:
    if parent is not None:
        return _local(parent.tag)
    return _local(node.tag) if isinstance(node, Element) else "the entity"


class _PathIndex:
    """Dotted paths (`Invoice.Line[0].SalesItemLineDetail.Qty`) of encoded elements."""

    def __init__(self, tree: Element | None, root: str) -> None:
        self._root = root
        self._paths: dict[int, str] = {}
        if tree is not None:
            self._walk(tree, root)

    def _walk(self, node: Element, path: str) -> None:
        self._paths[id(node)] = path
        counts: dict[str, int] = {}
        totals: dict[str, int] = {}
        for child in node:
            totals[_local(child.tag)] = totals.get(_local(child.tag), 0) + 1
        for child in node:
            name = _local(child.tag)
            index = counts.get(name, 0)
            counts[name] = index + 1
            suffix = f"[{index}]" if totals[name] > 1 or name == "Line" else ""
            self._walk(child, f"{path}.{name}{suffix}")

    def parent_of(self, node: Any) -> str:
        path = self.of(node)
        if isinstance(node, Element) and len(node) == 0 and "." in path:
            return path.rsplit(".", 1)[0]
        return path

    def of(self, node: Any) -> str:
        if isinstance(node, Element):
            return self._paths.get(id(node), _local(node.tag))
        return self._root


def _unconsumed(
    data: Mapping[str, Any], tree: Element, path: str, *, errors_at: set[str]
) -> list[str]:
    """Keys the encoder silently ignored (it does so for children of simple-content types such
    as ReferenceType): each is a field the schema does not have."""
    found: list[str] = []
    for key, value in data.items():
        if key == "$":
            continue
        if key.startswith("@"):
            if key[1:] not in tree.attrib and path not in errors_at:
                found.append(f"{path}: attribute {key[1:]!r} is not part of the schema")
            continue
        children = [child for child in tree if _local(child.tag) == key]
        if not children:
            if f"{path}.{key}" not in errors_at:
                found.append(f"{path}.{key}: not a field of {_local(tree.tag)}")
            continue
        items: Sequence[Any] = value if isinstance(value, list) else [value]
        several = len(items) > 1 or key == "Line"
        for index, (item, child) in enumerate(zip(items, children, strict=False)):
            if isinstance(item, Mapping):
                child_path = f"{path}.{key}[{index}]" if several else f"{path}.{key}"
                found.extend(_unconsumed(item, child, child_path, errors_at=errors_at))
    return found


def _unique(lines: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for line in lines:
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


_SCHEMAS: dict[Path, QuickBooksSchema] = {}
_SCHEMAS_LOCK = threading.Lock()


def quickbooks_schema() -> QuickBooksSchema | None:
    """The QBO schema set, loaded once per process (about a second), or None when the shared
    specs are not beside the checkout."""
    path = spec_path(QUICKBOOKS_XSD)
    if path is None:
        return None
    with _SCHEMAS_LOCK:
        schema = _SCHEMAS.get(path)
        if schema is None:
            schema = QuickBooksSchema(path)
            _SCHEMAS[path] = schema
        return schema


def violations(entity_name: str, json_body: Any) -> list[str]:
    """`QuickBooksSchema.violations` on the shared schema; raises LookupError when the XSDs are
    missing (callers that can live without them use `quickbooks_schema()` and test for None)."""
    schema = quickbooks_schema()
    if schema is None:
        raise LookupError(missing_reason(QUICKBOOKS_XSD))
    return schema.violations(entity_name, json_body)
