"""The forkd Python SDK against a real daemon with real VMs (run by test/vm/controller.test.ts with
FORKD_URL and FORKD_TEST_TAG set): the same scenario as the TypeScript SDK's test, plus every kind of
typed error."""
import os
import threading
import unittest

import forkd
from forkd import CommandExitError, Controller, NotFoundError, InvalidArgumentError, Sandbox

URL = os.environ["FORKD_URL"]
TAG = os.environ["FORKD_TEST_TAG"]


class SandboxTest(unittest.TestCase):
    def test_e2b_shaped_sandbox(self):
        with Sandbox.create(template=TAG, timeout=120, base_url=URL) as sb:
            chunks = []
            r = sb.commands.run("echo one; echo two", on_stdout=chunks.append)
            self.assertEqual(r.exit_code, 0)
            self.assertEqual("".join(chunks), "one\ntwo\n")
            with self.assertRaises(CommandExitError) as cm:
                sb.commands.run("echo bad >&2; exit 4")
            self.assertEqual((cm.exception.exit_code, cm.exception.stderr), (4, "bad\n"))
            self.assertEqual(sb.commands.run("pwd; echo $X", cwd="/tmp", envs={"X": "y"}).stdout, "/tmp\ny\n")
            bg = sb.commands.run("sleep 0.3; echo bg", background=True)
            self.assertEqual(bg.wait().stdout, "bg\n")
            slow = sb.commands.run("sleep 30", background=True)
            self.assertTrue(slow.kill())

            sb.files.write("/root/sdk.txt", "sdk-data")
            self.assertEqual(sb.files.read("/root/sdk.txt"), "sdk-data")
            sb.files.write("/root/bin.dat", bytes(range(256)))
            self.assertEqual(sb.files.read("/root/bin.dat", format="bytes"), bytes(range(256)))
            self.assertTrue(sb.files.exists("/root/sdk.txt"))
            self.assertTrue(sb.files.make_dir("/root/newdir"))
            self.assertFalse(sb.files.make_dir("/root/newdir"))
            self.assertIn("newdir", [e["name"] for e in sb.files.list("/root")])
            sb.files.remove("/root/sdk.txt")
            self.assertFalse(sb.files.exists("/root/sdk.txt"))

            ex = sb.run_code("y = 6 * 7\ny")
            self.assertEqual(ex.text, "42")
            self.assertEqual(ex.results[0].json, 42)
            err = sb.run_code('raise ValueError("nope")')
            self.assertEqual(err.error.name, "ValueError")
            self.assertIn("nope", err.error.traceback)
            self.assertEqual(sb.run_code("[1, 2].length", language="javascript").text, "2")

            snap = sb.branch(tag="py-sdk-branch", mode="live")
            self.assertEqual(snap["status"], "ready")
            kids = Sandbox.fork(2, template="py-sdk-branch", base_url=URL)
            for k in kids:
                self.assertIsInstance(k, Sandbox)
                self.assertEqual(k.run_code("y").text, "42")
                self.assertTrue(k.kill())
                self.assertFalse(k.kill(), "kill is idempotent")
        self.assertFalse(sb.is_running(), "the context manager killed it")
        Controller(URL).delete_snapshot("py-sdk-branch")

    def test_fan_out(self):
        """The README's example: children evaluating something at once, results gathered."""
        kids = Sandbox.fork(3, template=TAG, base_url=URL, timeout=120)
        try:
            results = {}

            def work(i, sb):
                results[i] = sb.run_code(f"sum(range({i} * 10))").text

            threads = [threading.Thread(target=work, args=(i, k)) for i, k in enumerate(kids)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(results, {i: str(sum(range(i * 10))) for i in range(3)})
        finally:
            for k in kids:
                if isinstance(k, Sandbox):
                    k.kill()


class ControllerTest(unittest.TestCase):
    def test_routes_and_typed_errors(self):
        c = Controller(URL)
        self.assertEqual(c.health()["ok"], True)
        self.assertIn("version", c.version())
        self.assertIn(TAG, [s["tag"] for s in c.list_snapshots()])
        self.assertIn("forkd_", c.metrics())
        [r] = c.spawn_sandboxes(TAG, 1, metadata={"who": "python"})
        self.assertTrue(r["ok"], r.get("error"))
        sid = r["id"]
        try:
            self.assertEqual(c.get_sandbox(sid)["metadata"], {"who": "python"})
            self.assertIn("node_version", c.ping_sandbox(sid))
            res = c.exec_command(sid, ["sh", "-c", "echo hi; exit 3"])
            self.assertEqual((res["stdout"], res["exit_code"]), ("hi\n", 3))
            events = list(c.exec_stream(sid, "echo a; echo b >&2"))
            self.assertEqual([e["type"] for e in events if e["type"] in ("stdout", "stderr", "exit")][-1], "exit")
            self.assertEqual("".join(e["data"] for e in events if e["type"] == "stdout"), "a\n")
            self.assertEqual(c.eval_code(sid, "1 + 1")["result"], "2")
            self.assertEqual(c.set_sandbox_timeout(sid, 600)["timeout_secs"], 600)
            self.assertIsNone(c.set_sandbox_timeout(sid, None)["timeout_secs"])
        finally:
            c.kill_sandbox(sid)
        with self.assertRaises(NotFoundError) as nf:
            c.get_sandbox(sid)
        self.assertEqual(nf.exception.status, 404)
        with self.assertRaises(InvalidArgumentError) as bad:
            c.spawn_sandboxes(TAG, 0)
        self.assertEqual(bad.exception.status, 400)
        with self.assertRaises(NotFoundError):
            c.spawn_sandboxes("no-such-tag", 1)
        with self.assertRaises(forkd.ConnectionError):
            Controller("http://127.0.0.1:1").health()


if __name__ == "__main__":
    unittest.main()
