"""Where the project lives and what its _config.yml says (the repository URL's one home)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "_config.yml"


@lru_cache(maxsize=None)
def book_config() -> dict:
    import yaml

    with open(CONFIG, encoding="utf-8") as f:
        return yaml.safe_load(f)


def repository_url() -> str:
    """The repository URL, defined once in _config.yml (``repository.url``)."""
    return book_config()["repository"]["url"].rstrip("/")


def repository_branch() -> str:
    return book_config()["repository"].get("branch", "main")


def colab_url(path: str | Path) -> str:
    """The Open-in-Colab address of a notebook given by its path inside the repository."""
    owner_repo = repository_url().split("github.com/", 1)[1]
    return (
        f"https://colab.research.google.com/github/{owner_repo}/blob/"
        f"{repository_branch()}/{Path(path).as_posix()}"
    )
