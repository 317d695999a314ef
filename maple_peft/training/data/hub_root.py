"""The papers' datasets from the Hub, in CoOp's layout, with CoOp's splits: `--data_root hub`.

The model repository `zhengli97/prompt_learning_dataset` holds 14 of the benchmarks as one zip archive each, in
exactly CoOp's layout (with each `split_zhou_*.json`). For `--data_root hub` (or `hub@REVISION`, or
`hf://OWNER/REPO[@REVISION]` for another repository of the same shape) only the archive a run needs is downloaded
with `huggingface_hub` (pinned revision, its progress bar, resumable, the user's token) and extracted once into
`$HF_HOME/maple_peft/datasets/<owner>--<name>/<commit>/<dataset folder>/`, which is then read as a local CoOp data
root (offline too, with `HF_HUB_OFFLINE=1`).

Extraction is atomic: into a temporary folder beside the target, checked to hold the dataset's split file (or list
files), then renamed; a file lock makes concurrent runs (benchmark cells) wait for one extraction, and free disk
space is checked before the download and before the extraction. Entries that would land outside the target
(`../`, absolute paths, links) refuse the whole archive; a corrupt or truncated archive is removed from the Hub
cache so that the next run downloads it again.

ImageNet is not in that repository: `--dataset imagenet --data_root hub` reads the gated `ILSVRC/imagenet-1k`
(`train` as the training pool, `validation` as the test set) with CoOp's label order (sorted WordNet ids, the order
of that dataset's labels) and CoOp's readable names (`imagenet_classnames.txt`, CoOp's `classnames.txt`).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .coop import BenchmarkSpec, get_benchmark, read_classnames
from .records import ImageRecords

__all__ = [
    "HUB_ARCHIVES",
    "HUB_DATA_REPO",
    "HUB_DATA_REVISION",
    "IMAGENET_HUB_DATASET",
    "HubDataRoot",
    "imagenet_classnames",
    "load_imagenet_from_hub",
    "parse_hub_root",
]

HUB_DATA_REPO = "zhengli97/prompt_learning_dataset"
HUB_DATA_REVISION = "ceb3112337fb6e1bf71534e355ca5569b63f19a6"
IMAGENET_HUB_DATASET = "ILSVRC/imagenet-1k"
HUB_ARCHIVES = {
    "caltech101": "caltech-101.zip",
    "dtd": "dtd.zip",
    "eurosat": "eurosat.zip",
    "fgvc_aircraft": "fgvc_aircraft.zip",
    "food101": "food101.zip",
    "oxford_flowers": "oxford_flowers.zip",
    "oxford_pets": "oxford_pets.zip",
    "stanford_cars": "stanford_cars.zip",
    "sun397": "sun397.zip",
    "ucf101": "ucf101.zip",
    "imagenetv2": "imagenetv2.zip",
    "imagenet_sketch": "imagenet-sketch.zip",
    "imagenet_a": "imagenet-adversarial.zip",
    "imagenet_r": "imagenet-rendition.zip",
}
"""Benchmark -> its archive in the Hub data repository; each extracts to the benchmark's CoOp folder."""

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_IGNORED = ("__MACOSX/",)  # the resource forks a macOS zip tool adds
_SPACE_MARGIN = 1.05  # the free space asked for beyond the archive or its contents (file system overhead)


def parse_hub_root(data_root: str | os.PathLike | None) -> HubDataRoot | None:
    """The Hub data root that `data_root` names (`hub`, `hub@REVISION`, `hf://OWNER/REPO[@REVISION]`), else `None`.

    Args:
        data_root (`str | os.PathLike | None`): A `--data_root` value.

    Raises:
        ValueError: It starts like a Hub data root but is malformed.

    Example:
        ```python
        >>> parse_hub_root("hub").source
        'hf://zhengli97/prompt_learning_dataset@ceb3112337fb6e1bf71534e355ca5569b63f19a6'
        >>> parse_hub_root("data/coop") is None
        True
        ```
    """
    if data_root is None or not isinstance(data_root, str):
        return None
    if data_root == "hub" or data_root.startswith("hub@"):
        revision = data_root[len("hub@") :] if "@" in data_root else HUB_DATA_REVISION
        if not revision:
            raise ValueError(f"data_root={data_root!r} names no revision after '@'; write hub or hub@<revision>.")
        return HubDataRoot(HUB_DATA_REPO, revision)
    if data_root.startswith("hf://"):
        repo_id, _, revision = data_root[len("hf://") :].partition("@")
        if not _REPO_ID.match(repo_id) or ("@" in data_root and not revision):
            raise ValueError(
                f"data_root={data_root!r} is not a Hub data root; write hf://OWNER/REPO or hf://OWNER/REPO@REVISION "
                f"(a model repository of CoOp-layout zip archives, as {HUB_DATA_REPO})."
            )
        return HubDataRoot(repo_id, revision or "main")
    return None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _free_bytes(path: Path) -> int:
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def _check_space(needed: int | None, where: Path, what: str) -> None:
    if not needed:
        return
    free = _free_bytes(where)
    if free < needed * _SPACE_MARGIN:
        raise OSError(
            f"Not enough free disk space for {what}: it needs {needed / 1e9:.2f} GB and {where} has "
            f"{free / 1e9:.2f} GB free. Free some space, or set HF_HOME to a disk with room."
        )


