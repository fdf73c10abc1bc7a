"""Typed errors, matching the TypeScript SDK's: every failed controller call raises a ControllerError
(HTTP status, the controller's error/code/hint, URL); the common statuses get their own subclass."""
from __future__ import annotations

import json
from typing import Any, Dict, Optional


class ForkdSDKError(Exception):
    """Base of every error this SDK raises."""


class ControllerError(ForkdSDKError):
    def __init__(self, status: int, body: Any, url: str, message: Optional[str] = None) -> None:
        self.status = status
        self.body = body
        self.url = url
        super().__init__(message or f"controller {url}: HTTP {status}: {_error_text(body)}")

    @property
    def code(self) -> Optional[str]:
        """The controller's machine-readable code (bad_input, not_found, conflict, ...)."""
        return self.body.get("code") if isinstance(self.body, dict) else None

    @property
    def hint(self) -> Optional[str]:
        return self.body.get("hint") if isinstance(self.body, dict) else None


class InvalidArgumentError(ControllerError):
    pass


class AuthenticationError(ControllerError):
    pass


class NotFoundError(ControllerError):
    pass


class ConflictError(ControllerError):
    pass


class CapacityError(ControllerError):
    pass


class SandboxError(ControllerError):
    pass


class TimeoutError(ForkdSDKError):  # noqa: A001 - the TS SDK's name
    """A request did not complete in time (client-side timeout or the controller's 504)."""


class ConnectionError(ForkdSDKError):  # noqa: A001
    """The controller could not be reached."""


class CommandExitError(ForkdSDKError):
    """commands.run of a command that exited non-zero (E2B semantics); carries the full result."""

    def __init__(self, result: "Dict[str, Any]") -> None:
        self.result = result
        tail = (result.get("stderr") or "").strip()[-500:]
        code = result.get("exit_code")
        super().__init__(f"command exited with {code if code is not None else 'a signal'}" + (f": {tail}" if tail else ""))

    @property
    def exit_code(self) -> Optional[int]:
        return self.result.get("exit_code")

    @property
    def stdout(self) -> str:
        return self.result.get("stdout", "")

    @property
    def stderr(self) -> str:
        return self.result.get("stderr", "")


def _error_text(body: Any) -> str:
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return body if isinstance(body, str) else json.dumps(body)


def error_for(status: int, body: Any, url: str) -> ControllerError:
    if status in (400, 415, 422):
        cls = InvalidArgumentError
    elif status in (401, 403):
        cls = AuthenticationError
    elif status == 404:
        cls = NotFoundError
    elif status == 409:
        cls = ConflictError
    elif status in (503, 507):
        cls = CapacityError
    else:
        cls = SandboxError
    return cls(status, body, url)
