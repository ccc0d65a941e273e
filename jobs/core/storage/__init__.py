"""The one storage layer: ``s3://bucket/key`` through boto3, ``file://`` URIs and plain paths.

Every part of faceops that reads inputs or writes outputs goes through these functions, so AWS S3,
Huawei OBS, MinIO and SeaweedFS behave exactly like a local folder. Callers use this package
(``from jobs.core import storage``); its modules hold one concern each:

- ``uris``: URIs parsed into locations, local files and the staged local write (temp + rename);
- ``s3``: the S3 client, its bounded timeouts (one stated bound per request), upload retries
  (each reported with its cause), a one-try reachability :func:`probe` for dry runs, and the
  errors that say what to check;
- ``targets``: where outputs may go: system folders and folders of other people's files are
  refused, by one rule for ``file://`` and ``s3://`` (:func:`check_target`);
- ``publish``: uploads and writes of our own files only (nothing else is removed), with a
  folder's ``_manifest.json`` written last so readers never see half an output;
- ``read``: stat, list, download and (ranged) reads;
- ``cleanup``: :func:`gc` of what interrupted uploads leave (multipart uploads, staging prefixes,
  local ``.part`` folders), which every upload also runs on its own target.
"""
from jobs.core.storage.cleanup import ORPHAN_SECONDS, gc
from jobs.core.storage.publish import PART_SIZE, PROGRESS_MIN_BYTES, upload, write_bytes
from jobs.core.storage.read import download, exists, list, read_bytes, read_range, stat
from jobs.core.storage.s3 import (StorageUnavailable, aws_region, probe, reporting_retries, request_attempts,
                                  request_bound, require_bucket, s3_client, timeouts)
from jobs.core.storage.targets import UnsafeTarget, check_target, refuse_system_folder
from jobs.core.storage.uris import MANIFEST, STAGING_MARK, Location, ObjectInfo, is_remote, join, parse

__all__ = ["MANIFEST", "ORPHAN_SECONDS", "PART_SIZE", "PROGRESS_MIN_BYTES", "STAGING_MARK", "Location", "ObjectInfo",
           "StorageUnavailable", "UnsafeTarget", "aws_region", "check_target", "download", "exists", "gc", "is_remote",
           "join", "list", "parse", "probe", "read_bytes", "read_range", "refuse_system_folder", "reporting_retries",
           "request_attempts", "request_bound", "require_bucket", "s3_client", "stat", "timeouts", "upload",
           "write_bytes"]
