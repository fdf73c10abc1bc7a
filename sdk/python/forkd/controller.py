"""Typed client for every route of the forkd controller's REST API (standard library only)."""
from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from typing import Any, Dict, Iterator, List, Optional, Union

from .errors import ConnectionError, TimeoutError, error_for

Json = Dict[str, Any]
Body = Union[bytes, str, None]


class Response:
    """A 2xx answer and the connection it came on; close() ends both (from any thread)."""

    def __init__(self, res: http.client.HTTPResponse, conn: http.client.HTTPConnection) -> None:
        self.status = res.status
        self._res = res
        self._conn = conn

    def read(self) -> bytes:
        try:
            return self._res.read()
        finally:
            self.close()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._res)

    def close(self) -> None:
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in another thread
            except OSError:
                pass
        self._res.close()
        self._conn.close()


class ExecStream:
    """A command's events as they happen (NDJSON lines); close() stops it (the guest kills the command)."""

    def __init__(self, res: Response) -> None:
        self._res = res
        self.closed = False

    def __iter__(self) -> Iterator[Json]:
        try:
            for line in self._res:
                line = line.strip()
                if line:
                    yield json.loads(line)
        except (OSError, ValueError, http.client.HTTPException):
            if not self.closed:
                raise
        finally:
            self._res.close()

    def close(self) -> None:
        self.closed = True
        self._res.close()


