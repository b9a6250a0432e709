"""The embedded default corpus: the long descriptions of the Python distributions installed here.

Humpback needs unlabelled human-written text. Every installed distribution carries its PyPI long
description (usually its README) in its metadata, so any machine that can run this project already
holds a few hundred kilobytes of real prose, written by other people, in markdown and reStructuredText,
with the badges, link lists and tables that a segmenter has to cope with - and nothing is downloaded.
This project's own distribution is left out: the corpus must be text the project did not write.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re

MIN_DESCRIPTION_CHARS = 200  # "UNKNOWN", one-line summaries and "See README" are not worth segmenting
OWN_NAME = "selftaught"


def canonical_name(name: str) -> str:
    """PEP 503 normalisation: `Typing_Extensions` and `typing-extensions` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def description(dist: importlib.metadata.Distribution) -> str:
    """The long description: the message body (metadata 2.1+) or the older `Description` header."""
    metadata = dist.metadata
    body = metadata.get_payload() if hasattr(metadata, "get_payload") else None
    if isinstance(body, str) and body.strip():
        return body
    header = metadata.get("Description") or ""
    # Header continuation lines are indented by 8 spaces, or by 7 and a "|" (setuptools).
    return re.sub(r"\n(?: {7}\|| {8})", "\n", header)


def installed_package_descriptions(limit: int | None = None) -> list[dict]:
    """Documents {text, source="pypi-metadata:name==version"}, sorted by name, one per distribution.

    A distribution found twice on sys.path (an egg-info next to a dist-info, say) counts once, and so does
    a description shared word for word by several distributions.
    """
    found = []
    for dist in importlib.metadata.distributions():
        name, version = dist.metadata.get("Name"), dist.metadata.get("Version")
        if not name or canonical_name(name) == OWN_NAME:
            continue
        text = description(dist).replace("\r\n", "\n").strip()
        if len(text) >= MIN_DESCRIPTION_CHARS and text != "UNKNOWN":
            found.append((canonical_name(name), str(version), text, name))
    documents, names, texts = [], set(), set()
    for key, version, text, name in sorted(found):
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if key in names or digest in texts:
            continue
        names.add(key)
        texts.add(digest)
        documents.append({"text": text, "source": f"pypi-metadata:{name}=={version}"})
    return documents[:limit] if limit is not None else documents
