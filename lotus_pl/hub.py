"""One resolver for every model path lotus_pl accepts: a local folder, or a Hugging Face Hub id.

``resolve_model_path("checkpoints/sd2")`` returns an existing folder as is, and nothing is fetched.
Anything else of the form ``org/name`` or ``org/name@revision`` is a Hub model id, resolved by
``huggingface_hub.snapshot_download`` through its cache: a cached snapshot is used offline
(``HF_HUB_OFFLINE=1``, or no network), a revision (branch, tag or commit) is pinned after ``@``,
and when the id is neither cached nor reachable the error names it. The denoisers
(``PretrainedStableDiffusion``, ``DiffusersUNet``), the ``StableDiffusionVAE`` codec, the noise
schedule's ``pretrained_path`` and ``lotus_pl export`` all go through here.
"""

from __future__ import annotations

import re
from pathlib import Path

#: ``org/name`` with an optional ``@revision``: the Hub's repository naming (letters, digits, ``-_.``).
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?")


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` if ``text`` reads as a Hub model id, else ``None``."""
    match = HUB_ID.fullmatch(text)
    if match is None or ".." in text or text.endswith((".", "-")):
        return None
    return match["repo"], match["revision"]


def resolve_model_path(path_or_id: str | Path) -> Path:
    """A local folder for ``path_or_id``: the folder itself if it exists, else the Hub snapshot of
    the id (from the cache when offline). A path that is neither an existing folder nor a Hub id
    is returned unchanged, so that the caller's own check names what is missing there."""
    path = Path(path_or_id)
    if path.is_dir():
        return path
    parsed = parse_hub_id(str(path_or_id))
    if parsed is None:
        return path
    repo_id, revision = parsed
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError, ValueError) as error:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise FileNotFoundError(
            f"{path_or_id!s} is not a local folder, and as a Hugging Face Hub id ({repo_id}"
            f"{'@' + revision if revision else ''}) it is neither in the cache ({constants.HF_HUB_CACHE}) nor "
            f"reachable{offline}: {type(error).__name__}: {error}. Give a local diffusers folder, or download the "
            f"model once with network access (`hf download {repo_id}`)."
        ) from error
