"""Check a request against Stripe's OpenAPI description (`stripe/spec3.yaml`): decode the form
body or query string into nested values, cast them by the schema, validate, and say what Stripe
would answer (`parameter_unknown`, `parameter_missing`, invalid integer or enum...).

The file is Stripe's v524 release (API 2023-08-16, see ../shared/specs/SOURCES.md) and its request
bodies are `additionalProperties: false`, while stripe 16.1.0 speaks `2026-10-28.endive`. Newer
parameters the SDK really sends are added by `ALLOWLIST` (each with its changelog source), and
parameters endive removed are refused by `REMOVED` with the error code Stripe gives. Parsing the
4 MB YAML takes about 2 s, so a JSON copy is cached (keyed by the file's SHA-256) and loaded in
about 0.05 s. Method as in ../shared/reference/contract-validation.md section 2c."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from adapters.emulation.specs import spec_path

__all__ = [
    "ALLOWLIST",
    "QUERY_ALLOWLIST",
    "REMOVED",
    "SPEC",
    "Check",
    "StripeSpec",
    "Violation",
    "cache_dir",
    "decode_form",
    "stripe_spec",
]

SPEC = "stripe/spec3.yaml"
FORM = "application/x-www-form-urlencoded"

_PM_TYPES_SOURCE = ("post", "/v1/payment_intents", "payment_method_types")


def _copy_of(method: str, path: str, name: str) -> dict[str, Any]:
    """A schema to take from another operation's parameter in the same spec (resolved on load)."""
    return {"x-copy-of": [method, path, name]}


# Body parameters newer than the 2023-08-16 spec that endive needs, per operation. Each is
# accepted with the schema given (or a copy of an existing parameter's schema).
ALLOWLIST: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    # "allowed_payment_method_types": added in 2026-07-29.dahlia, "filters incompatible types
    # silently" (docs.stripe.com/changelog/dahlia/2026-07-29/allowed-payment-method-types-
    # parameter); stripe-python 16.1.0 has it on PaymentIntent create/update/confirm, SetupIntent
    # create/update/confirm and Checkout Session create (stripe/params/*_params.py). Its values
    # are payment method types, so it takes the old `payment_method_types` item schema.
    ("post", "/v1/payment_intents"): {
        "allowed_payment_method_types": _copy_of(*_PM_TYPES_SOURCE),
    },
    ("post", "/v1/payment_intents/{intent}"): {
        "allowed_payment_method_types": _copy_of(*_PM_TYPES_SOURCE),
    },
    ("post", "/v1/payment_intents/{intent}/confirm"): {
        "allowed_payment_method_types": _copy_of(*_PM_TYPES_SOURCE),
    },
    ("post", "/v1/setup_intents"): {
        "allowed_payment_method_types": _copy_of(*_PM_TYPES_SOURCE),
    },
    ("post", "/v1/setup_intents/{intent}"): {
        "allowed_payment_method_types": _copy_of(*_PM_TYPES_SOURCE),
    },
    ("post", "/v1/setup_intents/{intent}/confirm"): {
        "allowed_payment_method_types": _copy_of(*_PM_TYPES_SOURCE),
    },
    ("post", "/v1/checkout/sessions"): {
        "allowed_payment_method_types": _copy_of(
            "post", "/v1/checkout/sessions", "payment_method_types"
        ),
    },
}

# Query parameters newer than the spec, per operation.
QUERY_ALLOWLIST: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    # Listing Checkout Sessions by `status` and `created`: not in the 2023 spec; stripe-python
    # 16.1.0 SessionListParams has both (stripe/params/checkout/_session_list_params.py, generated
    # from Stripe's current OpenAPI description). The `created` schema is the usual range.
    ("get", "/v1/checkout/sessions"): {
        "status": {"type": "string", "enum": ["complete", "expired", "open"]},
        "created": {"x-copy-of-query": ["get", "/v1/payment_intents", "created"]},
    },
}

