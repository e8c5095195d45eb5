"""Where `duckcast login` keeps its tokens: `$XDG_CONFIG_HOME/duckcast/credentials.json`
(`~/.config/duckcast/` when XDG_CONFIG_HOME is unset), readable by its owner only (0600, in a
0700 directory), one token per server URL, plus the URL last logged in to."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

FILE_MODE = 0o600
DIR_MODE = 0o700


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    # The XDG spec: a relative path is invalid and must be ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "duckcast"


@dataclass(frozen=True, slots=True)
class Session:
    url: str
    username: str
    token: str


class Credentials:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_dir() / "credentials.json"

    def _load(self) -> dict[str, Any]:
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except orjson.JSONDecodeError:
            raise ValueError(f"{self.path} is not valid JSON: fix or delete it") from None
        return data if isinstance(data, dict) else {}

    def default_url(self) -> str | None:
        url = self._load().get("default_url")
        return url if isinstance(url, str) else None

    def session(self, url: str) -> Session | None:
        saved = self._load().get("servers", {}).get(url)
        if not isinstance(saved, dict) or not isinstance(saved.get("token"), str):
            return None
        return Session(url, str(saved.get("username", "")), saved["token"])

    def save(self, session: Session) -> None:
        data = self._load()
        data.setdefault("servers", {})[session.url] = {
            "username": session.username,
            "token": session.token,
        }
        data["default_url"] = session.url
        self._write(data)

    def forget(self, url: str) -> bool:
        data = self._load()
        if data.get("servers", {}).pop(url, None) is None:
            return False
        self._write(data)
        return True

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        # Created 0600 from the start (a chmod after writing would leave a window), then
        # renamed over the old file so a crash never leaves half a file.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left by a crashed run
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
