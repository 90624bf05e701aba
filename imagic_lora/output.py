"""The output folder: what a run may replace, one run per folder at a time, and the staged commit.

Rules (the README's "What an edit leaves behind" states them for users):
- an edit is built in ``.<name>.partial`` beside its folder and renamed into place only when whole;
- an existing folder is replaced (``--overwrite``) only when it holds a complete imagic-lora artifact
  and nothing an artifact does not hold: a file the tool did not write is never deleted;
- one run at a time writes a folder: ``.<name>.lock`` beside it is locked while the run lasts;
- a replacement interrupted between its two renames is undone by the next run into that folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

CONFIG_NAME = "imagic_config.json"  # written last: the marker of a complete artifact
ARTIFACT_FORMAT_PREFIX = "imagic-lora/"

#: Top-level entries an artifact (or its partial folder) may hold, and what may be inside each folder.
_FILES = {"pytorch_lora_weights.safetensors", "imagic_lora_kohya.safetensors", "imagic_embeds.safetensors",
          CONFIG_NAME, "README.md"}
_FOLDERS = {
    "images": re.compile(r"(eta_-?\d+\.\d\d_seed_\d+|input|grid|edit)\.png|\.[^/]+\.png\.tmp"),
    "unet": re.compile(r"config\.json|diffusion_pytorch_model(-\d+-of-\d+)?\.safetensors(\.index\.json)?"),
    "logs": re.compile(r"events\.out\.tfevents\..+"),
}
_PARTIAL_ONLY = {"checkpoints"}  # a partial folder also holds the run's checkpoints


class OutputError(ValueError):
    """An output folder that may not be written or replaced; ``path`` is the folder."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path} {problem}")


def partial_path(folder: str | os.PathLike) -> Path:
    target = Path(os.path.abspath(folder))
    return target.parent / f".{target.name}.partial"


def lock_path(folder: str | os.PathLike) -> Path:
    target = Path(os.path.abspath(folder))
    return target.parent / f".{target.name}.lock"


def read_config(folder: str | os.PathLike) -> dict | None:
    """The artifact record of ``folder``, or None when it holds no readable imagic-lora record."""
    path = Path(folder) / CONFIG_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not str(record.get("format", "")).startswith(ARTIFACT_FORMAT_PREFIX):
        return None
    return record


def foreign_entries(folder: str | os.PathLike, partial: bool = False) -> list[str]:
    """Paths under ``folder`` (relative, sorted) that an imagic-lora artifact does not hold: files the
    tool did not write. Symbolic links are always foreign (nothing is followed)."""
    folder = Path(folder)
    foreign = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if entry.is_symlink():
            foreign.append(name)
        elif entry.is_file() and name in _FILES:
            continue
        elif entry.is_dir() and name in _FOLDERS:
            pattern = _FOLDERS[name]
            for inner in sorted(entry.rglob("*")):
                if inner.is_symlink() or (inner.is_file() and not pattern.fullmatch(inner.name)) or (
                        inner.is_dir() and name != "logs"):
                    foreign.append(str(inner.relative_to(folder)))
        elif partial and entry.is_dir() and name in _PARTIAL_ONLY:
            continue
        else:
            foreign.append(name)
    return foreign


