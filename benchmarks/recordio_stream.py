"""Streaming a RecordIO .rec from S3 against download-then-read, in one run.

Packs a recognition set of at least --mb MB (the shared LFW photos repeated, insightface layout),
uploads it to a SeaweedFS S3 server started here on loopback, then trains-reads one epoch two ways
with the same Gluon DataLoader (batch --batch, shuffled by the read-ahead sampler, JPEG decode):

- stream: ``RecognitionDataset("s3://...")`` straight away (ranged GETs with read-ahead);
- baseline: ``storage.download`` the folder, then ``RecognitionDataset(local folder)``.

Ratio = baseline time to first batch (download included) / streaming time to first batch; goal 20.
``epoch_throughput`` = local epoch time (after the download) / streaming epoch time; goal 0.9.
Each figure is the best of --rounds alternating runs (the machine is shared). Raw record reads
without JPEG decoding are timed too (``raw_read_throughput``).

Loopback moves hundreds of MB/s with no latency, which no object store gives a training machine,
so by default both ways read through a proxy that caps the server-to-client rate at --link-mbps
(1000 Mbit/s: a 1 Gbit/s link). ``--link-mbps 0`` reads loopback directly; the JSON reports the
link used.
Run: .venv/bin/python benchmarks/recordio_stream.py [--mb 520] [--batch 128] [--link-mbps 1000]
"""
from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

from common import parse_args, report  # first: it puts this checkout on sys.path
from jobs.core import storage
from tests.harness import LFW10
from tests.harness.net import LoopbackProxy
from tests.harness.s3 import S3Server, running_s3
from train.pack import Sample, write_recognition

PER_IDENTITY = 50


def samples(photos: list[Path], total_bytes: int) -> Iterator[Sample]:
    """LFW photos over and over until ``total_bytes``, PER_IDENTITY images per identity."""
    written = 0
    for i, photo in enumerate(itertools.cycle(photos)):
        if written >= total_bytes:
            return
        data = photo.read_bytes()
        written += len(data)
        yield Sample(f"id{i // PER_IDENTITY:06d}", photo.name, data, (250, 250))


def start_s3(stack: ExitStack, root: Path) -> S3Server:
    """The test suite's SeaweedFS (tests/harness/s3.py), started for this run until ``stack``
    closes, with faceops pointed at it."""
    try:
        server = stack.enter_context(running_s3(root))
    except RuntimeError as exc:
        sys.exit(f"SeaweedFS did not start: {exc}")
    os.environ.update(server.env())
    return server


def epoch(uri: str, batch: int, start: float) -> tuple[float, float, int]:
    """Open the dataset at ``uri`` and run one shuffled epoch through a DataLoader: seconds from
    ``start`` to the first batch and to the end, and the number of samples."""
    from mxnet import gluon

    from train.data import RecognitionDataset

    dataset = RecognitionDataset(uri)
    loader = gluon.data.DataLoader(dataset, batch_size=batch, sampler=dataset.sampler(shuffle=True, seed=0))
    first, count = None, 0
    for images, _ in loader:
        images.wait_to_read()
        first = first or time.perf_counter() - start
        count += images.shape[0]
    return first, time.perf_counter() - start, count


def raw_read(uri: str) -> float:
    """Seconds to read every record of ``uri`` in file order without decoding (pure I/O)."""
    from train.recordio import open_record_file

    start = time.perf_counter()
    file = open_record_file(uri)
    sum(len(payload) for _, payload in file.read_many(sorted(file.keys, key=file.offsets.__getitem__)))
    return time.perf_counter() - start


def main() -> None:
    args = parse_args(__doc__, {
        "--mb": {"type": int, "default": 520, "help": "size of the .rec to stream (MB)"},
        "--batch": {"type": int, "default": 128},
        "--rounds": {"type": int, "default": 2, "help": "epochs of each kind, alternating; best is kept"},
        "--photos": {"type": Path, "default": LFW10, "help": "folder of identity folders of photos"},
        "--link-mbps": {"type": float, "default": 1000, "help": "link rate cap in Mbit/s (0: raw loopback)"},
    })
    photos = sorted(args.photos.glob("*/*.jpg"))
    with tempfile.TemporaryDirectory(prefix="faceops-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "pack").mkdir()
        images, identities, _, _ = write_recognition(tmp / "pack", samples(photos, args.mb * 1024 * 1024))
        rec_bytes = (tmp / "pack" / "train.rec").stat().st_size
        with ExitStack() as stack:
            server = start_s3(stack, tmp / "s3")
            link = "loopback"
            server.client().create_bucket(Bucket="bench")
            uri = "s3://bench/recognition_train_data/"
            storage.upload(tmp / "pack", uri, progress=False)
            if args.link_mbps > 0:
                proxy = LoopbackProxy(server.endpoint, bytes_per_s=args.link_mbps * 1e6 / 8)
                stack.callback(proxy.close)
                os.environ["FACEOPS_S3_ENDPOINT"] = proxy.endpoint
                link = f"{args.link_mbps:g} Mbit/s"
            print(f"{images} images of {identities} identities, train.rec {rec_bytes / 2**20:.0f} MiB, "
                  f"read over a {link} link")

            stream, local = [], []
            for round_ in range(args.rounds):
                first, total, n = epoch(uri, args.batch, time.perf_counter())
                stream.append((first, total))
                print(f"stream   : first batch {first:7.3f} s, epoch {total:6.1f} s ({n} samples)")
                shutil.rmtree(tmp / "local", ignore_errors=True)
                start = time.perf_counter()
                storage.download(uri, tmp / "local", progress=False)
                downloaded = time.perf_counter() - start
                first, total, n = epoch(str(tmp / "local"), args.batch, start)
                local.append((first, total - downloaded, downloaded))
                print(f"download : {downloaded:.1f} s, then first batch {first:7.3f} s, epoch {total:6.1f} s "
                      f"({total - downloaded:.1f} s reading the local file)")
            raw_stream, raw_local = raw_read(uri), raw_read(str(tmp / "local"))
            print(f"raw read : stream {raw_stream:.1f} s ({rec_bytes / 2**20 / raw_stream:.0f} MiB/s), "
                  f"local {raw_local:.1f} s ({rec_bytes / 2**20 / raw_local:.0f} MiB/s)")
    # Best of the rounds for each figure: the machine is shared, so the minimum is the least noisy.
    stream_first, stream_epoch = min(f for f, _ in stream), min(t for _, t in stream)
    local_first, local_read, downloaded = (min(v[i] for v in local) for i in range(3))
    report("recordio_stream", round(local_first / stream_first, 1), 20,
           epoch_throughput=round(local_read / stream_epoch, 3), epoch_throughput_goal=0.9,
           raw_read_throughput=round(raw_local / raw_stream, 3),
           first_batch_s={"stream": round(stream_first, 3), "download_then_read": round(local_first, 3)},
           epoch_s={"stream": round(stream_epoch, 1), "local_read": round(local_read, 1), "download": round(downloaded, 1)},
           link=link, rec_mib=round(rec_bytes / 2**20), images=images, batch=args.batch, rounds=args.rounds)

if __name__ == "__main__":
    main()