@dataclass(frozen=True)
class HubDataRoot:
    """A Hub repository of CoOp-layout zip archives at one revision, read as a CoOp data root.

    Args:
        repo_id (`str`): The model repository (`"zhengli97/prompt_learning_dataset"`).
        revision (`str`): A commit (pinned) or a branch or tag name.

    Example:
        ```python
        >>> root = parse_hub_root("hub")
        >>> load_coop_split("eurosat", root.prepare("eurosat"), "train")  # downloads and extracts eurosat.zip once
        ```
    """

    repo_id: str
    revision: str

    @property
    def source(self) -> str:
        """The root as recorded with results: `hf://<repo>@<revision>`."""
        return f"hf://{self.repo_id}@{self.revision}"

    def folder(self, commit: str) -> Path:
        """The extracted data root of a commit: `$HF_HOME/maple_peft/datasets/<owner>--<name>/<commit>`.

        Args:
            commit (`str`): The commit hash.
        """
        from huggingface_hub import constants

        return Path(constants.HF_HOME) / "maple_peft" / "datasets" / self.repo_id.replace("/", "--") / commit

    def archive(self, dataset: str) -> tuple[BenchmarkSpec, str]:
        """The benchmark and its archive's name, for a dataset name or alias.

        Args:
            dataset (`str`): The benchmark (`"eurosat"`).

        Raises:
            ValueError: The benchmark has no archive in the repository (listing those that have one).
        """
        spec = get_benchmark(dataset)
        if spec.name not in HUB_ARCHIVES:
            hint = f" ({spec.name} is read from {IMAGENET_HUB_DATASET})" if spec.name == "imagenet" else ""
            raise ValueError(
                f"dataset={dataset!r} has no archive in the Hub data root {self.source}{hint}; the available "
                f"datasets are {sorted(HUB_ARCHIVES)}, or use a local CoOp data root."
            )
        return spec, HUB_ARCHIVES[spec.name]

    def _known_commit(self) -> str | None:
        """The commit of the revision without asking the Hub: itself, or (offline) the Hub cache's ref."""
        if _COMMIT.match(self.revision):
            return self.revision
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        ref = Path(_hub_cache()) / repo_folder_name(repo_id=self.repo_id, repo_type="model") / "refs" / self.revision
        if constants.HF_HUB_OFFLINE and ref.is_file():
            return ref.read_text(encoding="utf-8").strip()
        return None

    def missing_offline(self, dataset: str) -> str | None:
        """What `prepare(dataset)` would have to download (`None` when it is extracted or in the Hub cache), so that an
        offline run names it with the other missing sources before any work.

        Args:
            dataset (`str`): The benchmark (`"eurosat"`).
        """
        from huggingface_hub import try_to_load_from_cache

        spec, archive = self.archive(dataset)
        commit = self._known_commit()
        if commit is not None and (self.folder(commit) / spec.dataset_dir).is_dir():
            return None
        if isinstance(
            try_to_load_from_cache(self.repo_id, archive, cache_dir=_hub_cache(), revision=self.revision), str
        ):
            return None
        return f"{archive} of {self.source}: not in the Hub cache ({_hub_cache()})"

    def prepare(self, dataset: str) -> Path:
        """Downloads (once) and extracts (once) the dataset's archive; returns the CoOp data root holding it.

        Args:
            dataset (`str`): The benchmark (`"eurosat"`).

        Returns:
            `Path`: The data root, whose `<dataset folder>/` is the extracted archive.

        Raises:
            ValueError: Unknown dataset, a malformed archive (its problem named).
            OSError: No network and no cached copy, the repository or file does not exist, not enough disk space.
        """
        spec, archive = self.archive(dataset)
        commit = self._known_commit()
        if commit is not None and (self.folder(commit) / spec.dataset_dir).is_dir():
            return self.folder(commit)
        path, commit = self._download(archive)
        root = self.folder(commit)
        root.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock

        with FileLock(str(root / f".{spec.dataset_dir}.lock")):  # a concurrent run extracts it, or waits
            if not (root / spec.dataset_dir).is_dir():
                _extract(Path(path), root, spec, f"{archive} of {self.source}")
        return root

    def _download(self, archive: str) -> tuple[str, str]:
        """The archive in the Hub cache (downloaded if needed, after a free-space check) and its commit."""
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url

        where = f"{archive} of {self.source}"
        cache = _hub_cache()
        path = None
        if _COMMIT.match(self.revision) or constants.HF_HUB_OFFLINE:  # a branch online: asked where it points now
            try:
                path = hf_hub_download(
                    self.repo_id, archive, revision=self.revision, cache_dir=cache, local_files_only=True
                )
            except Exception:  # not in the cache (or the cache's ref names no such commit)
                path = None
        if path is None:
            if constants.HF_HUB_OFFLINE:
                raise OSError(
                    f"{where} is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE=1 forbids downloading it; "
                    "run once with network access (unset HF_HUB_OFFLINE), or pass a local CoOp data root."
                )
            try:
                size = get_hf_file_metadata(hf_hub_url(self.repo_id, archive, revision=self.revision)).size
            except Exception as error:
                raise self._hub_error(error, archive, cache) from None
            _check_space(size, Path(cache), f"downloading {where}")
            try:
                path = hf_hub_download(self.repo_id, archive, revision=self.revision, cache_dir=cache)
            except Exception as error:
                raise self._hub_error(error, archive, cache) from None
        snapshot = Path(path).parent
        commit = snapshot.name if snapshot.parent.name == "snapshots" else self.revision
        return path, commit

    def _hub_error(self, error: Exception, archive: str, cache: str) -> OSError:
        """A download error as one line saying what to do."""
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if isinstance(error, GatedRepoError):
            return OSError(
                f"{self.repo_id} is gated: accept its terms on https://huggingface.co/{self.repo_id} and log in (hf "
                "auth login), then run again."
            )
        if isinstance(error, RevisionNotFoundError):
            return OSError(
                f"Revision {self.revision!r} of {self.repo_id} does not exist; use hub (the pinned revision "
                f"{HUB_DATA_REVISION}) or an existing commit, branch or tag."
            )
        if isinstance(error, RepositoryNotFoundError):
            return OSError(
                f"The Hub repository {self.repo_id} does not exist or is private (it is read as a model repository); "
                "check the name, or log in (hf auth login) if it is yours."
            )
        if isinstance(error, EntryNotFoundError):
            return OSError(
                f"{self.source} has no file {archive}; a Hub data root holds one zip archive per dataset, as "
                f"{HUB_DATA_REPO} does."
            )
        if isinstance(error, OSError) and error.errno == 28:  # ENOSPC: the partial download resumes next time
            return OSError(
                f"The disk filled up while downloading {archive} of {self.source} into {cache}. Free some space "
                "(the download resumes where it stopped), or set HF_HOME to a disk with room."
            )
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        return OSError(
            f"Cannot download {archive} of {self.source}, and it is not in the Hugging Face cache {cache} "
            f"({type(error).__name__}: {reason}); check the network or proxy settings, or pass a local CoOp data root."
        )


