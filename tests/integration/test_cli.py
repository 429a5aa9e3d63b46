"""The command line: version, help, and `wahook sign` (whose output the server accepts)."""

import hashlib
import hmac
import os

import harness
from harness import make_conf, run_wahook, upsert

COMMANDS = ("serve", "check", "sign", "events", "version")
ENV_SECRET = "cli-env-secret-9d8c"
FILE_SECRET = "cli-file-secret-1a2b"
ROUTE = """
auth:
  hmac: {secrets: ["${WEBHOOK_SECRET}"]}
"""


def expected(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def out_text(p):
    return (p.stdout + p.stderr).decode("utf-8", "replace")


class Basics(harness.WahookTestCase):
    def test_version(self):
        p = run_wahook(["version"])
        self.assertEqual(p.returncode, 0, out_text(p))
        self.assertRegex(p.stdout.decode(), r"\d+\.\d+\.\d+", "version prints a version number")

    def test_help(self):
        p = run_wahook(["--help"])
        self.assertEqual(p.returncode, 0, out_text(p))
        text = out_text(p)
        for cmd in COMMANDS:
            self.assertIn(cmd, text, "--help mentions %s" % cmd)

    def test_command_help(self):
        for cmd in COMMANDS:
            p = run_wahook([cmd, "--help"])
            self.assertEqual(p.returncode, 0, "%s --help: %s" % (cmd, out_text(p)))
            self.assertIn(cmd, out_text(p), "%s --help mentions the command" % cmd)
            if cmd != "version":
                self.assertIn("-c", out_text(p), "%s --help documents -c" % cmd)

    def test_unknown_command_fails(self):
        p = run_wahook(["no-such-command"])
        self.assertNotEqual(p.returncode, 0)
        self.assertTrue(out_text(p).strip(), "an unknown command says something")


class Sign(harness.WahookTestCase):
    def make(self, start=False, env_file="WEBHOOK_SECRET=%s\n" % ENV_SECRET):
        return self.new_server(make_conf(ROUTE), start=start, env_file=env_file)

    def sign_out(self, p, what):
        self.assertEqual(p.returncode, 0, "%s: %s" % (what, out_text(p)))
        out = p.stdout.decode("ascii", "replace")
        self.assertEqual(out.rstrip("\n").count("\n"), 0, "%s prints one line: %r" % (what, out))
        return out.rstrip("\n")

    def test_sign_file_and_stdin(self):
        srv = self.make()
        body = upsert("CLI-SIGN-1") + b"\n"  # the trailing newline is part of the body
        path = os.path.join(srv.tmp, "body.json")
        with open(path, "wb") as f:
            f.write(body)
        want = expected(ENV_SECRET, body)
        self.assertEqual(self.sign_out(srv.cli(["sign"], [path]), "sign FILE"), want)
        self.assertEqual(self.sign_out(srv.cli(["sign"], ["-"], input=body), "sign -"), want)
        self.assertEqual(self.sign_out(srv.cli(["sign"], [], input=body), "sign (stdin)"), want)
        self.assertRegex(want, r"^sha256=[0-9a-f]{64}$")

    def test_sign_secret_file(self):
        srv = self.make()
        sf = os.path.join(srv.tmp, "secret")
        with open(sf, "w") as f:
            f.write(FILE_SECRET + "\n")
        body = upsert("CLI-SIGN-2")
        p = srv.cli(["sign"], ["--secret-file", sf, "-"], input=body)
        self.assertEqual(self.sign_out(p, "sign --secret-file"), expected(FILE_SECRET, body),
                         "the file's content without its trailing newline is the secret")
        self.assertNotIn(FILE_SECRET.encode(), p.stdout + p.stderr)

    def test_sign_without_secret_fails(self):
        srv = self.make(env_file="")
        p = srv.cli(["sign"], ["-"], input=b"{}")
        self.assertNotEqual(p.returncode, 0, "sign with no secret must fail: %s" % out_text(p))
        self.assertNotRegex(p.stdout.decode("ascii", "replace"), r"sha256=[0-9a-f]{64}")

    def test_signed_request_accepted(self):
        srv = self.make(start=True)
        body = upsert("CLI-SIGN-3")
        sig = self.sign_out(srv.cli(["sign"], ["-"], input=body), "sign -")
        self.assertAccepted(srv.post(body, {"x-webhook-signature": sig}), srv,
                            "a body signed by `wahook sign` is accepted by `wahook serve`")
        other = upsert("CLI-SIGN-4")
        self.assertError(srv.post(other, {"x-webhook-signature": sig}), 401, "invalid signature",
                         srv, "the signature of another body")
        self.assertNotIn(ENV_SECRET, srv.stderr())


if __name__ == "__main__":
    harness.main()