def why_not_replaceable(folder: str | os.PathLike) -> str | None:
    """None when ``folder`` may be replaced by a new artifact (it is empty, or a complete artifact
    holding nothing else); otherwise the reason, as the end of a sentence about the folder."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return "is not a folder"
    if not any(folder.iterdir()):
        return None
    if read_config(folder) is None:
        sample = ", ".join(sorted(p.name for p in folder.iterdir())[:3])
        return f"holds files that are not an imagic-lora artifact ({sample}); it is never replaced"
    foreign = foreign_entries(folder)
    if foreign:
        return f"holds {', '.join(foreign[:3])}, which imagic-lora did not write; it is never replaced"
    return None


def check_output_path(output_dir: str, *, artifact: bool = True) -> Path:
    """The folder's name alone: not empty, and (for an ``artifact``, which replaces the folder whole)
    not the current folder or one holding it; creatable and writable. Returns it, absolute."""
    if not output_dir or not output_dir.strip():
        raise OutputError(Path(output_dir), "is empty: name a folder")
    target = Path(os.path.abspath(output_dir))
    cwd = Path.cwd().resolve()
    if artifact and (target.resolve() == cwd or target.resolve() in cwd.parents or target.parent == target):
        raise OutputError(target, "is the current folder or holds it: name a new folder for the artifact")
    check_writable(target)
    return target


def check_output_dir(output_dir: str, *, overwrite: bool, resume: bool) -> None:
    """Refuse an output folder this run may not write, before anything is loaded (raises OutputError).

    Without ``overwrite`` the folder must be new or empty, and an interrupted run's checkpoints beside
    it are not discarded unless ``resume`` continues them. With it, the folder may also hold an earlier
    artifact, and nothing else.
    """
    target = check_output_path(output_dir)
    if target.exists() and any(target.iterdir()):
        reason = why_not_replaceable(target)
        if reason is not None:
            raise OutputError(target, f"{reason}: choose another folder")
        if not overwrite:
            raise OutputError(target, "holds an earlier imagic-lora edit: pass --overwrite to replace it, or "
                                      "choose another folder")
    partial = partial_path(target)
    if partial.is_dir():
        foreign = foreign_entries(partial, partial=True)
        if foreign:
            raise OutputError(partial, f"holds {', '.join(foreign[:3])}, which imagic-lora did not write")
        if has_checkpoints(partial) and not (resume or overwrite):
            raise OutputError(target, f"has an interrupted run's checkpoints in {partial.name}: pass --resume to "
                                      "continue it, or --overwrite to start over")
    elif partial.exists():
        raise OutputError(partial, "is in the way of the edit's working folder (not a folder)")


def check_writable(folder: str | os.PathLike) -> None:
    """The folder exists or can be created, and we may write in it and beside it."""
    path = Path(os.path.abspath(folder))
    if path.exists() and not path.is_dir():
        raise OutputError(path, "exists and is not a folder")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(path, f"cannot be created: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(path, f"cannot be written: no permission to write in {ancestor}")


def has_checkpoints(partial: Path) -> bool:
    return any((partial / "checkpoints").glob("*/state.json"))


class FolderLock:
    """One run at a time per output folder: an exclusive ``flock`` on ``.<name>.lock`` beside it (or on
    ``.imagic-lora.lock`` in a manifest's run folder).

    The kernel releases it when the process ends, however it ends (kill -9 included), so a stale lock
    cannot block the next run. The file is removed on release.
    """

    def __init__(self, folder: str | os.PathLike, inside: bool = False):
        self.folder = Path(os.path.abspath(folder))
        # ``inside``: a folder the run writes into rather than replaces (a manifest's), locked from within.
        self.path = self.folder / ".imagic-lora.lock" if inside else lock_path(folder)
        self.fd: int | None = None

    def acquire(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            logger.warning("no file locking on this platform: two runs into one folder are not refused")
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise OutputError(self.folder, f"is being written by another imagic-lora run (process {holder}); wait for it "
                                               "to finish or choose another folder") from None
            try:  # the holder before us may have removed the file after we opened it: lock the one on disk
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def recover_interrupted_replacement(folder: str | os.PathLike) -> None:
    """Undo a replacement killed between its two renames: the old artifact, hidden as
    ``.<name>.old-<pid>``, goes back under its name when nothing took its place; when the new one is
    in place, the hidden old one (an artifact, nothing else) is removed. Call under the folder's lock."""
    target = Path(os.path.abspath(folder))
    for old in sorted(target.parent.glob(f".{glob_escape(target.name)}.old-*")):
        if not re.fullmatch(rf"\.{re.escape(target.name)}\.old-\d+", old.name) or not old.is_dir():
            continue
        if not target.exists():
            os.replace(old, target)
            logger.warning("restored %s: a run that was replacing it was killed before the new edit was in place",
                           target)
        elif read_config(target) is not None and why_not_replaceable(old) is None:
            shutil.rmtree(old)
            logger.info("removed %s, left by a replacement that was killed after the new edit was in place", old)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


class StagedOutput:
    """An artifact folder built under a temporary name beside its target, renamed in when whole.

    ``.<name>.partial`` holds the images, files and checkpoints while the edit runs; a crash or
    a kill leaves it (with its checkpoints, for ``--resume``) but never a folder under the
    target's name that looks complete. :meth:`commit` replaces the target only when the new
    folder is complete, and an existing target only when ``overwrite`` is set and it may be
    replaced (:func:`why_not_replaceable`).
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.target = Path(os.path.abspath(output_dir))
        self.path = partial_path(self.target)

    def prepare(self, resume: bool) -> Path:
        if self.path.is_dir() and not resume:
            foreign = foreign_entries(self.path, partial=True)
            if foreign:
                raise OutputError(self.path, f"holds {', '.join(foreign[:3])}, which imagic-lora did not write")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def commit(self, overwrite: bool) -> Path:
        old = None
        if self.target.exists() or self.target.is_symlink():
            reason = why_not_replaceable(self.target)
            if reason is not None:
                raise OutputError(self.target, f"{reason} (it changed while the edit ran)")
            if any(self.target.iterdir()) and not overwrite:
                raise OutputError(self.target, "appeared while the edit ran; not overwritten")
            old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
            os.replace(self.target, old)
        os.replace(self.path, self.target)  # a kill between the renames: recover_interrupted_replacement
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def discard(self) -> None:
        """After a failure: keep the folder only if it holds a checkpoint worth resuming."""
        if self.path.is_dir() and not has_checkpoints(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
