"""Image files by name from a folder or from a zip archive read in place (never extracted)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath

from dlexp.errors import DlexpError


def _safe_entry(name: str) -> bool:
    """A zip entry that names a file inside the archive: not a folder, not absolute, no ``..``."""
    pure = PurePosixPath(name.replace("\\", "/"))
    return not name.endswith("/") and not pure.is_absolute() and ".." not in pure.parts and ":" not in name


class ImageSource:
    """Image files by name from a folder, or from a zip archive read in place (never extracted).

    In a zip, a CSV file name matches the entry of that name under any folder prefix (``Insects/x.jpg``
    for ``x.jpg``). Entries with absolute paths or ``..`` are ignored. Each process opens its own zip
    handle on first use and a pickled source carries none, so DataLoader workers never share one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DlexpError(f"{self.path.absolute()}: image folder or zip not found")
        self.is_zip = self.path.is_file()
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        self._by_basename: dict[str, list[str]] = {}
        if self.is_zip:
            if not zipfile.is_zipfile(self.path):
                raise DlexpError(f"{self.path}: not a zip archive (expected a folder of images or a .zip)")
            with zipfile.ZipFile(self.path) as archive:
                for name in archive.namelist():
                    if _safe_entry(name):
                        self._by_basename.setdefault(PurePosixPath(name).name, []).append(name)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_zip"], state["_zip_pid"] = None, None
        return state

    def __repr__(self) -> str:
        return f"ImageSource({str(self.path)!r})"

    def locate(self, filename: str) -> str | None:
        """The zip entry or folder path for ``filename``, or None when there is none.

        Raises DlexpError when a zip holds several entries that fit the name.
        """
        filename = filename.replace("\\", "/")
        if not self.is_zip:
            path = self.path / filename
            return str(path) if path.is_file() else None
        candidates = [e for e in self._by_basename.get(PurePosixPath(filename).name, [])
                      if e == filename or e.endswith("/" + filename)]
        if len(candidates) > 1:
            raise DlexpError(f"{self.path}: several entries fit {filename!r}: {', '.join(candidates[:3])}")
        return candidates[0] if candidates else None

    def read(self, location: str) -> bytes:
        """The bytes of a location returned by :meth:`locate`."""
        if not self.is_zip:
            return Path(location).read_bytes()
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip, self._zip_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip.read(location)
