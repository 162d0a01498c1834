"""GitHub (or any git host), read-only, through git itself: a shallow checkout cached by commit.

Reading through git rather than the REST API means no API rate limit and any git host works. Paths:

* ``org/repo``, ``org/repo@v1.2``, ``org/repo@main/docs`` - cloned from ``GitHubCredentials.base_url``
  (default https://github.com, or ``RH_PREFECT_GITHUB_URL``)
* ``https://github.com/org/repo/tree/main/docs`` - a browser URL
* ``git://host/org/repo.git@main/docs`` or ``https://host/org/repo.git@v1`` - any git URL ending in ``.git``

Without ``@ref`` the repository's default branch is used.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from rh_prefect.errors import CredentialsError, InvalidPath, NotFound, SystemUnavailable
from rh_prefect.systems.base import System

if TYPE_CHECKING:
    from rh_prefect.systems.credentials import GitHubCredentials

_SHA = re.compile(r"^[0-9a-f]{40}$")
_LOCK = threading.Lock()


@dataclass(frozen=True)
class GitLocation:
    repo_url: str
    ref: str
    subpath: str


def parse_location(path: str, base_url: str) -> GitLocation:
    """Split a GitHub path into repository URL, ref and the path inside the repository."""
    path = str(path).strip()
    m = re.match(r"^https?://github\.com/([^/]+)/([^/]+)/(?:tree|blob)/([^/]+)/?(.*)$", path)
    if m:
        return GitLocation(f"https://github.com/{m[1]}/{m[2]}.git", m[3], m[4].strip("/"))
    if "://" in path:
        m = re.match(r"^(.+?\.git)(?:@([^/]+))?(?:/(.*))?$", path)
        if not m:
            raise InvalidPath(
                f"GitHub path {path!r}: a git URL must end in '.git' (optionally '@ref' and '/sub/path'), e.g. "
                "'https://github.com/org/repo.git@main/docs'."
            )
        return GitLocation(m[1], m[2] or "HEAD", (m[3] or "").strip("/"))
    m = re.match(r"^/?([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?(?:@([^/]+))?(?:/(.*))?$", path)
    if not m:
        raise InvalidPath(f"GitHub path {path!r} should look like 'org/repo', 'org/repo@ref' or 'org/repo@ref/sub/dir'.")
    return GitLocation(f"{base_url.rstrip('/')}/{m[1]}/{m[2]}.git", m[3] or "HEAD", (m[4] or "").strip("/"))


class GitHubSystem(System):
    """A git repository at a ref, read-only."""

    name = "github"
    aliases = ("git",)
    writable = False
    is_local = True  # reads come from the local checkout
    max_concurrency = 8

    def __init__(self, credentials: Optional["GitHubCredentials"] = None, **_: object) -> None:
        if credentials is not None:
            from rh_prefect.systems.credentials import GitHubCredentials  # a Prefect block: only when one is given

            if not isinstance(credentials, GitHubCredentials):
                raise CredentialsError(
                    f"system 'github' needs a GitHubCredentials block, got {type(credentials).__name__}.")
        self.credentials = credentials
        self._resolved: dict[tuple[str, str], str] = {}

    @property
    def base_url(self) -> str:
        if self.credentials:
            return self.credentials.base_url
        return os.environ.get("RH_PREFECT_GITHUB_URL", "https://github.com")

    def identity(self) -> tuple:
        return ("github", self.base_url)

    def _make_fs(self) -> AbstractFileSystem:
        return LocalFileSystem()

    def default_root(self) -> Optional[str]:
        return None

    def default_root_hint(self) -> str:
        return "GitHub is read-only: name a repository path such as 'org/repo@main/dir'"

    def cache_root(self) -> str:
        return os.path.join(os.path.expanduser(os.environ.get("RH_PREFECT_CACHE", "~/.cache/rh_prefect")), "github")

    # -- git ---------------------------------------------------------------------------------------------
    def _git_env(self) -> dict[str, str]:
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
        if self.credentials and self.credentials.token:
            # Passed through the environment, not argv or the URL, so it never shows in ps or error text.
            raw = f"x-access-token:{self.credentials.token.get_secret_value()}".encode()
            env.update(
                GIT_CONFIG_COUNT="1",
                GIT_CONFIG_KEY_0="http.extraHeader",
                GIT_CONFIG_VALUE_0="Authorization: Basic " + base64.b64encode(raw).decode(),
            )
        return env

    def _git(self, *args: str, cwd: Optional[str] = None) -> str:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=cwd, env=self._git_env(), capture_output=True, text=True, timeout=300
            )
        except FileNotFoundError:
            raise SystemUnavailable("git is not installed; install it (apt-get install git) to read GitHub folders.") from None
        if proc.returncode != 0:
            err = proc.stderr.strip().splitlines()[-1:] or [""]
            raise SystemUnavailable(f"git {args[0]} failed: {err[0][:300]}")
        return proc.stdout

    def resolve(self, loc: GitLocation) -> str:
        """The commit a ref points at (a commit hash resolves to itself without a network call)."""
        if _SHA.match(loc.ref):
            return loc.ref
        key = (loc.repo_url, loc.ref)
        if key not in self._resolved:
            out = self._git("ls-remote", loc.repo_url, loc.ref, *(("refs/tags/" + loc.ref + "^{}",) if loc.ref != "HEAD" else ()))
            shas = {}
            for line in out.splitlines():
                sha, _, ref = line.partition("\t")
                shas[ref] = sha
            # An annotated tag's peeled entry (^{}) names the commit; prefer it.
            sha = next((s for r, s in shas.items() if r.endswith("^{}")), None) or next(iter(shas.values()), None)
            if sha is None:
                raise NotFound(f"Ref {loc.ref!r} does not exist in {loc.repo_url}; check the branch, tag or commit.")
            self._resolved[key] = sha
        return self._resolved[key]

    def checkout(self, loc: GitLocation) -> str:
        """Local directory holding the repository at ``loc.ref`` (shallow clone, cached by commit)."""
        sha = self.resolve(loc)
        target = os.path.join(self.cache_root(), sha)
        if os.path.isdir(target):
            return target
        os.makedirs(self.cache_root(), exist_ok=True)
        with _LOCK:
            if os.path.isdir(target):
                return target
            # Not mkdtemp(): its mode 0700 would outlive the rename; a checkout gets the user's umask like any file.
            tmp = os.path.join(self.cache_root(), f".clone-{uuid.uuid4().hex}")
            os.mkdir(tmp)
            try:
                self._git("init", "-q", tmp)
                self._git("fetch", "-q", "--depth", "1", loc.repo_url, sha, cwd=tmp)
                self._git("-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD", cwd=tmp)
                shutil.rmtree(os.path.join(tmp, ".git"))
                os.rename(tmp, target)  # atomic: a checkout is either complete or absent
            finally:
                if os.path.isdir(tmp):
                    shutil.rmtree(tmp)
        return target

    def fs_path(self, path: str) -> str:
        loc = parse_location(path, self.base_url)
        root = self.checkout(loc)
        return os.path.join(root, loc.subpath) if loc.subpath else root

    def url(self, path: str) -> str:
        loc = parse_location(path, self.base_url)
        return f"{loc.repo_url}@{loc.ref}/{loc.subpath}".rstrip("/")

    def block_fields(self) -> dict[str, Any]:
        return {"system": self.name, "credentials": self.credentials}