# Parameters endive refuses though the 2023 spec has them: (method, path) -> {name: error code}.
# "Removes payment_method_types as a writable parameter from the create, update, and confirm
# methods on Payment Intents, and from the create and update methods on Setup Intents. Passing
# payment_method_types now returns a 400 error with the code
# payment_method_types_no_longer_supported" (docs.stripe.com/changelog/dahlia/2026-08-26/removes-
# payment-method-types-parameter-from-payment-intents-setup-intents; carried into endive). The
# Checkout Session's create lost it in endive too (stripe-node 23.0.0 / stripe-python 16.1.0
# dropped it from SessionCreateParams); the changelog names no code there, so the same one is used.
_NO_PM_TYPES = {"payment_method_types": "payment_method_types_no_longer_supported"}
REMOVED: dict[tuple[str, str], dict[str, str]] = {
    ("post", "/v1/payment_intents"): _NO_PM_TYPES,
    ("post", "/v1/payment_intents/{intent}"): _NO_PM_TYPES,
    ("post", "/v1/payment_intents/{intent}/confirm"): _NO_PM_TYPES,
    ("post", "/v1/setup_intents"): _NO_PM_TYPES,
    ("post", "/v1/setup_intents/{intent}"): _NO_PM_TYPES,
    ("post", "/v1/checkout/sessions"): _NO_PM_TYPES,
}


@dataclass(frozen=True)
class Violation:
    """One thing Stripe would refuse: `param` in bracket form (`metadata[k]`), Stripe's error
    `code` when it has one, and the message Stripe's wording is modelled on."""

    param: str | None
    message: str
    code: str | None = None

    def __str__(self) -> str:
        return f"{self.param or '(request)'}: {self.message}"


@dataclass
class Check:
    """The outcome of checking one request: the operation it matched (`template`, e.g.
    `/v1/payment_intents/{intent}`), its path parameters, the decoded and cast parameters
    (body for POST, query for GET/DELETE) and what Stripe would refuse."""

    template: str | None
    path_params: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# form decoding


_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def _split_key(key: str) -> list[str] | None:
    match = _KEY.match(key)
    if match is None:
        return None
    parts = [match.group(1)]
    parts.extend(re.findall(r"\[([^\[\]]*)\]", match.group(2)))
    return parts


def decode_form(text: str) -> dict[str, Any]:
    """Stripe's bracket encoding (`a[b][0][c]=v`, what stripe-python sends) into nested dicts.
    Lists stay dicts keyed by digit strings here (`{"0": ...}`); casting by the schema turns
    them into lists, so digit-keyed metadata stays a dict. `a[]=v` appends. Later keys win."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        parts = _split_key(key)
        if parts is None:
            root[key] = value
            continue
        node: Any = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if part == "":
                part = str(len(node)) if isinstance(node, dict) else "0"
            if last:
                if isinstance(node, dict):
                    node[part] = value
            else:
                child = node.get(part) if isinstance(node, dict) else None
                if not isinstance(child, dict):
                    child = {}
                    if isinstance(node, dict):
                        node[part] = child
                node = child
    return root


def _bracket(path: Iterable[Any]) -> str:
    parts = [str(p) for p in path]
    if not parts:
        return ""
    return parts[0] + "".join(f"[{p}]" for p in parts[1:])


# ---------------------------------------------------------------------------------------------
# casting by schema


def _is_digit_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(k.isdigit() for k in value)


def _as_list(value: dict[str, Any]) -> list[Any]:
    return [value[k] for k in sorted(value, key=int)]


_INT = re.compile(r"^-?\d+$")
_NUM = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _Caster:
    def __init__(self, spec: Mapping[str, Any], valid: Any) -> None:
        self._spec = spec
        self._valid = valid  # callable(schema, instance) -> bool

    def resolve(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 20:
            ref = schema["$ref"].removeprefix("urn:stripe-spec3")
            if not ref.startswith("#/"):
                break
            node: Any = self._spec
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            schema = node
            seen += 1
        return schema

    def cast(self, value: Any, schema: Any) -> Any:
        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return value
        branches = schema.get("anyOf") or schema.get("oneOf")
        if branches:
            candidates = []
            for branch in branches:
                candidate = self.cast(value, branch)
                if self._valid(branch, candidate):
                    return candidate
                candidates.append(candidate)
            # none fits: keep the cast by the first non-empty-string branch, for its message
            return candidates[0] if candidates else value
        kind = schema.get("type")
        if kind == "array" or (kind is None and "items" in schema):
            if _is_digit_dict(value):
                value = _as_list(value)
            if isinstance(value, list):
                return [self.cast(item, schema.get("items", {})) for item in value]
            return value
        if kind == "object" or (kind is None and "properties" in schema):
            if not isinstance(value, dict):
                return value
            props = schema.get("properties", {})
            extra = schema.get("additionalProperties")
            out: dict[str, Any] = {}
            for key, item in value.items():
                if key in props:
                    out[key] = self.cast(item, props[key])
                elif isinstance(extra, dict):
                    out[key] = self.cast(item, extra)
                else:
                    out[key] = item
            return out
        if not isinstance(value, str):
            return value
        if kind == "integer" and _INT.match(value):
            return int(value)
        if kind == "number" and _NUM.match(value):
            number = float(value)
            return int(number) if number.is_integer() and "." not in value else number
        if kind == "boolean" and value in {"true", "false"}:
            return value == "true"
        return value


# ---------------------------------------------------------------------------------------------
# the spec


def cache_dir() -> Path:
    """Where the JSON copy of the spec is kept: $XDG_CACHE_HOME/milestone-sync, else
    ~/.cache/milestone-sync."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base).expanduser() if base else Path.home() / ".cache"
    return root / "milestone-sync"