def _remove_download(path: Path) -> None:
    """Removes an archive from the Hub cache (the snapshot's link and the blob it points to)."""
    blob = Path(os.path.realpath(path))
    for item in {path, blob}:
        try:
            item.unlink()
        except FileNotFoundError:
            pass


def _corrupt(path: Path, where: str, error: Exception) -> ValueError:
    """Removes a corrupt or truncated archive from the Hub cache (the next run downloads it again); the error."""
    _remove_download(path)
    return ValueError(
        f"{where} is corrupt or truncated ({error}); it was removed from the Hugging Face cache: run again to "
        "download it again."
    )


def _members(zf: zipfile.ZipFile, spec: BenchmarkSpec, where: str) -> list[zipfile.ZipInfo]:
    """The archive's entries, each checked to land inside `<dataset folder>/`."""
    members, top = [], set()
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        if name.startswith(_IGNORED) or PurePosixPath(name).name == ".DS_Store":
            continue
        parts = PurePosixPath(name).parts
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise ValueError(
                f"{where} has an entry {info.filename!r} that would be written outside its folder; refused (nothing "
                "was extracted). Use an archive without '../' or absolute paths."
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ValueError(
                f"{where} has a link {info.filename!r}; archives with links are refused (nothing was extracted)."
            )
        top.add(parts[0] if parts else "")
        members.append(info)
    if top != {spec.dataset_dir}:
        raise ValueError(
            f"{where} does not hold the folder {spec.dataset_dir}/ alone (its top level: {sorted(top)[:10]}); "
            f"expected CoOp's layout, {spec.dataset_dir}/{_expected_file(spec)}."
        )
    return members


def _expected_file(spec: BenchmarkSpec) -> str:
    """The file (or folder) that shows a dataset folder is complete."""
    if spec.split_file:
        return spec.split_file
    if spec.layout == "fgvc_txt":
        return "images_variant_train.txt"
    return f"{spec.image_dir}/"


def _extract(path: Path, root: Path, spec: BenchmarkSpec, where: str) -> None:
    """Extracts `path` into a temporary folder beside `root/<dataset folder>`, checks it, then renames it."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise _corrupt(path, where, error) from None
    temporary = None
    try:
        with zf:
            members = _members(zf, spec, where)
            _check_space(sum(info.file_size for info in members), root, f"extracting {where}")
            import tempfile

            temporary = Path(tempfile.mkdtemp(prefix=f".{spec.dataset_dir}.", suffix=".partial", dir=root))
            try:
                zf.extractall(temporary, members=members)
            except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as error:
                raise _corrupt(path, where, error) from None
        folder = temporary / spec.dataset_dir
        if spec.class_names_from == "classnames.txt" and not (folder / "classnames.txt").is_file():
            shutil.copyfile(Path(__file__).with_name("imagenet_classnames.txt"), folder / "classnames.txt")
        if not (folder / _expected_file(spec)).exists():
            raise ValueError(
                f"{where} has no {spec.dataset_dir}/{_expected_file(spec)}; expected CoOp's layout for "
                f"{spec.name} (see CoOp's DATASETS.md)."
            )
        os.replace(folder, root / spec.dataset_dir)
    except OSError as error:
        if getattr(error, "errno", None) == 28:  # ENOSPC
            raise OSError(
                f"The disk filled up while extracting {where} into {root}; nothing was kept. Free some space, or "
                "set HF_HOME to a disk with room."
            ) from None
        raise
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


# ---- ImageNet ----------------------------------------------------------------------------------------------------


def imagenet_classnames() -> dict[str, str]:
    """CoOp's ImageNet `classnames.txt`: `{wnid: readable name}` in label order (sorted WordNet ids)."""
    return read_classnames(Path(__file__).with_name("imagenet_classnames.txt"))


_ANCHORS = {0: "tench", 1: "goldfish", 999: "toilet tissue"}
"""Labels of ILSVRC/imagenet-1k whose ClassLabel names start with these (its labels are in sorted wnid order)."""


def load_imagenet_from_hub(split: str) -> ImageRecords:
    """One split of `ILSVRC/imagenet-1k` (`train`, or `validation`, CoOp's ImageNet test set), with CoOp's names.

    Args:
        split (`str`): `"train"` or `"validation"`.

    Raises:
        OSError: The dataset is gated and the user has no access (one line saying what to do), or cannot be reached.
        ValueError: Its labels are not in the expected order.
    """
    import datasets
    from huggingface_hub.errors import GatedRepoError

    from .hf import records_from_hf_dataset

    try:
        dataset = datasets.load_dataset(IMAGENET_HUB_DATASET, split=split)
    except (GatedRepoError, datasets.exceptions.DatasetNotFoundError) as error:
        if isinstance(error, GatedRepoError) or "gated" in str(error).lower():
            raise OSError(
                f"{IMAGENET_HUB_DATASET} is gated: accept its terms on https://huggingface.co/datasets/"
                f"{IMAGENET_HUB_DATASET} and log in (hf auth login), or pass a local CoOp data root with imagenet/."
            ) from None
        raise
    names = list(imagenet_classnames().values())
    labels = list(dataset.features["label"].names)
    wrong = [i for i, start in _ANCHORS.items() if len(labels) != 1000 or not labels[i].startswith(start)]
    if wrong:
        raise ValueError(
            f"{IMAGENET_HUB_DATASET} has {len(labels)} labels not in sorted WordNet-id order (label {wrong[0]} is "
            f"{labels[wrong[0]] if wrong[0] < len(labels) else None!r}); CoOp's class names would be misassigned."
        )
    return records_from_hf_dataset(dataset, "image", "label", names, name=f"{IMAGENET_HUB_DATASET}/{split}")
