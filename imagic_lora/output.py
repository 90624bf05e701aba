"""The output folder: what a run may replace, one run per folder at a time, and the staged commit.

Rules (the README states them for users):
- an edit is built in ``.<name>.partial`` beside its folder and renamed into place only when whole;
- an existing folder is replaced (``--overwrite``) only when it holds a complete imagic-lora artifact
  and nothing else: every file must be one the artifact's record lists, with the content it was
  written with; a file the tool did not write is never deleted;
- one run at a time writes a folder: ``.<name>.lock`` beside it is locked while the run lasts;
- a replacement interrupted between its two renames is undone by the next run into that folder.
A folder named through a symbolic link is the folder the link points to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

CONFIG_NAME = "imagic_config.json"  # written last: the marker of a complete artifact
WORKFLOW_NAME = "comfyui_workflow.json"
ARTIFACT_FORMAT_PREFIX = "imagic-lora/"

#: Top-level entries an artifact (or its partial folder) may hold, and what may be inside each folder: the
#: names an artifact recorded before its files' hashes were (imagic-lora 0.1) are checked against these.
_FILES = {"pytorch_lora_weights.safetensors", "imagic_lora_kohya.safetensors", "imagic_embeds.safetensors",
          CONFIG_NAME, WORKFLOW_NAME, "README.md"}
_FOLDERS = {
    "images": re.compile(r"(eta_-?\d+\.\d\d_seed_\d+(_strength_\d\.\d\d)?|input|grid|edit)\.png|\.[^/]+\.png\.tmp"
                         r"|\.step_c\.json"),
    "unet": re.compile(r"config\.json|diffusion_pytorch_model(-\d+-of-\d+)?\.safetensors(\.index\.json)?"),
    "logs": re.compile(r"events\.out\.tfevents\..+"),
}
_PARTIAL_ONLY = {"checkpoints"}  # a partial folder also holds the run's checkpoints


class OutputError(ValueError):
    """An output folder that may not be written or replaced; ``path`` is the folder."""

    def __init__(self, path: Path | str, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path} {problem}")


def target_path(folder: str | os.PathLike) -> Path:
    """The folder an output path names: absolute, through any symbolic link."""
    return Path(os.path.realpath(os.path.abspath(folder)))


def partial_path(folder: str | os.PathLike) -> Path:
    target = target_path(folder)
    return target.parent / f".{target.name}.partial"


def lock_path(folder: str | os.PathLike) -> Path:
    target = target_path(folder)
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


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_files(folder: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256} of every file of an artifact folder but its record: what the record keeps,
    so that a later ``--overwrite`` can tell the artifact's own files from anything added or changed."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != CONFIG_NAME and "checkpoints" not in
            p.relative_to(folder).parts}


def foreign_entries(folder: str | os.PathLike, partial: bool = False) -> list[str]:
    """Paths under ``folder`` (relative, sorted) that its imagic-lora artifact did not write: not listed in
    the record with their content (or, for an artifact from before records listed files, not of the
    names an artifact holds). Symbolic links are always foreign (nothing is followed)."""
    folder = Path(folder)
    record = None if partial else read_config(folder)
    if record is not None and isinstance(record.get("files"), dict):
        listed = record["files"]
        foreign = []
        for path in sorted(folder.rglob("*")):
            relative = str(path.relative_to(folder))
            if path.is_symlink():
                foreign.append(relative)
            elif path.is_file() and path.name != CONFIG_NAME and (
                    relative not in listed or file_digest(path) != listed[relative]):
                foreign.append(relative)
        return foreign
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
    if not folder.is_dir():
        return "is not a folder"
    if not any(folder.iterdir()):
        return None
    if read_config(folder) is None:
        sample = ", ".join(sorted(p.name for p in folder.iterdir())[:3])
        return f"holds files that are not an imagic-lora artifact ({sample}); it is never replaced"
    foreign = foreign_entries(folder)
    if foreign:
        return (f"holds {', '.join(foreign[:3])}, which imagic-lora did not write (or which changed since); it "
                "is never replaced")
    return None


def check_output_path(output_dir: str, *, artifact: bool = True) -> Path:
    """The folder's name alone: not empty, and (for an ``artifact``, which replaces the folder whole)
    not the current folder or one holding it; creatable and writable. Returns it, absolute."""
    if not output_dir or not output_dir.strip():
        raise OutputError("''", "is empty: name a folder")
    target = target_path(output_dir)
    cwd = Path.cwd().resolve()
    if artifact and (target == cwd or target in cwd.parents or target.parent == target):
        raise OutputError(target, "is the current folder or holds it: name a new folder for the artifact")
    check_writable(target)
    return target


def check_output_dir(output_dir: str, *, overwrite: bool, resume: bool) -> None:
    """Refuse an output folder this run may not write, before anything is loaded (raises OutputError).

    Without ``overwrite`` the folder must be new or empty (or, with ``resume``, the complete artifact of
    the run being resumed), and an interrupted run's checkpoints beside it are not discarded unless
    ``resume`` continues them. With it, the folder may also hold an earlier artifact, and nothing else.
    """
    target = check_output_path(output_dir)
    partial = partial_path(target)
    if partial.is_symlink() or (partial.exists() and not partial.is_dir()):
        raise OutputError(partial, "is in the way of the edit's working folder (not a folder of its own)")
    if target.exists() and any(target.iterdir()):
        reason = why_not_replaceable(target)
        if reason is not None:
            raise OutputError(target, f"{reason}: choose another folder")
        if not overwrite and not (resume and not partial.exists()):
            raise OutputError(target, "holds an earlier imagic-lora edit: pass --overwrite to replace it, or "
                                      "choose another folder")
    if partial.is_dir():
        foreign = foreign_entries(partial, partial=True)
        if foreign:
            raise OutputError(partial, f"holds {', '.join(foreign[:3])}, which imagic-lora did not write")
        if has_checkpoints(partial) and not (resume or overwrite):
            raise OutputError(target, f"has an interrupted run's checkpoints in {partial.name}: pass --resume to "
                                      "continue it, or --overwrite to start over")


def check_writable(folder: str | os.PathLike) -> None:
    """The folder exists or can be created, and we may write in it and beside it."""
    path = target_path(folder)
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
    cannot block the next run. The file holds the owner's process id and is removed on release; a
    symbolic link or a file of anything else under that name is refused, never written.
    """

    def __init__(self, folder: str | os.PathLike, inside: bool = False):
        self.folder = target_path(folder)
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
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as e:
                raise OutputError(self.path, f"cannot be used as the run's lock ({e.strerror}): remove it if it "
                                             "is not imagic-lora's") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise OutputError(self.folder, f"is being written by another imagic-lora run (process {holder}); "
                                               "wait for it to finish or choose another folder") from None
            try:  # the holder before us may have removed the file after we opened it: lock the one on disk
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        content = os.read(fd, 64)
        if content.strip() and not content.strip().isdigit():  # a file of someone else's: leave it be
            os.close(fd)
            raise OutputError(self.path, "is a file imagic-lora did not write, in the way of the run's lock; "
                                         "rename it or choose another folder")
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError:  # a full disk: the lock holds without the process id
            pass
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


