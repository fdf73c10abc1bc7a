"""forkd Python SDK: the forkd controller's REST API (Controller) and an E2B-shaped Sandbox."""
from .controller import Controller
from .errors import (
    AuthenticationError,
    CapacityError,
    CommandExitError,
    ConflictError,
    ConnectionError,
    ControllerError,
    ForkdSDKError,
    InvalidArgumentError,
    NotFoundError,
    SandboxError,
    TimeoutError,
)
from .sandbox import CommandHandle, CommandResult, Execution, Sandbox

__all__ = [
    "AuthenticationError", "CapacityError", "CommandExitError", "CommandHandle", "CommandResult", "ConflictError",
    "ConnectionError", "Controller", "ControllerError", "Execution", "ForkdSDKError", "InvalidArgumentError",
    "NotFoundError", "Sandbox", "SandboxError", "TimeoutError",
]
__version__ = "0.1.0"