def _load_document(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if path.suffix == ".json":
        return json.loads(raw)
    digest = hashlib.sha256(raw).hexdigest()[:20]
    cached = cache_dir() / f"stripe-spec3-{digest}.json"
    try:
        return json.loads(cached.read_bytes())
    except (OSError, ValueError):
        pass
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document = yaml.load(raw, Loader=loader)
    try:  # a cache that cannot be written only costs the 2 s again next time
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".stripe-spec3-", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle)
        os.replace(tmp, cached)
    except OSError:
        pass
    return document


def _template_pattern(template: str) -> re.Pattern[str]:
    pieces = re.split(r"\{([^}]+)\}", template)
    regex = "".join(
        re.escape(piece) if i % 2 == 0 else f"(?P<{piece}>[^/]+)" for i, piece in enumerate(pieces)
    )
    return re.compile(f"^{regex}$")


def _absolute_refs(node: Any) -> Any:
    """Point a copied schema's local `$ref`s at the whole spec held in the registry."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            node["$ref"] = "urn:stripe-spec3" + ref
        for value in node.values():
            _absolute_refs(value)
    elif isinstance(node, list):
        for value in node:
            _absolute_refs(value)
    return node


@dataclass
class _Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    literal_segments: int
    body_schema: dict[str, Any] | None
    query: dict[str, dict[str, Any]]  # name -> {"schema":..., "required": bool}
    removed: dict[str, str]


class StripeSpec:
    """Stripe's API description as a request checker; `check(method, path, query, body)`."""

    def __init__(self, document: dict[str, Any]) -> None:
        from openapi_schema_validator import OAS30Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT4

        self.document = document
        self.version = str(document.get("info", {}).get("version", ""))
        resource = Resource.from_contents(document, default_specification=DRAFT4)
        self._registry = Registry().with_resource("urn:stripe-spec3", resource)
        self._validator_cls = OAS30Validator
        self._validators: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._caster = _Caster(document, self._is_valid)
        self._operations: list[_Operation] = []
        self._build()

    # -- construction ---------------------------------------------------------------------

    def _build(self) -> None:
        for template, item in self.document.get("paths", {}).items():
            for method, op in item.items():
                if method not in {"get", "post", "delete"} or not isinstance(op, dict):
                    continue
                body = op.get("requestBody", {}).get("content", {}).get(FORM, {}).get("schema")
                if body is not None:
                    body = _absolute_refs(copy.deepcopy(self._caster.resolve(body)))
                    for name, schema in ALLOWLIST.get((method, template), {}).items():
                        body.setdefault("properties", {})[name] = _absolute_refs(
                            self._materialise(schema)
                        )
                query: dict[str, dict[str, Any]] = {}
                for param in op.get("parameters", []):
                    param = self._caster.resolve(param)
                    if param.get("in") == "query":
                        query[param["name"]] = {
                            "schema": _absolute_refs(copy.deepcopy(param.get("schema", {}))),
                            "required": bool(param.get("required")),
                        }
                for name, schema in QUERY_ALLOWLIST.get((method, template), {}).items():
                    query[name] = {
                        "schema": _absolute_refs(self._materialise(schema)),
                        "required": False,
                    }
                self._operations.append(
                    _Operation(
                        method=method,
                        template=template,
                        pattern=_template_pattern(template),
                        literal_segments=template.count("/") - template.count("{"),
                        body_schema=body,
                        query=query,
                        removed=REMOVED.get((method, template), {}),
                    )
                )
        # literal paths (/v1/customers/search) before templates (/v1/customers/{customer})
        self._operations.sort(key=lambda o: -o.literal_segments)

    def _materialise(self, schema: dict[str, Any]) -> dict[str, Any]:
        if "x-copy-of" in schema:
            method, path, name = schema["x-copy-of"]
            op = self.document["paths"][path][method]
            body = self._caster.resolve(op["requestBody"]["content"][FORM]["schema"])
            return copy.deepcopy(body["properties"][name])
        if "x-copy-of-query" in schema:
            method, path, name = schema["x-copy-of-query"]
            for param in self.document["paths"][path][method].get("parameters", []):
                if param.get("name") == name:
                    return copy.deepcopy(param["schema"])
            raise KeyError(name)
        return schema

    @classmethod
    def from_file(cls, path: Path) -> StripeSpec:
        return cls(_load_document(path))

    # -- validation -----------------------------------------------------------------------

    def _validator(self, schema: dict[str, Any]) -> Any:
        key = id(schema)
        with self._lock:
            entry = self._validators.get(key)
            if entry is None:
                # keep the schema alive with its validator so its id() is never reused
                entry = (self._validator_cls(schema, registry=self._registry), schema)
                self._validators[key] = entry
        return entry[0]

    def _is_valid(self, schema: Any, instance: Any) -> bool:
        schema = self._caster.resolve(schema)
        if not isinstance(schema, dict):
            return True
        return bool(self._validator(schema).is_valid(instance))

    def operation(self, method: str, path: str) -> tuple[str, dict[str, str]] | None:
        """The spec's path template for a request path, with its path parameters."""
        for op in self._operations:
            if op.method != method.lower():
                continue
            match = op.pattern.match(path)
            if match:
                return op.template, {k: unquote(v) for k, v in match.groupdict().items()}
        return None

    def _find(self, method: str, path: str) -> tuple[_Operation, dict[str, str]] | None:
        for op in self._operations:
            if op.method != method.lower():
                continue
            match = op.pattern.match(path)
            if match:
                return op, {k: unquote(v) for k, v in match.groupdict().items()}
        return None

    def check(self, method: str, path: str, query: str, body: str) -> Check:
        """Decode and validate one request; POST parameters come from the form body, GET and
        DELETE parameters from the query string (as stripe-python sends them)."""
        found = self._find(method, path)
        if found is None:
            return Check(
                template=None,
                violations=[Violation(None, f"Unrecognized request URL ({method} {path}).", None)],
            )
        op, path_params = found
        result = Check(template=op.template, path_params=path_params)
        if method.upper() == "POST":
            raw = decode_form(body)
            if query:  # Stripe reads POST parameters from the body only
                result.violations.extend(
                    Violation(k, f"Received unknown parameter: {k}", "parameter_unknown")
                    for k in decode_form(query)
                )
            schema = op.body_schema or {"type": "object", "properties": {}}
            for name, code in op.removed.items():
                if name in raw:
                    result.violations.append(
                        Violation(
                            name,
                            f"The parameter `{name}` is no longer supported on this API "
                            f"version (2026-10-28.endive): use `allowed_payment_method_types`"
                            " instead.",
                            code,
                        )
                    )
                    raw.pop(name)
            params = self._caster.cast(raw, schema)
            result.params = params if isinstance(params, dict) else {}
            result.violations.extend(self._schema_violations(schema, result.params))
        else:
            raw = decode_form(query)
            if body.strip():
                result.violations.append(
                    Violation(None, "A GET or DELETE request takes no body.", None)
                )
            params: dict[str, Any] = {}
            for name, value in raw.items():
                declared = op.query.get(name)
                if declared is None:
                    result.violations.append(
                        Violation(name, f"Received unknown parameter: {name}", "parameter_unknown")
                    )
                    continue
                cast = self._caster.cast(value, declared["schema"])
                params[name] = cast
                for v in self._schema_violations(declared["schema"], cast, prefix=[name]):
                    result.violations.append(v)
            for name, declared in op.query.items():
                if declared["required"] and name not in raw:
                    result.violations.append(
                        Violation(name, f"Missing required param: {name}.", "parameter_missing")
                    )
            result.params = params
        return result

    def _schema_violations(
        self, schema: dict[str, Any], instance: Any, prefix: list[Any] | None = None
    ) -> list[Violation]:
        from jsonschema.exceptions import best_match

        validator = self._validator(schema)
        out: list[Violation] = []
        for error in validator.iter_errors(instance):
            chosen = best_match([error]) if error.context else error
            while chosen.context:
                deeper = best_match(chosen.context)
                if deeper is None or deeper is chosen:
                    break
                chosen = deeper
            out.append(_describe(chosen, prefix or []))
        return out


