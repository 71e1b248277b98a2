"""Finding GPT-2 files: the local folder, the huggingface_hub cache, or a download that fails fast.

    fetch_pretrained("gpt2")           the folder with config.json and model.safetensors of
                                       GPT-2 124M (also gpt2-medium, gpt2-large, gpt2-xl), of any
                                       hub id "owner/name", or a local folder as it is

Downloads go through `huggingface_hub` and its cache (`$HF_HOME`, by default
~/.cache/huggingface), so a model is fetched once. Only safetensors files are fetched, never
pickles (`pytorch_model.bin`): unpickling a file can run any code its author put in it.
Offline, a 3 s probe of the hub replaces huggingface_hub's retries, and only the cache is
searched. When the files cannot be had (offline, unknown name, a folder without them) the
error is a `PretrainedUnavailableError` that says what was tried and how to fix it.
`wikigpt_lib.pretrained` converts and loads what this module finds.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

# The short names of OpenAI's four GPT-2 sizes and where the hub keeps them.
HUB_IDS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # big models: weights split over several files
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


class PretrainedUnavailableError(OSError):
    """The files of a pretrained model could not be found locally nor downloaded. The
    message says what was tried and how to fix it."""


def _offline_mode() -> bool:
    """HF_HUB_OFFLINE, as the environment says now or as huggingface_hub read it on import."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_reachable() -> bool:
    # Offline, huggingface_hub retries for ~25 s before it gives up; a 3 s probe of the host
    # answers at once (see wikigpt_lib.data.hub_reachable).
    from wikigpt_lib.data import hub_reachable

    return hub_reachable()


def _download(repo_id: str, filename: str, **kwargs: Any) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, **kwargs))


def _fetch(repo_id: str, filename: str, local_only: bool, **kwargs: Any) -> Path | None:
    """`filename` of `repo_id` from the hub cache, downloaded first if need be; None if the
    repo has no such file (or, when only the cache is searched, the cache lacks it)."""
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return _download(repo_id, filename, local_files_only=local_only, **kwargs)
    except LocalEntryNotFoundError:
        if local_only:
            return None
        raise  # online, yet neither the hub nor the cache gave the file: a connection problem
    except EntryNotFoundError:
        return None


def _hub_cache(cache_dir: str | os.PathLike | None) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def _fetch_from_hub(
    name: str, tried: list[str], revision: str | None, cache_dir: str | os.PathLike | None
) -> Path:
    """The snapshot folder of model `name` in the hub cache, with config.json and the weights."""
    from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    from wikigpt_lib.data import hub_address

    repo_id = HUB_IDS.get(name, name)
    label = name if name == repo_id else f"{name} ({repo_id})"
    local_only = _offline_mode()
    if local_only:
        tried.append("the Hugging Face hub: skipped, HF_HUB_OFFLINE is set")
    elif not _hub_reachable():
        host, port = hub_address()
        tried.append(f"the Hugging Face hub: {host}:{port} cannot be reached (offline?)")
        local_only = True
    kwargs = {"revision": revision, "cache_dir": cache_dir}
    where = f"the hub cache {_hub_cache(cache_dir)}" if local_only else f"the hub repo {repo_id}"
    try:
        config = _fetch(repo_id, CONFIG_FILE, local_only, **kwargs)
        if config is None:
            tried.append(f"{where}: no {CONFIG_FILE} of {repo_id}")
            raise _unavailable(label, tried)
        if _fetch(repo_id, WEIGHTS_FILE, local_only, **kwargs) is None:
            index = _fetch(repo_id, INDEX_FILE, local_only, **kwargs)
            if index is None:
                tried.append(
                    f"{where}: no {WEIGHTS_FILE} (nor {INDEX_FILE}) of {repo_id}; this library "
                    "reads safetensors weights only, never pickles such as pytorch_model.bin"
                )
                raise _unavailable(label, tried)
            for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
                if _fetch(repo_id, shard, local_only, **kwargs) is None:
                    tried.append(f"{where}: no {shard} (listed in {INDEX_FILE})")
                    raise _unavailable(label, tried)
        return config.parent
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        tried.append(f"the hub: {type(err).__name__}: no repo {repo_id!r} at revision "
                     f"{revision or 'main'} (or it is private or gated: log in with `hf auth login`)")  # fmt: skip
        raise _unavailable(label, tried) from err
    except (HfHubHTTPError, OSError) as err:
        if isinstance(err, PretrainedUnavailableError):
            raise
        why = str(err).splitlines()[0][:200] if str(err) else ""
        tried.append(
            f"the hub, then the cache {_hub_cache(cache_dir)}: {type(err).__name__}: {why}"
        )
        raise _unavailable(label, tried) from err


def _unavailable(what: str, tried: list[str]) -> PretrainedUnavailableError:
    return PretrainedUnavailableError(
        f"the pretrained model {what} could not be loaded. Tried:\n  - "
        + "\n  - ".join(tried)
        + "\nTo fix: connect to the internet once (the files are then cached under $HF_HOME, "
        "by default ~/.cache/huggingface); or, if they are cached elsewhere, point HF_HOME (or "
        "HF_HUB_CACHE) there; or download config.json and model.safetensors yourself and pass "
        "their folder: GPT.from_pretrained('path/to/folder')."
    )


def _check_folder(folder: Path) -> Path:
    """`folder` if it holds config.json and safetensors weights; otherwise say what it lacks."""
    if not (folder / CONFIG_FILE).is_file():
        raise PretrainedUnavailableError(
            f"{folder} has no {CONFIG_FILE}: a pretrained model folder holds {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}, as transformers' save_pretrained and GPT.save_pretrained write them."
        )
    if (folder / WEIGHTS_FILE).is_file() or (folder / INDEX_FILE).is_file():
        return folder
    pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise PretrainedUnavailableError(
            f"{folder} holds its weights only as pickle files ({', '.join(pickles)}), which this "
            "library never loads: unpickling a file can run any code its author put in it. If "
            "you trust it, convert it to safetensors once, e.g. with transformers: "
            "GPT2LMHeadModel.from_pretrained(folder).save_pretrained(folder) writes "
            f"{WEIGHTS_FILE}."
        )
    raise PretrainedUnavailableError(
        f"{folder} has no {WEIGHTS_FILE} (nor {INDEX_FILE}): nothing to load the weights from."
    )


def fetch_pretrained(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The local folder holding a pretrained model's config.json and safetensors weights.

    name_or_path: a folder (used as it is, and first: a folder named "gpt2" wins over the
    hub); "gpt2", "gpt2-medium", "gpt2-large" or "gpt2-xl" (OpenAI's GPT-2 in
    openai-community/...); or any hub id "owner/name". Hub files are downloaded once into the
    huggingface_hub cache (`cache_dir`, default $HF_HOME/hub) and read from there afterwards,
    also offline. Raises PretrainedUnavailableError within a few seconds when they cannot be
    had, saying what was tried.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _check_folder(path)
    name = str(name_or_path)
    tried = [f"a local folder {path.absolute()}: there is none"]
    if name not in HUB_IDS and not _HUB_ID.match(name):
        raise PretrainedUnavailableError(
            f"{name!r} is neither a folder nor a model name. Tried:\n  - {tried[0]}\nUse a "
            f"folder with {CONFIG_FILE} and {WEIGHTS_FILE}, one of {', '.join(HUB_IDS)}, or a "
            "Hugging Face hub id 'owner/name'."
        )
    return _check_folder(_fetch_from_hub(name, tried, revision, cache_dir))