_OLD = re.compile(r"\.(?P<name>.+)\.old-\d+(-\d+)?")


def recover_interrupted_replacements(folders: list[str | os.PathLike]) -> None:
    """Undo replacements killed between their two renames: an old artifact hidden as
    ``.<name>.old-<pid>`` goes back under its name when nothing took its place; when the new one is in
    place, the hidden old one is removed. Only complete artifacts holding nothing else are touched (one
    scan of each parent folder, however many folders). Call under the folders' lock."""
    by_parent: dict[Path, set[str]] = {}
    for folder in folders:
        target = target_path(folder)
        by_parent.setdefault(target.parent, set()).add(target.name)
    for parent, names in by_parent.items():
        if not parent.is_dir():
            continue
        for old in sorted(parent.iterdir()):
            match = _OLD.fullmatch(old.name)
            if not match or match["name"] not in names or old.is_symlink() or not old.is_dir():
                continue
            target = parent / match["name"]
            if read_config(old) is None or why_not_replaceable(old) is not None:
                logger.warning("left %s alone: it is not a complete imagic-lora artifact", old)
            elif not target.exists():
                os.replace(old, target)
                logger.warning("restored %s: a run that was replacing it was killed before the new edit was in "
                               "place", target)
            elif read_config(target) is not None:
                shutil.rmtree(old)
                logger.info("removed %s, left by a replacement killed after the new edit was in place", old)


def recover_interrupted_replacement(folder: str | os.PathLike) -> None:
    recover_interrupted_replacements([folder])


def make_readable(folder: Path) -> None:
    """Give every file and folder under ``folder`` the modes a user's own new files get (the umask's):
    safetensors writes its files readable by their owner alone."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


class StagedOutput:
    """An artifact folder built under a temporary name beside its target, renamed in when whole.

    ``.<name>.partial`` holds the images, files and checkpoints while the edit runs; a crash or
    a kill leaves it (with its checkpoints, for ``--resume``) but never a folder under the
    target's name that looks complete. :meth:`commit` replaces the target only when the new
    folder is complete, and an existing target only when ``overwrite`` is set and it may be
    replaced (:func:`why_not_replaceable`).
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.target = target_path(output_dir)
        self.path = partial_path(self.target)

    def prepare(self, resume: bool) -> Path:
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_dir()):
            raise OutputError(self.path, "is in the way of the edit's working folder (not a folder of its own)")
        if self.path.is_dir() and not resume:
            foreign = foreign_entries(self.path, partial=True)
            if foreign:
                raise OutputError(self.path, f"holds {', '.join(foreign[:3])}, which imagic-lora did not write")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def commit(self, overwrite: bool) -> Path:
        make_readable(self.path)
        old = None
        if self.target.exists():
            reason = why_not_replaceable(self.target)
            if reason is not None:
                raise OutputError(self.target, f"{reason} (it changed while the edit ran)")
            if any(self.target.iterdir()) and not overwrite:
                raise OutputError(self.target, "appeared while the edit ran; not overwritten")
            old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
            n = 0
            while old.exists() or old.is_symlink():
                n += 1
                old = self.target.parent / f".{self.target.name}.old-{os.getpid()}-{n}"
            os.replace(self.target, old)
        os.replace(self.path, self.target)  # a kill between the renames: recover_interrupted_replacements
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def discard(self) -> None:
        """After a failure: keep the folder if it holds a checkpoint worth resuming or a complete edit."""
        if self.path.is_dir() and not has_checkpoints(self.path) and read_config(self.path) is None:
            shutil.rmtree(self.path, ignore_errors=True)
