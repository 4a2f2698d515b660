"""Save the S3 result-storage block the production deployment names.

``retrain/weekly-ecs`` keeps Prefect's cached task results in the prefect-aws
block ``s3-bucket/tweetflow-results``. This saves (or updates) it on the Prefect
API in ``PREFECT_API_URL``. Credentials are not stored in the block: boto3's
default chain applies where the flow runs (the ECS task role in production).

Usage: ``python -m deployments.blocks --bucket NAME [--folder PREFIX]
[--name tweetflow-results] [--region REGION]``.
"""

from __future__ import annotations

import argparse
import re
import sys

BLOCK_NAME = "tweetflow-results"
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def save_result_storage(
    bucket: str, folder: str = "", name: str = BLOCK_NAME, region: str | None = None
) -> str:
    """Save the S3Bucket block; return its slug (``s3-bucket/<name>``)."""
    from prefect_aws import AwsCredentials, S3Bucket

    if not BUCKET_NAME.match(bucket):
        raise ValueError(f"{bucket!r} is not a valid S3 bucket name")
    block = S3Bucket(
        bucket_name=bucket,
        bucket_folder=folder.strip("/"),
        credentials=AwsCredentials(region_name=region),
    )
    block.save(name, overwrite=True)
    return f"s3-bucket/{name}"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m deployments.blocks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--bucket", required=True, help="S3 bucket for the results")
    parser.add_argument("--folder", default="prefect-results", help="key prefix")
    parser.add_argument("--name", default=BLOCK_NAME, help="block name")
    parser.add_argument("--region", default=None, help="AWS region of the bucket")
    args = parser.parse_args(argv)
    try:
        slug = save_result_storage(args.bucket, args.folder, args.name, args.region)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved {slug} -> s3://{args.bucket}/{args.folder.strip('/')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
