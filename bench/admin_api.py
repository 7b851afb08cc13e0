"""The admin API on loopback, for the bench scripts' set-up (run from the repository's root:
`sys.path.insert(0, "bench")`)."""
import json
import sys
import urllib.error
import urllib.request


class AdminApi:
    def __init__(self, port, token_file):
        self.port = port
        self.token = open(token_file).read().strip()

    def post(self, path, body):
        """POSTs `body` as JSON and returns the decoded answer; exits naming the call on an error."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            return json.load(urllib.request.urlopen(req, timeout=10))
        except urllib.error.HTTPError as e:
            sys.exit(f"switchyard: POST {path} {json.dumps(body)}: {e.code} {e.read().decode()}")