class Controller:
    """One daemon: `FORKD_URL` (default http://127.0.0.1:8889) and `FORKD_TOKEN` unless given."""

    def __init__(self, base_url: Optional[str] = None, token: Optional[str] = None, timeout: float = 60.0) -> None:
        self.base_url = (base_url or os.environ.get("FORKD_URL") or "http://127.0.0.1:8889").rstrip("/")
        self.token = token if token is not None else os.environ.get("FORKD_TOKEN")
        self.timeout = timeout
        u = urllib.parse.urlsplit(self.base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"FORKD_URL must be http(s)://host:port, got {self.base_url!r}")
        self._scheme, self._host, self._port = u.scheme, u.hostname, u.port
        self._prefix = u.path.rstrip("/")

    # -- transport -------------------------------------------------------------------------------
    def _conn(self, timeout: Optional[float]) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout)

    def raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Optional[Dict[str, Any]] = None,
        raw_body: Body = None,
        headers: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = -1,
    ) -> Response:
        """Send one request; return the open response (2xx) or raise a typed error. timeout=None: no limit."""
        q = {k: ("true" if v is True else "false" if v is False else v) for k, v in (query or {}).items() if v is not None}
        url = f"{self._prefix}{path}" + (f"?{urllib.parse.urlencode(q)}" if q else "")
        h = dict(headers or {})
        if self.token:
            h["authorization"] = f"Bearer {self.token}"
        data: Body = raw_body
        if body is not None:
            h["content-type"] = "application/json"
            data = json.dumps({k: v for k, v in body.items() if v is not None})
        t = self.timeout if timeout == -1 else timeout
        conn = self._conn(t)
        full = f"{self.base_url}{path}"
        try:
            conn.request(method, url, body=data, headers=h)
            res = conn.getresponse()
        except socket.timeout as e:
            conn.close()
            raise TimeoutError(f"{method} {path}: no answer within {t} s") from e
        except OSError as e:
            conn.close()
            raise ConnectionError(
                f"cannot reach the forkd controller at {self.base_url} ({e}); start it: forkd-controller serve"
            ) from e
        if res.status >= 400:
            text = res.read().decode("utf-8", "replace")
            res.close()
            conn.close()
            try:
                parsed: Any = json.loads(text)
            except ValueError:
                parsed = text
            if res.status == 504:
                raise TimeoutError(f"controller {full}: {parsed.get('error') if isinstance(parsed, dict) else text}")
            raise error_for(res.status, parsed, full)
        return Response(res, conn)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        text = self.raw(method, path, **kw).read().decode("utf-8")
        return json.loads(text) if text else None

    # -- system ----------------------------------------------------------------------------------
    def health(self) -> Json:
        return self._json("GET", "/healthz")

    def version(self) -> Json:
        return self._json("GET", "/version")

    def metrics(self) -> str:
        return self.raw("GET", "/metrics").read().decode("utf-8")

    # -- snapshots -------------------------------------------------------------------------------
    def list_snapshots(self) -> List[Json]:
        return self._json("GET", "/v1/snapshots")

    def create_snapshot(
        self,
        tag: str,
        recipe: Optional[str] = None,
        mem_size_mib: Optional[int] = None,
        vcpus: Optional[int] = None,
        warmup: Optional[str] = None,
        warmup_eval: Optional[str] = None,
        net: Optional[bool] = None,
    ) -> Json:
        body = {"tag": tag, "recipe": recipe, "mem_size_mib": mem_size_mib, "vcpus": vcpus, "warmup": warmup,
                "warmup_eval": warmup_eval, "net": net}
        return self._json("POST", "/v1/snapshots", body=body, timeout=600)

    def delete_snapshot(self, tag: str, cascade: bool = False, force: bool = False) -> None:
        self.raw("DELETE", f"/v1/snapshots/{_q(tag)}", query={"cascade": cascade or None, "force": force or None}).read()

    def snapshot_info(self, tag: str) -> Json:
        return self._json("GET", f"/v1/snapshots/{_q(tag)}/info")

    def compact_snapshot(self, tag: str, to: str) -> Json:
        return self._json("POST", f"/v1/snapshots/{_q(tag)}/compact", body={"to": to}, timeout=600)

    # -- sandboxes -------------------------------------------------------------------------------
    def list_sandboxes(self) -> List[Json]:
        return self._json("GET", "/v1/sandboxes")

    def spawn_sandboxes(
        self,
        snapshot_tag: str,
        n: int = 1,
        per_child_netns: Optional[bool] = None,
        network: Optional[Json] = None,
        memory_limit_mib: Optional[int] = None,
        timeout: Optional[int] = None,
        envs: Optional[Dict[str, str]] = None,
        metadata: Optional[Dict[str, str]] = None,
        volumes: Optional[List[str]] = None,
    ) -> List[Json]:
        """n sandboxes; each result has its own ok/error and timings (one bad child does not fail the batch)."""
        body = {"snapshot_tag": snapshot_tag, "n": n, "per_child_netns": per_child_netns, "network": network,
                "memory_limit_mib": memory_limit_mib, "timeout": timeout, "envs": envs, "metadata": metadata,
                "volumes": volumes}
        return self._json("POST", "/v1/sandboxes", body=body, timeout=max(self.timeout, 120 + n * 2))

    def get_sandbox(self, sandbox_id: str) -> Json:
        return self._json("GET", f"/v1/sandboxes/{_q(sandbox_id)}")

    def kill_sandbox(self, sandbox_id: str) -> None:
        self.raw("DELETE", f"/v1/sandboxes/{_q(sandbox_id)}").read()

    def ping_sandbox(self, sandbox_id: str) -> Json:
        return self._json("POST", f"/v1/sandboxes/{_q(sandbox_id)}/ping")

    def update_network(self, sandbox_id: str, policy: Json) -> Json:
        return self._json("PUT", f"/v1/sandboxes/{_q(sandbox_id)}/network", body=policy)

    def set_sandbox_timeout(self, sandbox_id: str, timeout_secs: Optional[int]) -> Json:
        """Seconds from now until the controller kills it; None: never."""
        return self._json("POST", f"/v1/sandboxes/{_q(sandbox_id)}/timeout", raw_body=json.dumps({"timeout": timeout_secs}),
                          headers={"content-type": "application/json"})

    def exec_command(
        self,
        sandbox_id: str,
        cmd: Union[str, List[str]],
        timeout_secs: float = 30,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[str] = None,
    ) -> Json:
        """Run argv (list) or a shell string; returns the buffered result."""
        body = {**_cmd(cmd), "timeout_secs": timeout_secs, "env": env, "cwd": cwd, "stdin": stdin}
        return self._json("POST", f"/v1/sandboxes/{_q(sandbox_id)}/exec", body=body, timeout=timeout_secs + 30)

    def exec_stream(
        self,
        sandbox_id: str,
        cmd: Union[str, List[str]],
        timeout_secs: float = 0,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[str] = None,
    ) -> ExecStream:
        """A command's events as they happen (NDJSON): start, stdout, stderr, exit or error."""
        body = {**_cmd(cmd), "timeout_secs": timeout_secs, "env": env, "cwd": cwd, "stdin": stdin, "stream": True}
        return ExecStream(self.raw("POST", f"/v1/sandboxes/{_q(sandbox_id)}/exec", body=body, timeout=None))

    def eval_code(
        self,
        sandbox_id: str,
        code: str,
        language: Optional[str] = None,
        context: Optional[str] = None,
        timeout_secs: Optional[float] = None,
    ) -> Json:
        body = {"code": code, "language": language, "context": context, "timeout_secs": timeout_secs}
        return self._json("POST", f"/v1/sandboxes/{_q(sandbox_id)}/eval", body=body, timeout=(timeout_secs or 30) + 30)

    def branch_sandbox(
        self,
        sandbox_id: str,
        tag: Optional[str] = None,
        mode: Optional[str] = None,
        wait: Optional[bool] = None,
        parent_tag: Optional[str] = None,
    ) -> Json:
        body = {"tag": tag, "mode": mode, "wait": wait, "parent_tag": parent_tag}
        return self._json("POST", f"/v1/sandboxes/{_q(sandbox_id)}/branch", body=body, timeout=600)

    # -- files -----------------------------------------------------------------------------------
    def read_file(self, sandbox_id: str, path: str) -> bytes:
        return self.raw("GET", f"/v1/sandboxes/{_q(sandbox_id)}/files", query={"path": path}, timeout=None).read()

    def write_file(self, sandbox_id: str, path: str, data: Union[bytes, str], mode: Optional[int] = None) -> Json:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        return self._json("PUT", f"/v1/sandboxes/{_q(sandbox_id)}/files",
                          query={"path": path, "mode": None if mode is None else format(mode, "o")},
                          raw_body=raw, headers={"content-type": "application/octet-stream"}, timeout=None)

    def list_files(self, sandbox_id: str, path: str, depth: int = 1) -> Json:
        return self._json("GET", f"/v1/sandboxes/{_q(sandbox_id)}/files/list", query={"path": path, "depth": depth})

    def stat_file(self, sandbox_id: str, path: str) -> Json:
        return self._json("GET", f"/v1/sandboxes/{_q(sandbox_id)}/files/stat", query={"path": path})

    def remove_file(self, sandbox_id: str, path: str, recursive: bool = False) -> Json:
        return self._json("DELETE", f"/v1/sandboxes/{_q(sandbox_id)}/files", query={"path": path, "recursive": recursive})

    def make_dir(self, sandbox_id: str, path: str) -> Json:
        return self._json("POST", f"/v1/sandboxes/{_q(sandbox_id)}/files/mkdir", body={"path": path})

    # -- workspaces ------------------------------------------------------------------------------
    def list_workspaces(self) -> List[Json]:
        return self._json("GET", "/v1/workspaces")

    def create_workspace(self, name: str, snapshot_tag: str, per_child_netns: Optional[bool] = None,
                         memory_limit_mib: Optional[int] = None, envs: Optional[Dict[str, str]] = None) -> Json:
        body = {"name": name, "snapshot_tag": snapshot_tag, "per_child_netns": per_child_netns,
                "memory_limit_mib": memory_limit_mib, "envs": envs}
        return self._json("POST", "/v1/workspaces", body=body, timeout=120)

    def get_workspace(self, name: str) -> Json:
        return self._json("GET", f"/v1/workspaces/{_q(name)}")

    def delete_workspace(self, name: str) -> None:
        self.raw("DELETE", f"/v1/workspaces/{_q(name)}").read()

    def suspend_workspace(self, name: str, diff: bool = False) -> Json:
        return self._json("POST", f"/v1/workspaces/{_q(name)}/suspend", body={"diff": diff}, timeout=600)

    def resume_workspace(self, name: str) -> Json:
        return self._json("POST", f"/v1/workspaces/{_q(name)}/resume", body={}, timeout=120)


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _cmd(cmd: Union[str, List[str]]) -> Json:
    return {"args": list(cmd)} if isinstance(cmd, (list, tuple)) else {"cmd": cmd}
