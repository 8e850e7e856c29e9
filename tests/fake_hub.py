"""A Hugging Face hub on 127.0.0.1 that serves local folders as model repositories, for the real download path.

    with FakeHub({"someone/tiny-sd": folder}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}   # and no HF_HUB_OFFLINE

It answers what huggingface_hub asks when diffusers downloads a pipeline (hub 0.2x and 1.x-2.x alike): the model
info (`/api/models/ID[/revision/REV]`, with the file list), the recursive file tree
(`/api/models/ID/tree/REV`), and each file's `HEAD` / `GET` at `/ID/resolve/REV/PATH` with the headers the client
reads (`X-Repo-Commit`, `ETag`, `Content-Length`). Every file is served as a plain (non-LFS) file; no Xet, no
redirects, no auth. A `gated` repo answers its model info, as the hub does, and refuses its files to a user
not logged in (401, GatedRepo). With `cut` set, a file larger than `cut` bytes stops halfway and the connection
closes, as a network that drops does. `hub.requests` records the paths asked for.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, Path], gated: set[str] = frozenset(), cut: int | None = None):
        self.repos = {repo_id: Path(folder) for repo_id, folder in repos.items()}
        self.gated, self.cut = set(gated), cut
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: the test reads hub.requests
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str) -> list[str]:
        folder = self.repos[repo_id]
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(handler.path).path)
        self.requests.append(f"{handler.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
            if repo_id not in self.repos:
                return self._send(handler, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"},
                                  body)
            if not rest or rest[0] == "revision":
                return self._json(handler, self._info(repo_id), body)
            if rest[0] == "tree":
                return self._json(handler, self._tree(repo_id), body)
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo_id, name = "/".join(parts[:2]), "/".join(parts[4:])
            if repo_id in self.gated:
                return self._send(handler, 401, b"{}", {"X-Error-Code": "GatedRepo", "X-Error-Message": (
                    f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                    "to access it. Please log in.")}, body)
            file = self.repos[repo_id] / name if repo_id in self.repos else None
            if file is None or not file.is_file():
                return self._send(handler, 404, b"Entry not found", {"X-Error-Code": "EntryNotFound",
                                                                      "X-Repo-Commit": COMMIT}, body)
            data = file.read_bytes()
            if body and self.cut is not None and len(data) > self.cut:
                return self._cut_off(handler, data)
            return self._send(handler, 200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{_sha1(data)}"',
                                                    "Content-Type": "application/octet-stream"}, body)
        self._send(handler, 404, b"{}", {}, body)

    def _info(self, repo_id: str) -> dict:
        return {"id": repo_id, "modelId": repo_id, "sha": COMMIT, "private": False, "disabled": False,
                "gated": False, "tags": [], "downloads": 0, "likes": 0, "lastModified": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": name} for name in self.files(repo_id)]}

    def _tree(self, repo_id: str) -> list[dict]:
        folder = self.repos[repo_id]
        return [{"type": "file", "path": name, "size": (folder / name).stat().st_size,
                 "oid": _sha1((folder / name).read_bytes())} for name in self.files(repo_id)]

    def _json(self, handler, value, body: bool) -> None:
        self._send(handler, 200, json.dumps(value).encode(), {"Content-Type": "application/json"}, body)

    @staticmethod
    def _cut_off(handler, data: bytes) -> None:
        handler.send_response(200)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{_sha1(data)}"')
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[:len(data) // 2])
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _send(handler, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()
