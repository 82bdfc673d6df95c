"""Workdir paths, local or remote (any `etils.epath` path: `gs://bucket/run`)."""

import os

from etils import epath


def is_remote(path) -> bool:
  """Whether `path` names an object store (`gs://...`) rather than a file system:
  there, files cannot be appended to or created exclusively, only written whole."""
  return '://' in str(path)


def workdir_path(workdir) -> epath.Path:
  """`workdir` as an epath; local paths made absolute (Orbax wants them so)."""
  path = epath.Path(workdir)
  return path if is_remote(workdir) else epath.Path(os.path.abspath(workdir))
