"""Reference transfer for the driver-s3 benchmark: boto3 streams the same
bytes up and down with the same part size and concurrency.

Reads the AWS_* variables and S3_BUCKET; arguments: KEY SIZE_BYTES PART_BYTES
CONCURRENCY. Prints one JSON line: {"up_mbps": ..., "down_mbps": ...}.
"""
import io
import json
import os
import sys
import time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


class Sink(io.RawIOBase):
    """Discards what is written, like the Rust side's reader loop."""

    def writable(self):
        return True

    def write(self, b):
        return len(b)


def main():
    key, size, part, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    client = boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        region_name=os.environ["AWS_REGION"],
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=max(10, concurrency),
        ),
    )
    bucket = os.environ["S3_BUCKET"]
    transfer = TransferConfig(
        multipart_threshold=part, multipart_chunksize=part, max_concurrency=concurrency, use_threads=True
    )
    data = os.urandom(size)
    start = time.perf_counter()
    client.upload_fileobj(io.BytesIO(data), bucket, key, Config=transfer)
    up = time.perf_counter() - start
    start = time.perf_counter()
    client.download_fileobj(bucket, key, Sink(), Config=transfer)
    down = time.perf_counter() - start
    client.delete_object(Bucket=bucket, Key=key)
    print(json.dumps({"up_mbps": size / 1e6 / up, "down_mbps": size / 1e6 / down}))


if __name__ == "__main__":
    main()
