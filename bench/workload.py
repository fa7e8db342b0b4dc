"""The workload every figure shares: one ~2 KB GitHub `push` delivery, signed (or not).

Every request carries its own X-GitHub-Delivery id, as GitHub's do, so a sidecar
that dedupes by delivery id (the spool) runs every one of them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

SECRET = "bench-secret-0123456789abcdef"
WRONG_SECRET = "not-the-secret"
PATH = "/webhook"
EVENT = "push"


def push_payload() -> bytes:
    """A GitHub push event shaped like the real thing (one commit), about 2 KB."""
    repo: dict[str, Any] = {
        "id": 186853002, "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=", "name": "app", "full_name": "org/app",
        "private": False, "owner": {"name": "org", "login": "org", "id": 21031067, "type": "Organization"},
        "html_url": "https://github.com/org/app", "description": "The application", "fork": False,
        "url": "https://github.com/org/app", "created_at": 1557933565, "updated_at": "2024-05-15T15:19:25Z",
        "pushed_at": 1715786400, "default_branch": "main",
    }
    commit = {
        "id": "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "tree_id": "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        "distinct": True, "message": "Deploy: bump the web image to 2024.05.15-1",
        "timestamp": "2024-05-15T15:20:00Z", "url": "https://github.com/org/app/commit/6113728f",
        "author": {"name": "Dev One", "email": "dev1@example.com", "username": "dev1"},
        "committer": {"name": "Dev One", "email": "dev1@example.com", "username": "dev1"},
        "added": [], "removed": [], "modified": ["deploy/web.yaml", "CHANGELOG.md"],
    }
    payload = {
        "ref": "refs/heads/main", "before": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        "after": commit["id"], "repository": repo,
        "pusher": {"name": "dev1", "email": "dev1@example.com"},
        "sender": {"login": "dev1", "id": 6752317, "type": "User", "site_admin": False,
                   "html_url": "https://github.com/dev1", "avatar_url": "https://avatars.githubusercontent.com/u/6752317"},
        "created": False, "deleted": False, "forced": False, "base_ref": None,
        "compare": "https://github.com/org/app/compare/0d1a26e67d8f...6113728f27ae",
        "commits": [commit], "head_commit": commit,
    }
    body = json.dumps(payload).encode()
    # Pad the description so the body is 2048 bytes exactly, whatever json.dumps did.
    repo["description"] += " " * (2048 - len(body))
    return json.dumps(payload).encode()


BODY = push_payload()


def signature(body: bytes = BODY, valid: bool = True) -> str:
    key = (SECRET if valid else WRONG_SECRET).encode()
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def headers(valid: bool = True, event: str = EVENT, body: bytes = BODY) -> dict[str, str]:
    """What GitHub sends, less the delivery id (set per request)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/bench",
        "X-GitHub-Event": event,
        "X-GitHub-Hook-ID": "292430182",
        "X-Hub-Signature-256": signature(body, valid),
    }


def request_head(port: int, valid: bool = True, event: str = EVENT, body: bytes = BODY) -> bytes:
    """The request up to the delivery-id header; append `id + CRLF CRLF + body` to finish it."""
    lines = [f"POST {PATH} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers(valid, event, body).items()]
    return ("\r\n".join(lines) + "\r\nX-GitHub-Delivery: ").encode()


def request(head: bytes, delivery: str, body: bytes = BODY) -> bytes:
    return head + delivery.encode() + b"\r\n\r\n" + body
