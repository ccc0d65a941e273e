"""What ``faceops image list`` shows: the images faceops built (found by their content-hash
label) on the engine, one row per tag, with the digest each tag was last pushed as."""
from __future__ import annotations

from images import digests
from images.build import HASH_LABEL
from images.engine import client


def list_images() -> list[dict]:
    """Rows ``{ref, id, size, created, content_hash, digest}``, newest image first;
    ``digest`` is None for a tag that was never pushed."""
    rows = []
    images = client().api.images(filters={"label": HASH_LABEL})
    for image in sorted(images, key=lambda i: i["Created"], reverse=True):
        content_hash = (image.get("Labels") or {}).get(HASH_LABEL)
        for ref in image.get("RepoTags") or []:
            rows.append({"ref": ref, "id": image["Id"], "size": image["Size"], "created": image["Created"],
                         "content_hash": content_hash, "digest": digests.lookup(ref)})
    return rows
