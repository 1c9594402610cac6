"""Validate requests an emulator received against a vendor's OpenAPI description (openapi-core).

The vendor files have known defects (see ../shared/reference/contract-validation.md): parameter
defaults outside their own enum (Karbon's `$orderby`), string defaults on booleans (Xero). They are
loaded with the spec self-check off and those defaults dropped, so a valid request is not refused
for the spec's own mistake."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest
from openapi_core.templating.paths.exceptions import PathNotFound
from openapi_core.validation.request.exceptions import SecurityValidationError
from werkzeug.wrappers import Request


def _drop_bad_defaults(node: Any) -> None:
    if isinstance(node, dict):
        schema = node.get("schema") if node.get("in") in {"query", "header", "path"} else None
        if (
            isinstance(schema, dict)
            and "default" in schema
            and schema["default"] not in schema.get("enum", [schema["default"]])
        ):
            del schema["default"]
        for value in node.values():
            _drop_bad_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _drop_bad_defaults(value)


class OpenAPIContract:
    """One vendor description, loaded once; `violations(request)` lists what is wrong."""

    def __init__(self, spec: dict[str, Any], *, path_prefix: str = "") -> None:
        from openapi_core import Config

        _drop_bad_defaults(spec)
        for name, item in list(spec.get("components", {}).get("parameters", {}).items()):
            _drop_bad_defaults({"p": item})
            spec["components"]["parameters"][name] = item
        # any loopback port matches the spec's paths
        spec["servers"] = [
            {
                "url": "http://127.0.0.1:{port}" + path_prefix,
                "variables": {"port": {"default": "80"}},
            }
        ]
        self._api = OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None))
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path, *, path_prefix: str = "") -> OpenAPIContract:
        if path.suffix in {".yaml", ".yml"}:
            import yaml

            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            spec = yaml.load(path.read_text(), Loader=loader)
        else:
            spec = json.loads(path.read_text())
        return cls(spec, path_prefix=path_prefix)

    def violations(self, request: Request) -> list[str]:
        """Empty when the vendor would accept the request's shape; otherwise one line per fault."""
        host = urlsplit(request.host_url).hostname or ""
        if host not in {"127.0.0.1", "localhost"}:
            return [f"request to unexpected host {host}"]
        with self._lock:  # openapi-core caches lazily; keep its first use single-threaded
            try:
                self._api.validate_request(WerkzeugOpenAPIRequest(request))
            except PathNotFound:
                return [f"{request.method} {request.path} is not an operation in the spec"]
            except SecurityValidationError as exc:
                return [f"security: {exc}"]
            except Exception as exc:  # openapi-core raises a family of validation errors
                return _describe(exc)
        return []


def _describe(exc: BaseException) -> list[str]:
    cause = exc.__cause__
    schema_errors = getattr(cause, "schema_errors", None) or getattr(exc, "schema_errors", None)
    if schema_errors:
        lines = []
        for err in schema_errors:
            where = "/".join(str(p) for p in err.absolute_path) or "(value)"
            lines.append(f"{type(exc).__name__} at {where}: {err.message}")
        return lines
    detail = f": {cause}" if cause else ""
    return [f"{type(exc).__name__}: {exc}{detail}"]
