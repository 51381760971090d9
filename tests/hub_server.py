"""A small Hugging Face Hub look-alike over real HTTP, for upload tests.

It answers the routes `HfApi.create_repo` + `HfApi.create_commit` use (see REFERENCE.md), with
the shapes huggingface_hub 2.4 parses (hf_api.py, _commit_api.py):

  GET  /api/whoami-v2                             -> {"name": user, ...}
  POST /api/repos/create                          -> {"url": ...}; 409 if it exists
  GET  /api/models/{ns}/{name}                    -> repo info, or 404 RepoNotFound
  POST /api/validate-yaml                         -> {"errors": [], "warnings": []}
  POST /api/models/{ns}/{name}/preupload/{rev}    -> every file "regular" (no LFS/Xet)
  POST /api/models/{ns}/{name}/commit/{rev}       -> ndjson with base64 contents; files kept in memory
  GET/HEAD /{ns}/{name}/resolve/{rev}/{file}      -> downloads: 404 RepoNotFound for an unknown repo

Failure modes are the real Hub's: a wrong or missing token gets 401 "Invalid credentials in
Authorization header"; creating or writing outside the user's own namespaces gets 403.
`fail` forces a status on a route ("create", "preupload", "commit", ...). Every request is
recorded (method, path, headers, body) so tests can look for the token anywhere it should not be.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)


_REPO_ROUTE = re.compile(r"^/api/models/([^/]+)/([^/]+)(?:/(preupload|commit)/([^/]+))?$")
_RESOLVE_ROUTE = re.compile(r"^/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$")


class HubServer:
    def __init__(self, token: str = "hf_test_valid_token", user: str = "alice",
                 orgs: tuple[str, ...] = ()) -> None:
        self.token = token
        self.user = user
        self.orgs = orgs
        self.repos: dict[str, Repo] = {}
        self.requests: list[Recorded] = []
        self.fail: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, entry: Recorded) -> None:
        with self._lock:
            self.requests.append(entry)

    # ---- routes: each returns (status, json body, extra headers) ----------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes):
        path = path.split("?", 1)[0]
        route = _route_name(method, path)
        if download := _RESOLVE_ROUTE.match(path):
            return self._download(f"{download.group(1)}/{download.group(2)}")
        if route in self.fail:
            return self.fail[route], {"error": f"forced failure on {route}"}, {}
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}, \
                {"X-Error-Message": "Invalid credentials in Authorization header"}
        if route == "whoami":
            return 200, {"type": "user", "name": self.user, "fullname": self.user,
                         "orgs": [{"name": o} for o in self.orgs],
                         "auth": {"type": "access_token", "accessToken": {"role": "write"}}}, {}
        if route == "create":
            return self._create(json.loads(body))
        if route == "validate-yaml":
            return self._validate_yaml(json.loads(body))
        match = _REPO_ROUTE.match(path)
        if not match:
            return 404, {"error": f"no route {method} {path}"}, {}
        repo_id = f"{match.group(1)}/{match.group(2)}"
        if repo_id not in self.repos:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        if route == "repo-info":
            return 200, {"id": repo_id, "modelId": repo_id, "private": self.repos[repo_id].private,
                         "sha": self._head(repo_id), "siblings": [{"rfilename": f} for f in self.repos[repo_id].files]}, {}
        if match.group(1) not in self._namespaces():
            return 403, {"error": "You don't have write access to this repo"}, {}
        if route == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                    "oid": None} for f in files], "commitOid": self._head(repo_id)}, {}
        return self._commit(repo_id, body)

    def _download(self, repo_id: str):
        if repo_id not in self.repos:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound",
                                                             "X-Error-Message": "Repository not found"}
        return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}  # uploads only; no files served

    def _namespaces(self) -> set[str]:
        return {self.user, *self.orgs}

    def _create(self, payload: dict):
        namespace = payload.get("organization") or self.user
        repo_id = f"{namespace}/{payload['name']}"
        if namespace not in self._namespaces():
            return 403, {"error": f'You don\'t have the rights to create a model under the namespace "{namespace}"'}, {}
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, {}
        self.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}, {}

    def _validate_yaml(self, payload: dict):
        match = re.match(r"^---\n(.*?)\n---\n", payload.get("content", ""), re.S)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": str(err)}], "warnings": []}, {}
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _commit(self, repo_id: str, body: bytes):
        repo = self.repos[repo_id]
        header: dict = {}
        added: dict[str, bytes] = {}
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                header = item["value"]
            elif item["key"] == "file":
                if item["value"].get("encoding") != "base64":
                    return 400, {"error": "expected base64 file content"}, {}
                added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            else:  # lfsFile, deletedFile, ... : this server told the client never to need them
                return 400, {"error": f"unsupported commit operation {item['key']}"}, {}
        oid = hashlib.sha1(body).hexdigest()
        repo.files.update(added)
        repo.commits.append({"oid": oid, "summary": header.get("summary"), "files": sorted(added)})
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                     "success": True, "pullRequestUrl": None}, {}

    def _head(self, repo_id: str) -> str:
        commits = self.repos[repo_id].commits
        return commits[-1]["oid"] if commits else "0" * 40


def _route_name(method: str, path: str) -> str:
    if path == "/api/whoami-v2":
        return "whoami"
    if path == "/api/repos/create":
        return "create"
    if path == "/api/validate-yaml":
        return "validate-yaml"
    match = _REPO_ROUTE.match(path)
    if match and match.group(3):
        return match.group(3)
    return "repo-info" if match and method == "GET" else "unknown"


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer has a length

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def _serve(self, send_body: bool = True) -> None:
            body = self._read_body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            hub.record(Recorded(self.command, self.path, headers, body))
            status, payload, extra = hub.handle(self.command, self.path, headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            if send_body:
                self.wfile.write(data)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def log_message(self, format: str, *args) -> None:  # keep test output quiet
            pass

    return Handler
