"""A sandbox with E2B's method names: Sandbox.create(), sandbox.commands.run(), sandbox.files.*,
sandbox.run_code(); plus what forkd adds: sandbox.branch() and Sandbox.fork(n) from a warm snapshot."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

from .controller import Controller, Json
from .errors import CommandExitError, ForkdSDKError, NotFoundError, SandboxError

DEFAULT_TIMEOUT = 300  # seconds, as E2B


@dataclass
class CommandResult:
    exit_code: Optional[int]
    stdout: str
    stderr: str
    error: Optional[str] = None


@dataclass
class ExecutionError:
    name: str
    value: str
    traceback: str


@dataclass
class Result:
    text: Optional[str]
    json: Any = None
    is_main_result: bool = True


@dataclass
class Logs:
    stdout: List[str] = field(default_factory=list)
    stderr: List[str] = field(default_factory=list)


@dataclass
class Execution:
    """What run_code returns (shaped like E2B code-interpreter's Execution)."""

    text: Optional[str]
    results: List[Result]
    logs: Logs
    error: Optional[ExecutionError]


class CommandHandle:
    """A running command (commands.run(cmd, background=True)); output is collected as it arrives."""

    def __init__(self, controller: Controller, sandbox_id: str, cmd: str, timeout: float, cwd: Optional[str],
                 envs: Optional[Dict[str, str]], stdin: Optional[str],
                 on_stdout: Optional[Callable[[str], None]], on_stderr: Optional[Callable[[str], None]]) -> None:
        self.pid: Optional[int] = None
        self.stdout = ""
        self.stderr = ""
        self.exit_code: Optional[int] = None
        self.error: Optional[str] = None
        self._failure: Optional[BaseException] = None
        self._killed = False
        self._events = controller.exec_stream(sandbox_id, cmd, timeout_secs=timeout, env=envs, cwd=cwd, stdin=stdin)
        self._on = (on_stdout, on_stderr)
        self._timeout = timeout
        self._thread = threading.Thread(target=self._follow, daemon=True)  # reads the stream until it ends
        self._thread.start()

    def _follow(self) -> None:
        try:
            for ev in self._events:
                t = ev.get("type")
                if t == "start":
                    self.pid = ev.get("pid")
                elif t == "stdout":
                    self.stdout += ev["data"]
                    if self._on[0]:
                        self._on[0](ev["data"])
                elif t == "stderr":
                    self.stderr += ev["data"]
                    if self._on[1]:
                        self._on[1](ev["data"])
                elif t == "error":
                    self.error = ev.get("error")
                elif t == "exit":
                    self.exit_code = ev.get("exit_code")
                    if ev.get("timed_out"):
                        self.error = f"timed out after {self._timeout} s"
                    elif ev.get("signal"):
                        self.error = f"killed by {ev['signal']}"
        except BaseException as e:  # noqa: BLE001 - handed to wait()
            if self._killed:
                self.error = "disconnected"
            else:
                self._failure = e

    def wait(self) -> CommandResult:
        """Wait for the command; raises CommandExitError when it did not exit 0 (E2B semantics)."""
        self._thread.join()
        if self._failure:
            raise self._failure
        r = CommandResult(self.exit_code, self.stdout, self.stderr, self.error)
        if r.exit_code != 0:
            raise CommandExitError({"exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr, "error": r.error})
        return r

    def kill(self) -> bool:
        """Stop following the output; closing the stream ends the command (its process group) in the guest."""
        self._killed = True
        self._events.close()
        return True


class Commands:
    """sandbox.commands"""

    def __init__(self, controller: Controller, sandbox_id: str) -> None:
        self._c = controller
        self._id = sandbox_id

    def run(self, cmd: str, background: bool = False, cwd: Optional[str] = None, envs: Optional[Dict[str, str]] = None,
            timeout: float = 60, stdin: Optional[str] = None, on_stdout: Optional[Callable[[str], None]] = None,
            on_stderr: Optional[Callable[[str], None]] = None) -> Union[CommandResult, CommandHandle]:
        """Run a shell command; with background=True returns a handle at once."""
        h = CommandHandle(self._c, self._id, cmd, timeout, cwd, envs, stdin, on_stdout, on_stderr)
        return h if background else h.wait()


class Filesystem:
    """sandbox.files"""

    def __init__(self, controller: Controller, sandbox_id: str) -> None:
        self._c = controller
        self._id = sandbox_id

    def read(self, path: str, format: str = "text") -> Union[str, bytes]:  # noqa: A002 - E2B's name
        data = self._c.read_file(self._id, path)
        return data if format == "bytes" else data.decode("utf-8")

    def write(self, path: str, data: Union[str, bytes], mode: Optional[int] = None) -> Json:
        """Write a file (parent dirs are created)."""
        return self._c.write_file(self._id, path, data, mode)

    def list(self, path: str, depth: int = 1) -> List[Json]:
        return self._c.list_files(self._id, path, depth)["entries"]

    def exists(self, path: str) -> bool:
        try:
            self._c.stat_file(self._id, path)
            return True
        except NotFoundError:
            return False

    def get_info(self, path: str) -> Json:
        return self._c.stat_file(self._id, path)

    def remove(self, path: str, recursive: bool = True) -> None:
        self._c.remove_file(self._id, path, recursive)

    def make_dir(self, path: str) -> bool:
        """Create a directory (and parents); False when it already existed, as E2B."""
        existed = self.exists(path)
        self._c.make_dir(self._id, path)
        return not existed


class Sandbox:
    def __init__(self, controller: Controller, info: Json) -> None:
        self.controller = controller
        self.info = info
        self.commands = Commands(controller, info["id"])
        self.files = Filesystem(controller, info["id"])

    @property
    def sandbox_id(self) -> str:
        return self.info["id"]

    @classmethod
    def create(cls, template: Optional[str] = None, timeout: int = DEFAULT_TIMEOUT, **opts: Any) -> "Sandbox":
        sb = cls.fork(1, template=template, timeout=timeout, **opts)[0]
        if isinstance(sb, BaseException):
            raise sb
        return sb

    @classmethod
    def fork(cls, n: int, template: Optional[str] = None, timeout: int = DEFAULT_TIMEOUT,
             envs: Optional[Dict[str, str]] = None, metadata: Optional[Dict[str, str]] = None,
             per_child_netns: Optional[bool] = None, network: Optional[Json] = None,
             memory_limit_mib: Optional[int] = None, snapshot_tag: Optional[str] = None,
             base_url: Optional[str] = None, token: Optional[str] = None) -> "List[Union[Sandbox, ForkdSDKError]]":
        """n sandboxes from one snapshot in one call; each element is a Sandbox or the error that child hit."""
        tag = snapshot_tag or template
        if not tag:
            raise TypeError("Sandbox.create needs a snapshot: pass template= (or snapshot_tag=)")
        c = Controller(base_url, token)
        res = c.spawn_sandboxes(tag, n, per_child_netns=per_child_netns, network=network,
                                memory_limit_mib=memory_limit_mib, timeout=timeout if timeout > 0 else None,
                                envs=envs, metadata=metadata)
        return [cls(c, r) if r.get("ok") else SandboxError(500, r, c.base_url, r.get("error")) for r in res]

    @classmethod
    def connect(cls, sandbox_id: str, base_url: Optional[str] = None, token: Optional[str] = None) -> "Sandbox":
        c = Controller(base_url, token)
        return cls(c, c.get_sandbox(sandbox_id))

    @staticmethod
    def list(base_url: Optional[str] = None, token: Optional[str] = None) -> List[Json]:
        return Controller(base_url, token).list_sandboxes()

    def run_code(self, code: str, language: str = "python", context: Optional[str] = None,
                 timeout: float = 60) -> Execution:
        """Run code in the sandbox's warm interpreter (state persists across calls in a context)."""
        lang = "js" if language in ("js", "javascript") else language
        r = self.controller.eval_code(self.sandbox_id, code, language=lang, context=context, timeout_secs=timeout)
        text = r.get("result")
        return Execution(
            text=text,
            results=[] if text is None else [Result(text=text, json=r.get("result_json"))],
            logs=Logs(stdout=[r["stdout"]] if r.get("stdout") else [], stderr=[r["stderr"]] if r.get("stderr") else []),
            error=ExecutionError(r.get("error_type") or "Error", r["error"], r.get("traceback") or "") if r.get("error") else None,
        )

    def branch(self, tag: Optional[str] = None, mode: Optional[str] = None, wait: Optional[bool] = None) -> Json:
        """Snapshot this running sandbox into a new tag that children can be forked from."""
        return self.controller.branch_sandbox(self.sandbox_id, tag=tag, mode=mode, wait=wait)

    def update_network(self, allow_out: Optional[List[str]] = None, deny_out: Optional[List[str]] = None,
                       allow_internet_access: Optional[bool] = None) -> Json:
        body = {"allow_out": allow_out or [], "deny_out": deny_out or []}
        if allow_internet_access is not None:
            body["allow_internet_access"] = allow_internet_access
        return self.controller.update_network(self.sandbox_id, body)

    def set_timeout(self, timeout: int) -> None:
        self.controller.set_sandbox_timeout(self.sandbox_id, timeout)

    def is_running(self) -> bool:
        try:
            return self.controller.get_sandbox(self.sandbox_id).get("status") == "running"
        except ForkdSDKError:
            return False

    def get_info(self) -> Json:
        return self.controller.get_sandbox(self.sandbox_id)

    def kill(self) -> bool:
        """Kill the sandbox. Idempotent: False if it was already gone."""
        try:
            self.controller.kill_sandbox(self.sandbox_id)
            return True
        except NotFoundError:
            return False

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