def _describe(error: Any, prefix: list[Any]) -> Violation:
    path = [*prefix, *error.absolute_path]
    param = _bracket(path) or None
    kind = error.validator
    if kind == "additionalProperties":
        props = set(error.schema.get("properties", {}))
        extras = [k for k in error.instance if k not in props]
        name = _bracket([*path, extras[0]]) if extras else param
        return Violation(name, f"Received unknown parameter: {name}", "parameter_unknown")
    if kind == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        name = _bracket([*path, missing[0]]) if missing else param
        return Violation(name, f"Missing required param: {name}.", "parameter_missing")
    if kind == "type":
        expected = error.validator_value
        value = error.instance
        if expected == "integer":
            return Violation(param, f"Invalid integer: {value}", "parameter_invalid_integer")
        if expected == "boolean":
            return Violation(param, f"Invalid boolean: {value}", None)
        if expected == "object":
            return Violation(param, f"Invalid object: {param} must be a dictionary (hash)", None)
        if expected == "array":
            return Violation(param, f"Invalid array: {param} must be an array", None)
        return Violation(param, f"Invalid {expected}: {value}", None)
    if kind == "enum":
        options = [str(o) for o in error.validator_value if o != ""] or ['""']
        if len(options) > 2:
            shown = ", ".join(options[:-1]) + f", or {options[-1]}"
        else:
            shown = " or ".join(options)
        return Violation(param, f"Invalid {param}: must be one of {shown}", None)
    if kind == "maxLength":
        return Violation(
            param,
            f"Invalid string: {str(error.instance)[:20]}...; must be at most "
            f"{error.validator_value} characters",
            None,
        )
    return Violation(param, f"Invalid {param}: {error.message}", None)


_SPECS: dict[Path, StripeSpec] = {}
_SPECS_LOCK = threading.Lock()


def stripe_spec(path: Path | None = None) -> StripeSpec | None:
    """Stripe's spec from ../shared/specs (or `path`), loaded once per process; None when the
    file is not there (tests then skip with `missing_reason(SPEC)`)."""
    target = path or spec_path(SPEC)
    if target is None:
        return None
    with _SPECS_LOCK:
        loaded = _SPECS.get(target)
        if loaded is None:
            loaded = StripeSpec.from_file(target)
            _SPECS[target] = loaded
        return loaded
