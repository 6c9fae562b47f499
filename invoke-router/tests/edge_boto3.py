"""Drives the router with boto3 as users do (called by edge_clients.rs).

Environment: ENDPOINT, CA_BUNDLE, ACCESS_KEY, SECRET_KEY, BIG_ZIP (a 45 MiB
zip), SMALL_ZIP. Prints one JSON line of what it saw.
"""
import base64
import json
import os

import boto3
import botocore.config
from botocore.exceptions import ClientError

client = boto3.client(
    "lambda",
    endpoint_url=os.environ["ENDPOINT"],
    verify=os.environ["CA_BUNDLE"],
    region_name="us-east-1",
    aws_access_key_id=os.environ["ACCESS_KEY"],
    aws_secret_access_key=os.environ["SECRET_KEY"],
    config=botocore.config.Config(
        retries={"total_max_attempts": 1}, read_timeout=240, connect_timeout=120
    ),
)
ROLE = "arn:aws:iam::123456789012:role/lambda"
seen = {}


def create(name, handler, zip_path):
    with open(zip_path, "rb") as f:
        code = f.read()
    r = client.create_function(
        FunctionName=name, Runtime="exec", Role=ROLE, Handler=handler,
        Code={"ZipFile": code}, MemorySize=128, Timeout=60,
    )
    return r


def refused(**kwargs):
    try:
        client.invoke(**kwargs)
    except ClientError as e:
        return [e.response["Error"]["Code"],
                e.response["ResponseMetadata"]["HTTPStatusCode"]]
    return ["accepted", 0]


def json_string(n):
    return b'"' + b"a" * (n - 2) + b'"'


r = create("big", "wc -c < blob.bin", os.environ["BIG_ZIP"])
seen["create_big"] = r["ResponseMetadata"]["HTTPStatusCode"]
seen["code_size"] = r["CodeSize"]
out = client.invoke(FunctionName="big", Payload=b"{}")
seen["big_result"] = out["Payload"].read().decode().strip()

create("count", "echo counting >&2; wc -c", os.environ["SMALL_ZIP"])
out = client.invoke(FunctionName="count", Payload=json_string(5 * 1024 * 1024))
seen["five_mib_result"] = out["Payload"].read().decode().strip()
out = client.invoke(FunctionName="count", Payload=b"{}", LogType="Tail")
seen["tail_has_log"] = "counting" in base64.b64decode(
    out.get("LogResult", "")).decode(errors="replace")

seen["over_6_mib"] = refused(
    FunctionName="count", Payload=json_string(6 * 1024 * 1024 + 1))
seen["event_over_256_kib"] = refused(
    FunctionName="count", InvocationType="Event",
    Payload=json_string(256 * 1024 + 1))
out = client.invoke(FunctionName="count", InvocationType="Event", Payload=b"{}")
seen["event_small"] = out["StatusCode"]
print(json.dumps(seen))
