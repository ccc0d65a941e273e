"""The one storage layer: ``s3://bucket/key`` through boto3, ``file://`` URIs and plain paths.

Every part of faceops that reads inputs or writes outputs goes through these functions, so AWS S3,
Huawei OBS, MinIO and SeaweedFS behave exactly like a local folder. Callers use this package
(``from jobs.core import storage``); its modules hold one concern each:

- ``uris``: URIs parsed into locations, local files and the staged local write (temp + rename);
- ``s3``: the S3 client, its bounded timeouts, upload retries and the errors that say what to check;
- ``publish``: uploads and writes, with a folder's ``_manifest.json`` written last so readers
  never see half an output;
- ``read``: stat, list, download and (ranged) reads;
- ``cleanup``: :func:`gc` of what interrupted uploads leave (multipart uploads, staging prefixes,
  local ``.part`` folders), which every upload also runs on its own target.
"""
from jobs.core.storage.cleanup import ORPHAN_SECONDS, gc
from jobs.core.storage.publish import PART_SIZE, PROGRESS_MIN_BYTES, upload, write_bytes
from jobs.core.storage.read import download, exists, list, read_bytes, read_range, stat
from jobs.core.storage.s3 import StorageUnavailable, aws_region, s3_client, timeouts
from jobs.core.storage.uris import MANIFEST, STAGING_MARK, Location, ObjectInfo, is_remote, join, parse

__all__ = ["MANIFEST", "ORPHAN_SECONDS", "PART_SIZE", "PROGRESS_MIN_BYTES", "STAGING_MARK", "Location", "ObjectInfo",
           "StorageUnavailable", "aws_region", "download", "exists", "gc", "is_remote", "join", "list", "parse", "read_bytes",
           "read_range", "s3_client", "stat", "timeouts", "upload", "write_bytes"]
