#!/usr/bin/env python3
"""End-to-end S3 compatibility suite for insitu, driven by boto3.

Run by tests/tests/boto3_suite.rs against a freshly started cluster:

    INSITU_ENDPOINT=http://127.0.0.1:9555 \
    TENANT_A_KEY=... TENANT_A_SECRET=... \
    TENANT_B_KEY=... TENANT_B_SECRET=... \
    BUCKET_PREFIX=bt-123-0 \
    python3 tests/python/s3_boto3.py

Prints one line per check (`ok  name` or `FAIL name: detail`) and exits 1
if any check failed. Every check runs even when an earlier one fails; a
check whose setup failed fails with the setup's error.
"""

import base64
import datetime as dt
import hashlib
import json
import os
import re
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib

import boto3
import botocore
import botocore.handlers
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["INSITU_ENDPOINT"].rstrip("/")
A_KEY = os.environ["TENANT_A_KEY"]
A_SECRET = os.environ["TENANT_A_SECRET"]
B_KEY = os.environ["TENANT_B_KEY"]
B_SECRET = os.environ["TENANT_B_SECRET"]
PREFIX = os.environ["BUCKET_PREFIX"].lower()
REGION = "us-east-1"

MIB = 1024 * 1024
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTH_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"


def make_client(key=None, secret=None, unsigned=False):
    cfg = dict(
        region_name=REGION,
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1},
        connect_timeout=5,
        read_timeout=30,
    )
    if unsigned:
        cfg["signature_version"] = botocore.UNSIGNED
    else:
        cfg["signature_version"] = "s3v4"
    return boto3.session.Session().client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(**cfg),
    )


s3a = make_client(A_KEY, A_SECRET)
s3b = make_client(B_KEY, B_SECRET)
anon = make_client(unsigned=True)

# boto3 silently adds EncodingType=url to every ListObjects(V2)/
# ListObjectVersions call that does not set it, and then URL-decodes the
# answer; it decodes ONLY in that case (an explicit EncodingType='url' is
# returned raw). `s3raw` has that hook removed, so its listings without
# EncodingType exercise the server's plain (XML-escaped) key output.
s3raw = make_client(A_KEY, A_SECRET)
for _op in ("ListObjects", "ListObjectsV2", "ListObjectVersions"):
    s3raw.meta.events.unregister(f"before-parameter-build.s3.{_op}",
                                 botocore.handlers.set_list_objects_encoding_type_url)


def bname(suffix):
    return f"{PREFIX}-{suffix}"


BKT = bname("main")  # A's private bucket: objects, copy, tenant-B refusals
BKT_B = bname("bown")  # B's own bucket
BKT_DEL = bname("del")
BKT_KEYS = bname("keys")
BKT_LIST = bname("list")
BKT_MPU = bname("mpu")
BKT_PUB = bname("pub")
BKT_VER = bname("ver")
BKT_POST = bname("post")

# ---------------------------------------------------------------- runner

CHECKS = []
STATE = {}


def check(name):
    def deco(fn):
        CHECKS.append((name, fn))
        return fn

    return deco


class CheckFailed(AssertionError):
    pass


def fail(msg):
    raise CheckFailed(msg)


def eq(got, want, what):
    if got != want:
        fail(f"{what}: expected {want!r}, got {got!r}")


def md5_hex(data):
    return hashlib.md5(data).hexdigest()


def md5_b64(data):
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def quoted_md5(data):
    return f'"{md5_hex(data)}"'


def err_summary(e):
    r = e.response
    return (
        f"{r.get('ResponseMetadata', {}).get('HTTPStatusCode')} "
        f"{r.get('Error', {})}"
    )


def ok_summary(r):
    if isinstance(r, dict):
        r = {k: v for k, v in r.items() if k != "ResponseMetadata"}
        if "Body" in r:
            r["Body"] = "<stream>"
        s = repr(r)
        return s[:300]
    return repr(r)[:300]


def expect_error(code, status, fn, *args, **kwargs):
    """Calls fn, which must fail with S3 error `code` (str or tuple of
    acceptable codes) and HTTP `status`. Returns the ClientError."""
    codes = code if isinstance(code, tuple) else (code,)
    try:
        r = fn(*args, **kwargs)
    except ClientError as e:
        got_code = e.response.get("Error", {}).get("Code")
        got_status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if got_code not in codes or got_status != status:
            fail(f"expected {'/'.join(codes)} {status}, got {err_summary(e)}")
        return e
    fail(f"expected {'/'.join(codes)} {status}, but the call succeeded: {ok_summary(r)}")


def status_of(r):
    return r["ResponseMetadata"]["HTTPStatusCode"]


def body_of(r):
    return r["Body"].read()


def http(method, url, data=None, headers=None):
    """Plain HTTP request; returns (status, headers, body) and never raises
    on HTTP error statuses."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def xml_code(body):
    m = re.search(rb"<Code>([^<]*)</Code>", body or b"")
    return m.group(1).decode() if m else None


def expect_http_error(resp, status, code):
    st, _, body = resp
    codes = code if isinstance(code, tuple) else (code,)
    got = xml_code(body)
    if st != status or got not in codes:
        fail(f"expected {'/'.join(codes)} {status}, got {st} {got}: {body[:300]!r}")


def keys_of(resp):
    return [o["Key"] for o in resp.get("Contents", [])]


def prefixes_of(resp):
    return [p["Prefix"] for p in resp.get("CommonPrefixes", [])]


def url_decoded(resp):
    """Decodes a listing made with an explicit EncodingType='url' (S3 uses
    form encoding: botocore decodes its own with unquote_plus too)."""
    if resp.get("EncodingType") != "url":
        fail(f"EncodingType not echoed as 'url': {ok_summary(resp)}")
    u = urllib.parse.unquote_plus
    return ([u(k) for k in keys_of(resp)], [u(p) for p in prefixes_of(resp)],
            {k: u(resp[k]) for k in ("Prefix", "Delimiter", "StartAfter", "Marker", "NextMarker")
             if resp.get(k)})


# ---------------------------------------------------------------- buckets


@check("bucket: create_bucket by A")
def _():
    r = s3a.create_bucket(Bucket=BKT)
    eq(status_of(r), 200, "status")
    s3b.create_bucket(Bucket=BKT_B)


@check("bucket: list_buckets shows own buckets only")
def _():
    ra = s3a.list_buckets()
    names_a = [b["Name"] for b in ra["Buckets"]]
    if BKT not in names_a:
        fail(f"A does not see {BKT}: {names_a}")
    if BKT_B in names_a:
        fail(f"A sees B's bucket {BKT_B}: {names_a}")
    for b in ra["Buckets"]:
        if not isinstance(b.get("CreationDate"), dt.datetime):
            fail(f"bucket without CreationDate: {b}")
    if not ra.get("Owner", {}).get("ID"):
        fail(f"no Owner.ID in ListBuckets: {ra.get('Owner')}")
    names_b = [b["Name"] for b in s3b.list_buckets()["Buckets"]]
    if BKT in names_b:
        fail(f"B sees A's bucket {BKT}: {names_b}")
    if BKT_B not in names_b:
        fail(f"B does not see its own {BKT_B}: {names_b}")


@check("bucket: head_bucket")
def _():
    eq(status_of(s3a.head_bucket(Bucket=BKT)), 200, "status")
    expect_error("404", 404, s3a.head_bucket, Bucket=bname("nonexistent"))


@check("bucket: get_bucket_location")
def _():
    r = s3a.get_bucket_location(Bucket=BKT)
    # S3 reports us-east-1 as an empty LocationConstraint (None in boto3).
    eq(r.get("LocationConstraint"), None, "LocationConstraint")


@check("bucket: invalid names -> InvalidBucketName")
def _():
    for name in ["ab", f"{PREFIX}-Upper", f"{PREFIX}..dots", f"-{PREFIX}", f"{PREFIX}-",
                 "192.168.5.4", "x" * 64, f"{PREFIX}_under"]:
        try:
            expect_error("InvalidBucketName", 400, s3a.create_bucket, Bucket=name)
        except CheckFailed as e:
            fail(f"{name!r}: {e}")


@check("bucket: B creating A's name -> BucketAlreadyExists")
def _():
    expect_error("BucketAlreadyExists", 409, s3b.create_bucket, Bucket=BKT)


@check("bucket: A creating its own again in us-east-1 -> 200, nothing changes; with another ACL -> BucketAlreadyExists")
def _():
    before = [o["Key"] for o in s3a.list_objects_v2(Bucket=BKT).get("Contents", [])]
    r = s3a.create_bucket(Bucket=BKT)
    eq(status_of(r), 200, "create_bucket again")
    after = [o["Key"] for o in s3a.list_objects_v2(Bucket=BKT).get("Contents", [])]
    eq(after, before, "objects after creating the bucket again")
    expect_error("BucketAlreadyExists", 409, s3a.create_bucket, Bucket=BKT, ACL="public-read")


@check("bucket: delete_bucket non-empty -> BucketNotEmpty, empty -> ok")
def _():
    s3a.create_bucket(Bucket=BKT_DEL)
    s3a.put_object(Bucket=BKT_DEL, Key="x", Body=b"x")
    expect_error("BucketNotEmpty", 409, s3a.delete_bucket, Bucket=BKT_DEL)
    s3a.delete_object(Bucket=BKT_DEL, Key="x")
    r = s3a.delete_bucket(Bucket=BKT_DEL)
    eq(status_of(r), 204, "delete_bucket status")
    expect_error("404", 404, s3a.head_bucket, Bucket=BKT_DEL)
    expect_error("NoSuchBucket", 404, s3a.list_objects_v2, Bucket=BKT_DEL)
    expect_error("NoSuchBucket", 404, s3a.delete_bucket, Bucket=BKT_DEL)
    names = [b["Name"] for b in s3a.list_buckets()["Buckets"]]
    if BKT_DEL in names:
        fail(f"deleted bucket still listed: {names}")


# ---------------------------------------------------------------- objects

OBJ_BODY = b"0123456789"
OBJ_META = {"color": "Blue Sky", "owner-id": "42"}
OBJ_EXPIRES = dt.datetime(2030, 1, 1, 0, 0, 0, tzinfo=dt.timezone.utc)
OBJ_HEADERS = dict(
    ContentType="text/plain; charset=utf-8",
    CacheControl="max-age=60, public",
    ContentDisposition='attachment; filename="digits.txt"',
    ContentLanguage="en-US",
    Expires=OBJ_EXPIRES,
)


def check_obj_headers(r, what):
    eq(r.get("ContentType"), OBJ_HEADERS["ContentType"], f"{what} ContentType")
    eq(r.get("CacheControl"), OBJ_HEADERS["CacheControl"], f"{what} CacheControl")
    eq(r.get("ContentDisposition"), OBJ_HEADERS["ContentDisposition"], f"{what} ContentDisposition")
    eq(r.get("ContentLanguage"), OBJ_HEADERS["ContentLanguage"], f"{what} ContentLanguage")
    exp = r.get("ExpiresString")
    if exp is not None:
        eq(exp, "Tue, 01 Jan 2030 00:00:00 GMT", f"{what} Expires header")
    else:
        eq(r.get("Expires"), OBJ_EXPIRES, f"{what} Expires")
    eq(r.get("Metadata"), OBJ_META, f"{what} Metadata")
    eq(r.get("ETag"), quoted_md5(OBJ_BODY), f"{what} ETag")
    eq(r.get("ContentLength"), len(OBJ_BODY), f"{what} ContentLength")
    if not isinstance(r.get("LastModified"), dt.datetime):
        fail(f"{what}: no LastModified: {r.get('LastModified')!r}")


@check("object: put_object with metadata and headers")
def _():
    r = s3a.put_object(Bucket=BKT, Key="obj", Body=OBJ_BODY, Metadata=OBJ_META, **OBJ_HEADERS)
    eq(r.get("ETag"), quoted_md5(OBJ_BODY), "ETag")
    STATE["etag"] = r["ETag"]


@check("object: get_object round-trips body, headers and metadata")
def _():
    r = s3a.get_object(Bucket=BKT, Key="obj")
    eq(status_of(r), 200, "status")
    eq(body_of(r), OBJ_BODY, "body")
    check_obj_headers(r, "get")


@check("object: head_object")
def _():
    r = s3a.head_object(Bucket=BKT, Key="obj")
    eq(status_of(r), 200, "status")
    check_obj_headers(r, "head")
    eq(r.get("AcceptRanges"), "bytes", "AcceptRanges")


@check("object: empty object")
def _():
    r = s3a.put_object(Bucket=BKT, Key="empty", Body=b"")
    eq(r.get("ETag"), quoted_md5(b""), "ETag")
    g = s3a.get_object(Bucket=BKT, Key="empty")
    eq((body_of(g), g.get("ContentLength")), (b"", 0), "body/ContentLength")
    eq(s3a.head_object(Bucket=BKT, Key="empty").get("ContentLength"), 0, "head ContentLength")


@check("object: get_object response-* header overrides")
def _():
    r = s3a.get_object(Bucket=BKT, Key="obj", ResponseContentType="application/json",
                       ResponseContentDisposition="inline", ResponseCacheControl="no-cache",
                       ResponseContentLanguage="fr", ResponseContentEncoding="identity",
                       ResponseExpires=dt.datetime(2031, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc))
    eq(body_of(r), OBJ_BODY, "body")
    eq(r.get("ContentType"), "application/json", "ContentType")
    eq(r.get("ContentDisposition"), "inline", "ContentDisposition")
    eq(r.get("CacheControl"), "no-cache", "CacheControl")
    eq(r.get("ContentLanguage"), "fr", "ContentLanguage")
    eq(r.get("ContentEncoding"), "identity", "ContentEncoding")
    eq(r.get("ExpiresString", "Mon, 03 Feb 2031 04:05:06 GMT"), "Mon, 03 Feb 2031 04:05:06 GMT", "Expires")


@check("object: put_object with correct ContentMD5")
def _():
    data = b"checked payload"
    r = s3a.put_object(Bucket=BKT, Key="md5-ok", Body=data, ContentMD5=md5_b64(data))
    eq(r.get("ETag"), quoted_md5(data), "ETag")
    eq(body_of(s3a.get_object(Bucket=BKT, Key="md5-ok")), data, "body")


@check("object: put_object with wrong ContentMD5 -> BadDigest")
def _():
    expect_error("BadDigest", 400, s3a.put_object, Bucket=BKT, Key="md5-bad",
                 Body=b"checked payload", ContentMD5=md5_b64(b"something else"))
    expect_error("NoSuchKey", 404, s3a.get_object, Bucket=BKT, Key="md5-bad")


@check("object: put_object with malformed ContentMD5 -> InvalidDigest")
def _():
    expect_error("InvalidDigest", 400, s3a.put_object, Bucket=BKT, Key="md5-bad",
                 Body=b"checked payload", ContentMD5="not-base64-md5")


@check("object: range gets")
def _():
    cases = [("bytes=0-4", b"01234", "bytes 0-4/10"),
             ("bytes=-3", b"789", "bytes 7-9/10"),
             ("bytes=5-", b"56789", "bytes 5-9/10"),
             ("bytes=5-100", b"56789", "bytes 5-9/10")]
    for rng, want, crange in cases:
        r = s3a.get_object(Bucket=BKT, Key="obj", Range=rng)
        eq(status_of(r), 206, f"{rng} status")
        eq(body_of(r), want, f"{rng} body")
        eq(r.get("ContentRange"), crange, f"{rng} ContentRange")
        eq(r.get("ContentLength"), len(want), f"{rng} ContentLength")


@check("object: range beyond size -> InvalidRange 416")
def _():
    expect_error("InvalidRange", 416, s3a.get_object, Bucket=BKT, Key="obj", Range="bytes=20-30")


@check("object: conditional get IfMatch / IfNoneMatch")
def _():
    etag = quoted_md5(OBJ_BODY)
    eq(status_of(s3a.get_object(Bucket=BKT, Key="obj", IfMatch=etag)), 200, "IfMatch right")
    expect_error("PreconditionFailed", 412, s3a.get_object, Bucket=BKT, Key="obj",
                 IfMatch='"0123456789abcdef0123456789abcdef"')
    # 304 has no body: botocore reports the status as the code.
    expect_error("304", 304, s3a.get_object, Bucket=BKT, Key="obj", IfNoneMatch=etag)
    eq(status_of(s3a.get_object(Bucket=BKT, Key="obj", IfNoneMatch='"nope"')), 200, "IfNoneMatch other")
    expect_error("412", 412, s3a.head_object, Bucket=BKT, Key="obj", IfMatch='"nope"')
    expect_error("304", 304, s3a.head_object, Bucket=BKT, Key="obj", IfNoneMatch=etag)


@check("object: conditional get IfModifiedSince / IfUnmodifiedSince")
def _():
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    past = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
    expect_error("304", 304, s3a.get_object, Bucket=BKT, Key="obj", IfModifiedSince=future)
    eq(status_of(s3a.get_object(Bucket=BKT, Key="obj", IfModifiedSince=past)), 200, "IfModifiedSince past")
    expect_error("PreconditionFailed", 412, s3a.get_object, Bucket=BKT, Key="obj", IfUnmodifiedSince=past)
    eq(status_of(s3a.get_object(Bucket=BKT, Key="obj", IfUnmodifiedSince=future)), 200, "IfUnmodifiedSince future")


@check("object: missing key -> NoSuchKey, missing bucket -> NoSuchBucket")
def _():
    expect_error("NoSuchKey", 404, s3a.get_object, Bucket=BKT, Key="does/not/exist")
    expect_error("404", 404, s3a.head_object, Bucket=BKT, Key="does/not/exist")
    expect_error("NoSuchBucket", 404, s3a.get_object, Bucket=bname("nonexistent"), Key="k")
    expect_error("NoSuchBucket", 404, s3a.put_object, Bucket=bname("nonexistent"), Key="k", Body=b"x")
    expect_error("NoSuchBucket", 404, s3a.list_objects_v2, Bucket=bname("nonexistent"))


@check("object: delete_object")
def _():
    s3a.put_object(Bucket=BKT, Key="to-delete", Body=b"bye")
    r = s3a.delete_object(Bucket=BKT, Key="to-delete")
    eq(status_of(r), 204, "status")
    expect_error("NoSuchKey", 404, s3a.get_object, Bucket=BKT, Key="to-delete")
    # Deleting a missing key succeeds in S3.
    eq(status_of(s3a.delete_object(Bucket=BKT, Key="to-delete")), 204, "delete missing status")


@check("object: delete_objects reports existing and missing keys as Deleted")
def _():
    present = ["multi/1", "multi/2", "multi/3"]
    missing = ["multi/none-1", "multi/none-2"]
    for k in present:
        s3a.put_object(Bucket=BKT, Key=k, Body=k.encode())
    r = s3a.delete_objects(Bucket=BKT, Delete={"Objects": [{"Key": k} for k in present + missing]})
    eq(sorted(d["Key"] for d in r.get("Deleted", [])), sorted(present + missing), "Deleted keys")
    eq(r.get("Errors", []), [], "Errors")
    left = keys_of(s3a.list_objects_v2(Bucket=BKT, Prefix="multi/"))
    eq(left, [], "keys left after delete_objects")


@check("object: delete_objects Quiet mode")
def _():
    present = ["quiet/1", "quiet/2"]
    for k in present:
        s3a.put_object(Bucket=BKT, Key=k, Body=b"q")
    r = s3a.delete_objects(Bucket=BKT, Delete={"Objects": [{"Key": k} for k in present + ["quiet/none"]],
                                               "Quiet": True})
    eq(r.get("Deleted", []), [], "Deleted (quiet)")
    eq(r.get("Errors", []), [], "Errors")
    eq(keys_of(s3a.list_objects_v2(Bucket=BKT, Prefix="quiet/")), [], "keys left")


@check("object: copy_object with COPY directive keeps metadata")
def _():
    r = s3a.copy_object(Bucket=BKT, Key="copy-1", CopySource={"Bucket": BKT, "Key": "obj"})
    eq(r["CopyObjectResult"]["ETag"], quoted_md5(OBJ_BODY), "CopyObjectResult.ETag")
    if not isinstance(r["CopyObjectResult"].get("LastModified"), dt.datetime):
        fail(f"no CopyObjectResult.LastModified: {r['CopyObjectResult']}")
    g = s3a.get_object(Bucket=BKT, Key="copy-1")
    eq(body_of(g), OBJ_BODY, "body")
    check_obj_headers(g, "copy")


@check("object: copy_object with REPLACE directive")
def _():
    s3a.copy_object(Bucket=BKT, Key="copy-2", CopySource={"Bucket": BKT, "Key": "obj"},
                    MetadataDirective="REPLACE", Metadata={"new": "value"},
                    ContentType="application/x-new")
    g = s3a.get_object(Bucket=BKT, Key="copy-2")
    eq(body_of(g), OBJ_BODY, "body")
    eq(g.get("Metadata"), {"new": "value"}, "Metadata")
    eq(g.get("ContentType"), "application/x-new", "ContentType")
    eq(g.get("CacheControl"), None, "CacheControl (not carried over on REPLACE)")


@check("object: copy onto itself without REPLACE -> InvalidRequest")
def _():
    expect_error("InvalidRequest", 400, s3a.copy_object, Bucket=BKT, Key="copy-2",
                 CopySource={"Bucket": BKT, "Key": "copy-2"})
    # ...and with REPLACE it is allowed (the way to change metadata in place).
    s3a.copy_object(Bucket=BKT, Key="copy-2", CopySource={"Bucket": BKT, "Key": "copy-2"},
                    MetadataDirective="REPLACE", Metadata={"newer": "v2"})
    eq(s3a.head_object(Bucket=BKT, Key="copy-2").get("Metadata"), {"newer": "v2"}, "Metadata after self-copy")


@check("object: copy_object preconditions")
def _():
    etag = quoted_md5(OBJ_BODY)
    expect_error("PreconditionFailed", 412, s3a.copy_object, Bucket=BKT, Key="copy-3",
                 CopySource={"Bucket": BKT, "Key": "obj"}, CopySourceIfMatch='"0000"')
    expect_error("PreconditionFailed", 412, s3a.copy_object, Bucket=BKT, Key="copy-3",
                 CopySource={"Bucket": BKT, "Key": "obj"}, CopySourceIfNoneMatch=etag)
    s3a.copy_object(Bucket=BKT, Key="copy-3", CopySource={"Bucket": BKT, "Key": "obj"},
                    CopySourceIfMatch=etag)
    eq(body_of(s3a.get_object(Bucket=BKT, Key="copy-3")), OBJ_BODY, "body")


@check("object: copy from missing source -> NoSuchKey / NoSuchBucket")
def _():
    expect_error("NoSuchKey", 404, s3a.copy_object, Bucket=BKT, Key="copy-4",
                 CopySource={"Bucket": BKT, "Key": "no-such-source"})
    expect_error("NoSuchBucket", 404, s3a.copy_object, Bucket=BKT, Key="copy-4",
                 CopySource={"Bucket": bname("nonexistent"), "Key": "obj"})


@check("object: 1024-byte key ok, 1025-byte key -> KeyTooLongError")
def _():
    k = "k" * 1024
    s3a.put_object(Bucket=BKT, Key=k, Body=b"long")
    eq(body_of(s3a.get_object(Bucket=BKT, Key=k)), b"long", "1024-byte key body")
    s3a.delete_object(Bucket=BKT, Key=k)
    expect_error("KeyTooLongError", 400, s3a.put_object, Bucket=BKT, Key="k" * 1025, Body=b"x")
    # multi-byte characters count as bytes: 342 * 3 = 1026 bytes.
    expect_error("KeyTooLongError", 400, s3a.put_object, Bucket=BKT, Key="€" * 342, Body=b"x")


SPECIAL_KEYS = [
    "with space",
    "ünïcödé/日本語.txt",
    "emoji-😀",
    "plus+sign",
    "100%",
    "percent%20literal",
    "question?mark=1",
    "hash#tag",
    "double//slash",
    "trailing/",
    "amp&lt;<gt>'quote\"",
    "semi;colon:at@comma,dollar$=",
    "tilde~star*(paren)!",
]


@check("keys: special characters round-trip put/get/head")
def _():
    s3a.create_bucket(Bucket=BKT_KEYS)
    bad = []
    for k in SPECIAL_KEYS:
        try:
            s3a.put_object(Bucket=BKT_KEYS, Key=k, Body=k.encode())
            got = body_of(s3a.get_object(Bucket=BKT_KEYS, Key=k))
            if got != k.encode():
                bad.append(f"{k!r}: body {got!r}")
                continue
            h = s3a.head_object(Bucket=BKT_KEYS, Key=k)
            if h["ContentLength"] != len(k.encode()):
                bad.append(f"{k!r}: head ContentLength {h['ContentLength']}")
        except ClientError as e:
            bad.append(f"{k!r}: {err_summary(e)}")
    if bad:
        fail("; ".join(bad))


@check("keys: special characters listed exactly (plain, EncodingType=url, v1)")
def _():
    want = sorted(SPECIAL_KEYS, key=lambda s: s.encode())
    # plain XML (no EncodingType): keys must be XML-escaped, not URL-encoded
    eq(keys_of(s3raw.list_objects_v2(Bucket=BKT_KEYS)), want, "list_objects_v2 without EncodingType")
    eq(keys_of(s3raw.list_objects(Bucket=BKT_KEYS)), want, "list_objects v1 without EncodingType")
    eq([v["Key"] for v in s3raw.list_object_versions(Bucket=BKT_KEYS).get("Versions", [])], want,
       "list_object_versions without EncodingType")
    # boto3's default: it adds EncodingType=url itself and decodes
    eq(keys_of(s3a.list_objects_v2(Bucket=BKT_KEYS)), want, "list_objects_v2 (boto3 auto url)")
    eq(keys_of(s3a.list_objects(Bucket=BKT_KEYS)), want, "list_objects v1 (boto3 auto url)")
    eq([v["Key"] for v in s3a.list_object_versions(Bucket=BKT_KEYS).get("Versions", [])], want,
       "list_object_versions (boto3 auto url)")
    # explicit EncodingType=url: returned encoded, decoded here
    keys, _, _ = url_decoded(s3a.list_objects_v2(Bucket=BKT_KEYS, EncodingType="url"))
    eq(keys, want, "list_objects_v2 EncodingType=url")
    _, cps, _ = url_decoded(s3a.list_objects_v2(Bucket=BKT_KEYS, Delimiter="/", EncodingType="url"))
    eq(cps, ["double/", "trailing/", "ünïcödé/"], "CommonPrefixes with EncodingType=url")


@check("keys: copy_object with special-character source key")
def _():
    bad = []
    for k in SPECIAL_KEYS:
        try:
            s3a.copy_object(Bucket=BKT_KEYS, Key="copied/" + k, CopySource={"Bucket": BKT_KEYS, "Key": k})
            got = body_of(s3a.get_object(Bucket=BKT_KEYS, Key="copied/" + k))
            if got != k.encode():
                bad.append(f"{k!r}: body {got!r}")
        except ClientError as e:
            bad.append(f"{k!r}: {err_summary(e)}")
    if bad:
        fail("; ".join(bad))


@check("keys: delete_objects with special-character keys")
def _():
    allkeys = SPECIAL_KEYS + ["copied/" + k for k in SPECIAL_KEYS]
    r = s3a.delete_objects(Bucket=BKT_KEYS, Delete={"Objects": [{"Key": k} for k in allkeys]})
    eq(sorted(d["Key"] for d in r.get("Deleted", [])), sorted(allkeys), "Deleted")
    eq(r.get("Errors", []), [], "Errors")
    eq(keys_of(s3a.list_objects_v2(Bucket=BKT_KEYS)), [], "left")


# ---------------------------------------------------------------- listing

LIST_KEYS = ["a/1", "a/2", "a/b/3", "b/1", "c", "d", "e"]


@check("list: setup")
def _():
    s3a.create_bucket(Bucket=BKT_LIST)
    for k in LIST_KEYS:
        s3a.put_object(Bucket=BKT_LIST, Key=k, Body=k.encode())


@check("list: list_objects (v1) Prefix and Delimiter")
def _():
    r = s3a.list_objects(Bucket=BKT_LIST)
    eq(keys_of(r), LIST_KEYS, "all keys")
    eq(r.get("IsTruncated"), False, "IsTruncated")
    o = r["Contents"][0]
    eq(o.get("ETag"), quoted_md5(b"a/1"), "ETag of a/1")
    eq(o.get("Size"), 3, "Size of a/1")
    if not o.get("Owner", {}).get("ID"):
        fail(f"v1 Contents without Owner: {o}")
    r = s3a.list_objects(Bucket=BKT_LIST, Prefix="a/")
    eq(keys_of(r), ["a/1", "a/2", "a/b/3"], "Prefix=a/")
    eq(r.get("Prefix"), "a/", "Prefix echoed")
    r = s3a.list_objects(Bucket=BKT_LIST, Delimiter="/")
    eq(keys_of(r), ["c", "d", "e"], "Delimiter=/ keys")
    eq(prefixes_of(r), ["a/", "b/"], "Delimiter=/ CommonPrefixes")
    eq(r.get("Delimiter"), "/", "Delimiter echoed")
    r = s3a.list_objects(Bucket=BKT_LIST, Prefix="a/", Delimiter="/")
    eq(keys_of(r), ["a/1", "a/2"], "Prefix=a/ Delimiter=/ keys")
    eq(prefixes_of(r), ["a/b/"], "Prefix=a/ Delimiter=/ CommonPrefixes")
    r = s3a.list_objects(Bucket=BKT_LIST, Prefix="zzz")
    eq(keys_of(r), [], "no match")
    # boto3 asks for encoding-type=url but decodes a V1 Prefix only in
    # V2: S3 echoes V1's as sent.
    r = s3a.list_objects(Bucket=BKT_LIST, Prefix="\n")
    eq((keys_of(r), r.get("Prefix")), ([], "\n"), "v1 Prefix of a newline, echoed as sent")


@check("list: list_objects_v2 Prefix and Delimiter")
def _():
    r = s3a.list_objects_v2(Bucket=BKT_LIST)
    eq(keys_of(r), LIST_KEYS, "all keys")
    eq(r.get("KeyCount"), len(LIST_KEYS), "KeyCount")
    eq(r.get("IsTruncated"), False, "IsTruncated")
    if "Owner" in r["Contents"][0]:
        fail(f"v2 returned Owner without FetchOwner: {r['Contents'][0]}")
    r = s3a.list_objects_v2(Bucket=BKT_LIST, FetchOwner=True)
    if not r["Contents"][0].get("Owner", {}).get("ID"):
        fail(f"v2 FetchOwner=True without Owner: {r['Contents'][0]}")
    r = s3a.list_objects_v2(Bucket=BKT_LIST, Prefix="a/", Delimiter="/")
    eq(keys_of(r), ["a/1", "a/2"], "keys")
    eq(prefixes_of(r), ["a/b/"], "CommonPrefixes")
    eq(r.get("KeyCount"), 3, "KeyCount counts CommonPrefixes")
    r = s3a.list_objects_v2(Bucket=BKT_LIST, Prefix="zzz")
    eq(keys_of(r), [], "no match")
    eq(r.get("KeyCount"), 0, "KeyCount no match")


def paginate_v1(max_keys, **kw):
    got, marker = [], None
    for _ in range(50):
        args = dict(Bucket=BKT_LIST, MaxKeys=max_keys, **kw)
        if marker is not None:
            args["Marker"] = marker
        r = s3a.list_objects(**args)
        eq(r.get("MaxKeys"), max_keys, "MaxKeys echoed")
        page = keys_of(r) + prefixes_of(r)
        if len(page) > max_keys:
            fail(f"page of {len(page)} > MaxKeys {max_keys}: {page}")
        got.append(page)
        if not r["IsTruncated"]:
            return got
        if "Delimiter" in kw and not r.get("NextMarker"):
            fail(f"truncated v1 listing with Delimiter lacks NextMarker: {ok_summary(r)}")
        marker = r.get("NextMarker") or keys_of(r)[-1]
    fail(f"no end after 50 pages: {got}")


def paginate_v2(max_keys, **kw):
    got, token = [], None
    for _ in range(50):
        args = dict(Bucket=BKT_LIST, MaxKeys=max_keys, **kw)
        if token is not None:
            args["ContinuationToken"] = token
        r = s3a.list_objects_v2(**args)
        page = keys_of(r) + prefixes_of(r)
        eq(r.get("KeyCount"), len(page), "KeyCount")
        eq(r.get("MaxKeys"), max_keys, "MaxKeys echoed")
        if token is not None:
            eq(r.get("ContinuationToken"), token, "ContinuationToken echoed")
        if len(page) > max_keys:
            fail(f"page of {len(page)} > MaxKeys {max_keys}: {page}")
        got.append(page)
        if not r["IsTruncated"]:
            if r.get("NextContinuationToken"):
                fail(f"NextContinuationToken on the last page: {ok_summary(r)}")
            return got
        token = r.get("NextContinuationToken")
        if not token:
            fail(f"truncated v2 listing without NextContinuationToken: {ok_summary(r)}")
    fail(f"no end after 50 pages: {got}")


@check("list: v1 Marker pagination with MaxKeys=2")
def _():
    pages = paginate_v1(2)
    flat = [k for p in pages for k in p]
    eq(flat, LIST_KEYS, "keys across pages")
    eq(len(pages), 4, "page count")
    r = s3a.list_objects(Bucket=BKT_LIST, Marker="b/1")
    eq(keys_of(r), ["c", "d", "e"], "Marker=b/1")


@check("list: v1 NextMarker pagination with Delimiter")
def _():
    pages = paginate_v1(2, Delimiter="/")
    eq(pages, [["a/", "b/"], ["c", "d"], ["e"]], "pages")


@check("list: v2 ContinuationToken pagination with MaxKeys=2")
def _():
    pages = paginate_v2(2)
    eq([k for p in pages for k in p], LIST_KEYS, "keys across pages")
    eq(len(pages), 4, "page count")


@check("list: v2 pagination with Delimiter (CommonPrefixes once)")
def _():
    pages = paginate_v2(2, Delimiter="/")
    eq(pages, [["a/", "b/"], ["c", "d"], ["e"]], "pages")
    pages = paginate_v2(1, Prefix="a/", Delimiter="/")
    eq(pages, [["a/1"], ["a/2"], ["a/b/"]], "Prefix=a/ pages")


@check("list: v2 StartAfter")
def _():
    r = s3a.list_objects_v2(Bucket=BKT_LIST, StartAfter="b/1")
    eq(keys_of(r), ["c", "d", "e"], "StartAfter=b/1")
    eq(r.get("StartAfter"), "b/1", "StartAfter echoed")
    r = s3a.list_objects_v2(Bucket=BKT_LIST, StartAfter="a/", MaxKeys=2)
    eq(keys_of(r), ["a/1", "a/2"], "StartAfter=a/ first page")
    r2 = s3a.list_objects_v2(Bucket=BKT_LIST, StartAfter="a/", MaxKeys=2,
                             ContinuationToken=r["NextContinuationToken"])
    eq(keys_of(r2), ["a/b/3", "b/1"], "StartAfter=a/ second page")


@check("list: EncodingType=url with a space in a key")
def _():
    s3a.put_object(Bucket=BKT_LIST, Key="sp ace/x y", Body=b"s")
    try:
        keys, _, top = url_decoded(s3a.list_objects_v2(Bucket=BKT_LIST, Prefix="sp ace/", EncodingType="url"))
        eq(keys, ["sp ace/x y"], "v2 keys")
        eq(top.get("Prefix"), "sp ace/", "v2 Prefix")
        _, cps, _ = url_decoded(s3a.list_objects_v2(Bucket=BKT_LIST, Delimiter="/", Prefix="sp",
                                                    EncodingType="url"))
        eq(cps, ["sp ace/"], "v2 CommonPrefixes")
        keys, _, _ = url_decoded(s3a.list_objects(Bucket=BKT_LIST, Prefix="sp ace/", EncodingType="url"))
        eq(keys, ["sp ace/x y"], "v1 keys")
        # boto3 default path (auto EncodingType=url, decoded by botocore)
        r = s3a.list_objects_v2(Bucket=BKT_LIST, Prefix="sp ace/")
        eq((keys_of(r), r.get("Prefix")), (["sp ace/x y"], "sp ace/"), "v2 keys/Prefix via boto3 decoding")
        r = s3a.list_objects(Bucket=BKT_LIST, Prefix="sp ace/")
        eq(keys_of(r), ["sp ace/x y"], "v1 keys via boto3 decoding")
    finally:
        s3a.delete_object(Bucket=BKT_LIST, Key="sp ace/x y")


@check("list: paginators (v1 and v2, PageSize=2)")
def _():
    p = s3a.get_paginator("list_objects_v2")
    pages = list(p.paginate(Bucket=BKT_LIST, PaginationConfig={"PageSize": 2}))
    eq([k for pg in pages for k in keys_of(pg)], LIST_KEYS, "v2 paginator keys")
    p = s3a.get_paginator("list_objects")
    pages = list(p.paginate(Bucket=BKT_LIST, PaginationConfig={"PageSize": 2}))
    eq([k for pg in pages for k in keys_of(pg)], LIST_KEYS, "v1 paginator keys")


@check("list: paginators with Delimiter (v1 and v2, PageSize=1)")
def _():
    want = ["a/", "b/", "c", "d", "e"]
    for op in ("list_objects_v2", "list_objects"):
        p = s3a.get_paginator(op)
        pages = list(p.paginate(Bucket=BKT_LIST, Delimiter="/", PaginationConfig={"PageSize": 1}))
        eq([k for pg in pages for k in prefixes_of(pg) + keys_of(pg)], want, f"{op} paginator")


# ---------------------------------------------------------------- multipart

PART1 = os.urandom(5 * MIB)
PART2 = b"tail-of-the-upload" * 100


def mpu_etag(parts):
    return '"%s-%d"' % (hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest(), len(parts))


@check("multipart: create, upload_part, list_parts, list_multipart_uploads")
def _():
    s3a.create_bucket(Bucket=BKT_MPU)
    r = s3a.create_multipart_upload(Bucket=BKT_MPU, Key="big", ContentType="application/x-big",
                                    Metadata={"kind": "multipart"})
    eq(r.get("Bucket"), BKT_MPU, "Bucket")
    eq(r.get("Key"), "big", "Key")
    uid = r["UploadId"]
    STATE["mpu"] = uid
    p1 = s3a.upload_part(Bucket=BKT_MPU, Key="big", UploadId=uid, PartNumber=1, Body=PART1)
    eq(p1["ETag"], quoted_md5(PART1), "part 1 ETag")
    p2 = s3a.upload_part(Bucket=BKT_MPU, Key="big", UploadId=uid, PartNumber=2, Body=PART2)
    eq(p2["ETag"], quoted_md5(PART2), "part 2 ETag")
    lp = s3a.list_parts(Bucket=BKT_MPU, Key="big", UploadId=uid)
    eq(lp.get("UploadId"), uid, "list_parts UploadId")
    got = [(p["PartNumber"], p["ETag"], p["Size"]) for p in lp.get("Parts", [])]
    eq(got, [(1, quoted_md5(PART1), len(PART1)), (2, quoted_md5(PART2), len(PART2))], "list_parts Parts")
    lp = s3a.list_parts(Bucket=BKT_MPU, Key="big", UploadId=uid, MaxParts=1)
    eq([p["PartNumber"] for p in lp.get("Parts", [])], [1], "list_parts MaxParts=1")
    eq(lp.get("IsTruncated"), True, "list_parts IsTruncated")
    lp = s3a.list_parts(Bucket=BKT_MPU, Key="big", UploadId=uid,
                        PartNumberMarker=lp["NextPartNumberMarker"])
    eq([p["PartNumber"] for p in lp.get("Parts", [])], [2], "list_parts PartNumberMarker")
    lu = s3a.list_multipart_uploads(Bucket=BKT_MPU)
    ups = [(u["Key"], u["UploadId"]) for u in lu.get("Uploads", [])]
    if ("big", uid) not in ups:
        fail(f"upload not in list_multipart_uploads: {ups}")


@check("multipart: complete -> ETag md5-of-md5s-2, body, metadata")
def _():
    uid = STATE["mpu"]
    r = s3a.complete_multipart_upload(
        Bucket=BKT_MPU, Key="big", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": quoted_md5(PART1)},
                                   {"PartNumber": 2, "ETag": quoted_md5(PART2)}]})
    want = mpu_etag([PART1, PART2])
    if not re.fullmatch(r'"[0-9a-f]{32}-2"', r.get("ETag", "")):
        fail(f"ETag format: {r.get('ETag')!r}")
    eq(r.get("ETag"), want, "ETag")
    eq(r.get("Key"), "big", "Key")
    eq(r.get("Bucket"), BKT_MPU, "Bucket")
    g = s3a.get_object(Bucket=BKT_MPU, Key="big")
    data = body_of(g)
    if data != PART1 + PART2:
        fail(f"body mismatch: got {len(data)} bytes, want {len(PART1) + len(PART2)}")
    eq(g.get("ETag"), want, "get ETag")
    eq(g.get("ContentType"), "application/x-big", "ContentType")
    eq(g.get("Metadata"), {"kind": "multipart"}, "Metadata")
    ups = [u["UploadId"] for u in s3a.list_multipart_uploads(Bucket=BKT_MPU).get("Uploads", [])]
    if uid in ups:
        fail(f"completed upload still listed: {ups}")
    expect_error("NoSuchUpload", 404, s3a.list_parts, Bucket=BKT_MPU, Key="big", UploadId=uid)


@check("multipart: get_object/head_object with PartNumber")
def _():
    total = len(PART1) + len(PART2)
    g = s3a.get_object(Bucket=BKT_MPU, Key="big", PartNumber=1)
    eq(status_of(g), 206, "status")
    eq(g.get("PartsCount"), 2, "PartsCount")
    eq(g.get("ContentLength"), len(PART1), "ContentLength")
    eq(g.get("ContentRange"), f"bytes 0-{len(PART1) - 1}/{total}", "ContentRange")
    if body_of(g) != PART1:
        fail("part 1 body mismatch")
    h = s3a.head_object(Bucket=BKT_MPU, Key="big", PartNumber=2)
    eq(h.get("PartsCount"), 2, "head PartsCount")
    eq(h.get("ContentLength"), len(PART2), "head ContentLength")
    eq(h.get("ContentRange"), f"bytes {len(PART1)}-{total - 1}/{total}", "head ContentRange")


@check("multipart: abort -> list_parts NoSuchUpload")
def _():
    uid = s3a.create_multipart_upload(Bucket=BKT_MPU, Key="aborted")["UploadId"]
    s3a.upload_part(Bucket=BKT_MPU, Key="aborted", UploadId=uid, PartNumber=1, Body=b"abc")
    r = s3a.abort_multipart_upload(Bucket=BKT_MPU, Key="aborted", UploadId=uid)
    eq(status_of(r), 204, "abort status")
    expect_error("NoSuchUpload", 404, s3a.list_parts, Bucket=BKT_MPU, Key="aborted", UploadId=uid)
    expect_error("NoSuchUpload", 404, s3a.upload_part, Bucket=BKT_MPU, Key="aborted", UploadId=uid,
                 PartNumber=2, Body=b"x")
    ups = [u["UploadId"] for u in s3a.list_multipart_uploads(Bucket=BKT_MPU).get("Uploads", [])]
    if uid in ups:
        fail(f"aborted upload still listed: {ups}")
    expect_error("NoSuchKey", 404, s3a.get_object, Bucket=BKT_MPU, Key="aborted")


@check("multipart: complete with wrong part ETag -> InvalidPart")
def _():
    uid = s3a.create_multipart_upload(Bucket=BKT_MPU, Key="badpart")["UploadId"]
    try:
        s3a.upload_part(Bucket=BKT_MPU, Key="badpart", UploadId=uid, PartNumber=1, Body=PART2)
        expect_error("InvalidPart", 400, s3a.complete_multipart_upload, Bucket=BKT_MPU, Key="badpart",
                     UploadId=uid, MultipartUpload={"Parts": [
                         {"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]})
        expect_error("InvalidPart", 400, s3a.complete_multipart_upload, Bucket=BKT_MPU, Key="badpart",
                     UploadId=uid, MultipartUpload={"Parts": [
                         {"PartNumber": 1, "ETag": quoted_md5(PART2)},
                         {"PartNumber": 7, "ETag": quoted_md5(PART2)}]})
    finally:
        s3a.abort_multipart_upload(Bucket=BKT_MPU, Key="badpart", UploadId=uid)


@check("multipart: parts out of order -> InvalidPartOrder")
def _():
    uid = s3a.create_multipart_upload(Bucket=BKT_MPU, Key="order")["UploadId"]
    try:
        e1 = s3a.upload_part(Bucket=BKT_MPU, Key="order", UploadId=uid, PartNumber=1, Body=PART1)["ETag"]
        e2 = s3a.upload_part(Bucket=BKT_MPU, Key="order", UploadId=uid, PartNumber=2, Body=PART2)["ETag"]
        expect_error("InvalidPartOrder", 400, s3a.complete_multipart_upload, Bucket=BKT_MPU, Key="order",
                     UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2},
                                                              {"PartNumber": 1, "ETag": e1}]})
    finally:
        s3a.abort_multipart_upload(Bucket=BKT_MPU, Key="order", UploadId=uid)


@check("multipart: first part below 5 MiB -> EntityTooSmall")
def _():
    uid = s3a.create_multipart_upload(Bucket=BKT_MPU, Key="small")["UploadId"]
    try:
        e1 = s3a.upload_part(Bucket=BKT_MPU, Key="small", UploadId=uid, PartNumber=1, Body=b"a" * 1000)["ETag"]
        e2 = s3a.upload_part(Bucket=BKT_MPU, Key="small", UploadId=uid, PartNumber=2, Body=b"b" * 1000)["ETag"]
        expect_error("EntityTooSmall", 400, s3a.complete_multipart_upload, Bucket=BKT_MPU, Key="small",
                     UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1},
                                                              {"PartNumber": 2, "ETag": e2}]})
    finally:
        s3a.abort_multipart_upload(Bucket=BKT_MPU, Key="small", UploadId=uid)


@check("multipart: single small part completes")
def _():
    uid = s3a.create_multipart_upload(Bucket=BKT_MPU, Key="one")["UploadId"]
    e1 = s3a.upload_part(Bucket=BKT_MPU, Key="one", UploadId=uid, PartNumber=1, Body=b"only")["ETag"]
    r = s3a.complete_multipart_upload(Bucket=BKT_MPU, Key="one", UploadId=uid,
                                      MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}]})
    eq(r.get("ETag"), mpu_etag([b"only"]), "ETag")
    eq(body_of(s3a.get_object(Bucket=BKT_MPU, Key="one")), b"only", "body")


@check("multipart: upload_part_copy with CopySourceRange")
def _():
    src = PART1 + PART2
    uid = s3a.create_multipart_upload(Bucket=BKT_MPU, Key="pcopy")["UploadId"]
    r1 = s3a.upload_part_copy(Bucket=BKT_MPU, Key="pcopy", UploadId=uid, PartNumber=1,
                              CopySource={"Bucket": BKT_MPU, "Key": "big"},
                              CopySourceRange=f"bytes=0-{5 * MIB - 1}")
    eq(r1["CopyPartResult"]["ETag"], quoted_md5(src[:5 * MIB]), "part 1 CopyPartResult.ETag")
    r2 = s3a.upload_part_copy(Bucket=BKT_MPU, Key="pcopy", UploadId=uid, PartNumber=2,
                              CopySource={"Bucket": BKT_MPU, "Key": "big"},
                              CopySourceRange=f"bytes={5 * MIB}-{len(src) - 1}")
    eq(r2["CopyPartResult"]["ETag"], quoted_md5(src[5 * MIB:]), "part 2 CopyPartResult.ETag")
    r = s3a.complete_multipart_upload(
        Bucket=BKT_MPU, Key="pcopy", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r1["CopyPartResult"]["ETag"]},
                                   {"PartNumber": 2, "ETag": r2["CopyPartResult"]["ETag"]}]})
    eq(r.get("ETag"), mpu_etag([src[:5 * MIB], src[5 * MIB:]]), "ETag")
    if body_of(s3a.get_object(Bucket=BKT_MPU, Key="pcopy")) != src:
        fail("copied body mismatch")


@check("multipart: upload_part_copy with a CopySourceRange past the source -> InvalidRange, malformed -> InvalidArgument")
def _():
    uid = s3a.create_multipart_upload(Bucket=BKT_MPU, Key="pcopy2")["UploadId"]
    try:
        s3a.put_object(Bucket=BKT_MPU, Key="tiny", Body=b"0123456789")
        # Unlike GET's Range, a copy range is not clipped: past the
        # source's end it is InvalidRange (what the conformance suite
        # expects), a malformed one InvalidArgument.
        expect_error("InvalidRange", 416, s3a.upload_part_copy, Bucket=BKT_MPU, Key="pcopy2",
                     UploadId=uid, PartNumber=1, CopySource={"Bucket": BKT_MPU, "Key": "tiny"},
                     CopySourceRange="bytes=5-20")
        for bad in ("bytes=5", "5-6", "bytes=-3"):
            try:
                expect_error("InvalidArgument", 400, s3a.upload_part_copy, Bucket=BKT_MPU, Key="pcopy2",
                             UploadId=uid, PartNumber=1, CopySource={"Bucket": BKT_MPU, "Key": "tiny"},
                             CopySourceRange=bad)
            except CheckFailed as e:
                fail(f"CopySourceRange={bad!r}: {e}")
        r = s3a.upload_part_copy(Bucket=BKT_MPU, Key="pcopy2", UploadId=uid, PartNumber=1,
                                 CopySource={"Bucket": BKT_MPU, "Key": "tiny"}, CopySourceRange="bytes=2-5")
        eq(r["CopyPartResult"]["ETag"], quoted_md5(b"2345"), "CopyPartResult.ETag")
    finally:
        s3a.abort_multipart_upload(Bucket=BKT_MPU, Key="pcopy2", UploadId=uid)


@check("multipart: boto3 managed transfer (upload_fileobj / download_fileobj)")
def _():
    import io
    from boto3.s3.transfer import TransferConfig
    data = os.urandom(11 * MIB)
    tc = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=3)
    s3a.upload_fileobj(io.BytesIO(data), BKT_MPU, "managed", Config=tc)
    h = s3a.head_object(Bucket=BKT_MPU, Key="managed")
    parts = [data[i:i + 5 * MIB] for i in range(0, len(data), 5 * MIB)]
    eq(h.get("ETag"), mpu_etag(parts), "ETag")
    out = io.BytesIO()
    s3a.download_fileobj(BKT_MPU, "managed", out, Config=tc)
    if out.getvalue() != data:
        fail(f"download mismatch: {len(out.getvalue())} bytes")


# ---------------------------------------------------------------- ACLs


def grants(acl):
    out = set()
    for g in acl.get("Grants", []):
        gr = g["Grantee"]
        who = gr.get("URI") or gr.get("ID")
        out.add((gr.get("Type"), who, g["Permission"]))
    return out


@check("acl: private bucket ACL is owner FULL_CONTROL")
def _():
    acl = s3a.get_bucket_acl(Bucket=BKT)
    owner = acl.get("Owner", {}).get("ID")
    if not owner:
        fail(f"no Owner: {ok_summary(acl)}")
    eq(grants(acl), {("CanonicalUser", owner, "FULL_CONTROL")}, "grants")
    expect_error("AccessDenied", 403, anon.list_objects_v2, Bucket=BKT)
    expect_error("AccessDenied", 403, anon.get_object, Bucket=BKT, Key="obj")


@check("acl: put_bucket_acl public-read -> anonymous list")
def _():
    s3a.create_bucket(Bucket=BKT_PUB)
    s3a.put_object(Bucket=BKT_PUB, Key="pub.txt", Body=b"public data", ACL="public-read")
    s3a.put_object(Bucket=BKT_PUB, Key="priv.txt", Body=b"private data")
    r = s3a.put_bucket_acl(Bucket=BKT_PUB, ACL="public-read")
    eq(status_of(r), 200, "put_bucket_acl status")
    r = anon.list_objects_v2(Bucket=BKT_PUB)
    eq(keys_of(r), ["priv.txt", "pub.txt"], "anonymous list")
    eq(keys_of(anon.list_objects(Bucket=BKT_PUB)), ["priv.txt", "pub.txt"], "anonymous list v1")


@check("acl: get_bucket_acl public-read has AllUsers READ")
def _():
    acl = s3a.get_bucket_acl(Bucket=BKT_PUB)
    owner = acl["Owner"]["ID"]
    eq(grants(acl), {("CanonicalUser", owner, "FULL_CONTROL"), ("Group", ALL_USERS, "READ")}, "grants")


@check("acl: public-read object readable anonymously, get_object_acl")
def _():
    eq(body_of(anon.get_object(Bucket=BKT_PUB, Key="pub.txt")), b"public data", "anonymous body")
    eq(status_of(anon.head_object(Bucket=BKT_PUB, Key="pub.txt")), 200, "anonymous head")
    acl = s3a.get_object_acl(Bucket=BKT_PUB, Key="pub.txt")
    owner = acl["Owner"]["ID"]
    eq(grants(acl), {("CanonicalUser", owner, "FULL_CONTROL"), ("Group", ALL_USERS, "READ")}, "grants")
    eq(body_of(s3b.get_object(Bucket=BKT_PUB, Key="pub.txt")), b"public data", "tenant B body")


@check("acl: private object in public bucket -> anonymous AccessDenied")
def _():
    expect_error("AccessDenied", 403, anon.get_object, Bucket=BKT_PUB, Key="priv.txt")
    expect_error("403", 403, anon.head_object, Bucket=BKT_PUB, Key="priv.txt")
    expect_error("AccessDenied", 403, s3b.get_object, Bucket=BKT_PUB, Key="priv.txt")
    acl = s3a.get_object_acl(Bucket=BKT_PUB, Key="priv.txt")
    eq(grants(acl), {("CanonicalUser", acl["Owner"]["ID"], "FULL_CONTROL")}, "grants")
    # Public-read lets others list; a missing key is then NoSuchKey.
    expect_error("NoSuchKey", 404, anon.get_object, Bucket=BKT_PUB, Key="missing")


@check("acl: anonymous cannot write to a public-read bucket")
def _():
    expect_error("AccessDenied", 403, anon.put_object, Bucket=BKT_PUB, Key="anon.txt", Body=b"x")
    expect_error("AccessDenied", 403, anon.delete_object, Bucket=BKT_PUB, Key="pub.txt")
    expect_error("AccessDenied", 403, s3b.put_object, Bucket=BKT_PUB, Key="b.txt", Body=b"x")
    expect_error("AccessDenied", 403, anon.put_bucket_acl, Bucket=BKT_PUB, ACL="public-read-write")
    expect_error("AccessDenied", 403, anon.list_buckets)


@check("acl: put_object_acl public-read, then back to private")
def _():
    s3a.put_object_acl(Bucket=BKT_PUB, Key="priv.txt", ACL="public-read")
    eq(body_of(anon.get_object(Bucket=BKT_PUB, Key="priv.txt")), b"private data", "anonymous body")
    s3a.put_object_acl(Bucket=BKT_PUB, Key="priv.txt", ACL="private")
    expect_error("AccessDenied", 403, anon.get_object, Bucket=BKT_PUB, Key="priv.txt")


@check("acl: authenticated-read object readable by B, not anonymous")
def _():
    s3a.put_object(Bucket=BKT, Key="authread", Body=b"for users", ACL="authenticated-read")
    eq(body_of(s3b.get_object(Bucket=BKT, Key="authread")), b"for users", "tenant B body")
    expect_error("AccessDenied", 403, anon.get_object, Bucket=BKT, Key="authread")
    acl = s3a.get_object_acl(Bucket=BKT, Key="authread")
    eq(grants(acl), {("CanonicalUser", acl["Owner"]["ID"], "FULL_CONTROL"), ("Group", AUTH_USERS, "READ")},
       "grants")


@check("acl: private object of A read by B -> AccessDenied")
def _():
    expect_error("AccessDenied", 403, s3b.get_object, Bucket=BKT, Key="obj")


@check("acl: put_bucket_acl back to private closes anonymous list")
def _():
    s3a.put_bucket_acl(Bucket=BKT_PUB, ACL="private")
    expect_error("AccessDenied", 403, anon.list_objects_v2, Bucket=BKT_PUB)
    # the object's own public-read ACL still applies
    eq(body_of(anon.get_object(Bucket=BKT_PUB, Key="pub.txt")), b"public data", "public object body")



def owner_of(client, **kw):
    return (client.get_object_acl(**kw) if "Key" in kw else client.get_bucket_acl(**kw))["Owner"]["ID"]


@check("acl grants: B writes bucket-owner-read into A's public-read-write bucket; B owns it, A gets READ")
def _():
    name = bname("grants")
    s3a.create_bucket(Bucket=name, ACL="public-read-write")
    a_id = owner_of(s3a, Bucket=name)
    s3b.put_object(Bucket=name, Key="by-b", Body=b"from b", ACL="bucket-owner-read")
    acl = s3b.get_object_acl(Bucket=name, Key="by-b")
    b_id = acl["Owner"]["ID"]
    if b_id == a_id:
        fail("the writer should own the object")
    eq(grants(acl), {("CanonicalUser", b_id, "FULL_CONTROL"), ("CanonicalUser", a_id, "READ")}, "grants")
    for g in acl["Grants"]:
        if g["Grantee"].get("DisplayName") != g["Grantee"].get("ID"):
            fail(f"DisplayName missing: {g}")
    s3b.put_object(Bucket=name, Key="by-b-full", Body=b"x", ACL="bucket-owner-full-control")
    eq(grants(s3a.get_object_acl(Bucket=name, Key="by-b-full")),
       {("CanonicalUser", b_id, "FULL_CONTROL"), ("CanonicalUser", a_id, "FULL_CONTROL")}, "full-control grants")
    eq(body_of(s3b.get_object(Bucket=name, Key="by-b")), b"from b", "the writer reads its object")
    expect_error("AccessDenied", 403, anon.get_object, Bucket=name, Key="by-b")


@check("acl grants: explicit grants to a tenant by id and by x-amz-grant-read; unknown id, e-mail, revoke all")
def _():
    name = bname("grants2")
    s3a.create_bucket(Bucket=name)
    s3a.put_object(Bucket=name, Key="shared", Body=b"shared data")
    a_id = owner_of(s3a, Bucket=name)
    b_id = owner_of(s3b, Bucket=BKT_B)
    expect_error("AccessDenied", 403, s3b.get_object, Bucket=name, Key="shared")
    acl = s3a.get_object_acl(Bucket=name, Key="shared")
    policy = {"Owner": acl["Owner"], "Grants": acl["Grants"] + [
        {"Grantee": {"ID": b_id, "Type": "CanonicalUser"}, "Permission": "FULL_CONTROL"}]}
    s3a.put_object_acl(Bucket=name, Key="shared", AccessControlPolicy=policy)
    eq(body_of(s3b.get_object(Bucket=name, Key="shared")), b"shared data", "B reads after the grant")
    eq(grants(s3b.get_object_acl(Bucket=name, Key="shared")),
       {("CanonicalUser", a_id, "FULL_CONTROL"), ("CanonicalUser", b_id, "FULL_CONTROL")}, "B reads the ACL")
    # A FULL_CONTROL grant on the bucket lets B write into it, and copy.
    bacl = s3a.get_bucket_acl(Bucket=name)
    s3a.put_bucket_acl(Bucket=name, AccessControlPolicy={"Owner": bacl["Owner"], "Grants": bacl["Grants"] + [
        {"Grantee": {"ID": b_id, "Type": "CanonicalUser"}, "Permission": "FULL_CONTROL"}]})
    s3b.copy_object(Bucket=name, Key="copied-by-b", CopySource={"Bucket": name, "Key": "shared"})
    eq(owner_of(s3b, Bucket=name, Key="copied-by-b"), b_id, "the copier owns the copy")
    # A grant on the bucket lets B start uploads of its own and list all,
    # not work on A's.
    a_up = s3a.create_multipart_upload(Bucket=name, Key="a-upload")["UploadId"]
    b_up = s3b.create_multipart_upload(Bucket=name, Key="b-upload")["UploadId"]
    listed = {(u["Key"], u["Initiator"]["ID"]) for u in s3b.list_multipart_uploads(Bucket=name)["Uploads"]}
    eq(listed, {("a-upload", a_id), ("b-upload", b_id)}, "uploads and their initiators")
    expect_error("AccessDenied", 403, s3b.abort_multipart_upload, Bucket=name, Key="a-upload", UploadId=a_up)
    expect_error("AccessDenied", 403, s3b.upload_part, Bucket=name, Key="a-upload", UploadId=a_up,
                 PartNumber=1, Body=b"x")
    expect_error("AccessDenied", 403, s3b.list_parts, Bucket=name, Key="a-upload", UploadId=a_up)
    s3b.abort_multipart_upload(Bucket=name, Key="b-upload", UploadId=b_up)
    s3a.abort_multipart_upload(Bucket=name, Key="a-upload", UploadId=a_up)
    s3a.put_bucket_acl(Bucket=name, ACL="private")
    expect_error("AccessDenied", 403, s3b.put_object, Bucket=name, Key="again", Body=b"x")
    # Header grants.
    s3a.put_object(Bucket=name, Key="hdr", Body=b"hdr", GrantRead=f'id="{b_id}"')
    eq(body_of(s3b.get_object(Bucket=name, Key="hdr")), b"hdr", "x-amz-grant-read")
    expect_error("AccessDenied", 403, s3b.put_object_acl, Bucket=name, Key="hdr", ACL="public-read")
    # Grants that name nobody.
    bad = {"Owner": acl["Owner"], "Grants": [{"Grantee": {"ID": "_no-such-tenant", "Type": "CanonicalUser"},
                                               "Permission": "FULL_CONTROL"}]}
    expect_error("InvalidArgument", 400, s3a.put_bucket_acl, Bucket=name, AccessControlPolicy=bad)
    bad["Grants"] = [{"Grantee": {"EmailAddress": "nobody@example.invalid", "Type": "AmazonCustomerByEmail"},
                      "Permission": "READ"}]
    expect_error("UnresolvableGrantByEmailAddress", 400, s3a.put_bucket_acl, Bucket=name, AccessControlPolicy=bad)
    # Revoking every grant leaves an empty list; the owner can restore it.
    old = s3a.get_bucket_acl(Bucket=name)
    s3a.put_bucket_acl(Bucket=name, AccessControlPolicy={"Owner": old["Owner"], "Grants": []})
    eq(s3a.get_bucket_acl(Bucket=name).get("Grants", []), [], "grants after revoking all")
    s3a.put_bucket_acl(Bucket=name, AccessControlPolicy={"Owner": old["Owner"], "Grants": old["Grants"]})
    eq(grants(s3a.get_bucket_acl(Bucket=name)), {("CanonicalUser", a_id, "FULL_CONTROL")}, "restored")


# ---------------------------------------------------------------- versioning


@check("versioning: get_bucket_versioning has no Status")
def _():
    s3a.create_bucket(Bucket=BKT_VER)
    r = s3a.get_bucket_versioning(Bucket=BKT_VER)
    eq(status_of(r), 200, "status")
    if "Status" in r or "MFADelete" in r:
        fail(f"unexpected versioning fields: {ok_summary(r)}")


@check("versioning: list_object_versions shows null versions")
def _():
    keys = ["v/a", "v/b", "w"]
    for k in keys:
        s3a.put_object(Bucket=BKT_VER, Key=k, Body=k.encode())
    s3a.put_object(Bucket=BKT_VER, Key="v/a", Body=b"overwritten")
    r = s3a.list_object_versions(Bucket=BKT_VER)
    vs = [(v["Key"], v["VersionId"], v["IsLatest"], v["Size"], v["ETag"]) for v in r.get("Versions", [])]
    want = [("v/a", "null", True, 11, quoted_md5(b"overwritten")),
            ("v/b", "null", True, 3, quoted_md5(b"v/b")),
            ("w", "null", True, 1, quoted_md5(b"w"))]
    eq(vs, want, "Versions")
    eq(r.get("DeleteMarkers", []), [], "DeleteMarkers")
    r = s3a.list_object_versions(Bucket=BKT_VER, Prefix="v/", Delimiter="/")
    eq([v["Key"] for v in r.get("Versions", [])], ["v/a", "v/b"], "Prefix=v/ Delimiter=/ Versions")
    eq(prefixes_of(r), [], "Prefix=v/ Delimiter=/ CommonPrefixes")
    r = s3a.list_object_versions(Bucket=BKT_VER, Delimiter="/")
    eq([v["Key"] for v in r.get("Versions", [])], ["w"], "Delimiter=/ Versions")
    eq(prefixes_of(r), ["v/"], "Delimiter=/ CommonPrefixes")


@check("versioning: get_object VersionId=null ok, VersionId=abc fails")
def _():
    r = s3a.get_object(Bucket=BKT_VER, Key="w", VersionId="null")
    eq(body_of(r), b"w", "body")
    eq(status_of(s3a.head_object(Bucket=BKT_VER, Key="w", VersionId="null")), 200, "head status")
    # S3 answers a malformed version id with 400 InvalidArgument and a
    # well-formed unknown one with 404 NoSuchVersion; either is a refusal.
    try:
        r = s3a.get_object(Bucket=BKT_VER, Key="w", VersionId="abc")
        fail(f"VersionId=abc succeeded: {ok_summary(r)}")
    except ClientError as e:
        c = e.response["Error"]["Code"]
        st = e.response["ResponseMetadata"]["HTTPStatusCode"]
        if (c, st) not in (("NoSuchVersion", 404), ("InvalidArgument", 400)):
            fail(f"expected NoSuchVersion 404 or InvalidArgument 400, got {err_summary(e)}")


# ---------------------------------------------------------------- POST object


def multipart_form(fields, filename, content):
    boundary = "----insitu" + uuid.uuid4().hex
    out = []
    for k, v in fields.items():
        out.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode())
    out.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
               f"Content-Type: application/octet-stream\r\n\r\n".encode())
    out.append(content)
    out.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def post_form(url, fields, content, filename="upload.bin"):
    body, ctype = multipart_form(fields, filename, content)
    return http("POST", url, data=body, headers={"Content-Type": ctype})


def presigned_post(key, expires=300, max_len=1024):
    return s3a.generate_presigned_post(
        Bucket=BKT_POST, Key=key,
        Fields={"acl": "private", "Content-Type": "text/plain", "x-amz-meta-origin": "form"},
        Conditions=[{"acl": "private"}, {"Content-Type": "text/plain"},
                    {"x-amz-meta-origin": "form"}, ["content-length-range", 1, max_len]],
        ExpiresIn=expires)


@check("post: presigned POST upload -> 204, object readable")
def _():
    s3a.create_bucket(Bucket=BKT_POST)
    p = presigned_post("post/obj.txt")
    if "x-amz-signature" not in p["fields"]:
        fail(f"boto3 did not produce a SigV4 POST policy: {p['fields']}")
    st, hdrs, body = post_form(p["url"], p["fields"], b"posted body")
    eq(st, 204, f"POST status (body {body[:200]!r})")
    g = s3a.get_object(Bucket=BKT_POST, Key="post/obj.txt")
    eq(body_of(g), b"posted body", "body")
    eq(g.get("ContentType"), "text/plain", "ContentType")
    eq(g.get("Metadata"), {"origin": "form"}, "Metadata")
    etag = {k.lower(): v for k, v in hdrs.items()}.get("etag")
    eq(etag, quoted_md5(b"posted body"), "POST response ETag")


@check("post: success_action_status=201 and ${filename}")
def _():
    p = s3a.generate_presigned_post(
        Bucket=BKT_POST, Key="post/${filename}", Fields={"success_action_status": "201"},
        Conditions=[["starts-with", "$key", "post/"], {"success_action_status": "201"}], ExpiresIn=300)
    st, _, body = post_form(p["url"], p["fields"], b"named", filename="name.txt")
    eq(st, 201, f"POST status (body {body[:200]!r})")
    if b"<PostResponse>" not in body or b"<Key>post/name.txt</Key>" not in body:
        fail(f"201 body is not a PostResponse for post/name.txt: {body[:300]!r}")
    eq(body_of(s3a.get_object(Bucket=BKT_POST, Key="post/name.txt")), b"named", "body")


@check("post: the policy's conditions hold for the key after ${filename}")
def _():
    p = s3a.generate_presigned_post(
        Bucket=BKT_POST, Key="${filename}", Conditions=[["starts-with", "$key", "foo"]], ExpiresIn=300)
    st, _, body = post_form(p["url"], p["fields"], b"from the file name", filename="foo.txt")
    eq(st, 204, f"POST status (body {body[:200]!r})")
    eq(body_of(s3a.get_object(Bucket=BKT_POST, Key="foo.txt")), b"from the file name", "body")
    expect_http_error(post_form(p["url"], p["fields"], b"x", filename="bar.txt"), 403, "AccessDenied")
    expect_error("NoSuchKey", 404, s3a.get_object, Bucket=BKT_POST, Key="bar.txt")


@check("post: tampered policy -> 403")
def _():
    p = presigned_post("post/tampered.txt")
    fields = dict(p["fields"])
    pol = json.loads(base64.b64decode(fields["policy"]))
    for c in pol["conditions"]:
        if isinstance(c, list) and c[0] == "content-length-range":
            c[2] = 10 * 1024 * 1024 * 1024
    fields["policy"] = base64.b64encode(json.dumps(pol).encode()).decode()
    resp = post_form(p["url"], fields, b"x" * 2000)
    expect_http_error(resp, 403, "SignatureDoesNotMatch")
    expect_error("NoSuchKey", 404, s3a.get_object, Bucket=BKT_POST, Key="post/tampered.txt")


@check("post: condition violations -> 403 AccessDenied / 400 EntityTooLarge")
def _():
    p = presigned_post("post/violate.txt")
    fields = dict(p["fields"], **{"Content-Type": "image/png"})
    expect_http_error(post_form(p["url"], fields, b"data"), 403, "AccessDenied")
    fields = dict(p["fields"], key="post/elsewhere.txt")
    expect_http_error(post_form(p["url"], fields, b"data"), 403, "AccessDenied")
    expect_http_error(post_form(p["url"], p["fields"], b"x" * 2000), 400, "EntityTooLarge")
    expect_error("NoSuchKey", 404, s3a.get_object, Bucket=BKT_POST, Key="post/violate.txt")


@check("post: tenant B's POST policy on A's bucket -> AccessDenied")
def _():
    p = s3b.generate_presigned_post(Bucket=BKT_POST, Key="post/by-b.txt", ExpiresIn=300)
    expect_http_error(post_form(p["url"], p["fields"], b"b data"), 403, "AccessDenied")


# ---------------------------------------------------------------- presigned URLs


@check("presign: GET URL fetched with urllib")
def _():
    s3a.put_object(Bucket=BKT, Key="presigned key+ü", Body=b"presigned body")
    url = s3a.generate_presigned_url("get_object", Params={"Bucket": BKT, "Key": "presigned key+ü"},
                                     ExpiresIn=300)
    if "X-Amz-Signature=" not in url:
        fail(f"not a SigV4 URL: {url}")
    st, _, body = http("GET", url)
    eq((st, body), (200, b"presigned body"), "status/body")
    # the signature covers the path: another key with the same query fails
    other = url.replace("presigned%20key", "presigned%20kez", 1)
    expect_http_error(http("GET", other), 403, "SignatureDoesNotMatch")


@check("presign: PUT URL uploads with urllib")
def _():
    url = s3a.generate_presigned_url("put_object", Params={"Bucket": BKT, "Key": "presigned-put"},
                                     ExpiresIn=300)
    st, _, body = http("PUT", url, data=b"put via url")
    eq(st, 200, f"status (body {body[:200]!r})")
    eq(body_of(s3a.get_object(Bucket=BKT, Key="presigned-put")), b"put via url", "body")


@check("presign: expired GET URL and POST policy -> 403 AccessDenied")
def _():
    url = s3a.generate_presigned_url("get_object", Params={"Bucket": BKT, "Key": "obj"}, ExpiresIn=1)
    p = presigned_post("post/expired.txt", expires=1)
    time.sleep(2.2)
    expect_http_error(http("GET", url), 403, "AccessDenied")
    expect_http_error(post_form(p["url"], p["fields"], b"late"), 403, "AccessDenied")


@check("auth: wrong secret -> SignatureDoesNotMatch, unknown key -> InvalidAccessKeyId")
def _():
    bad = make_client(A_KEY, A_SECRET + "x")
    expect_error("SignatureDoesNotMatch", 403, bad.list_objects_v2, Bucket=BKT)
    unknown = make_client("AKIAUNKNOWNKEY000000", "whatever")
    expect_error("InvalidAccessKeyId", 403, unknown.list_buckets)


# ---------------------------------------------------------------- tenant B refused


def b_refused(fn, **kw):
    expect_error("AccessDenied", 403, fn, **kw)


@check("tenant B: list_objects / list_objects_v2 on A's bucket -> AccessDenied")
def _():
    b_refused(s3b.list_objects_v2, Bucket=BKT)
    b_refused(s3b.list_objects, Bucket=BKT)
    b_refused(s3b.list_object_versions, Bucket=BKT)
    b_refused(s3b.list_multipart_uploads, Bucket=BKT)


@check("tenant B: get_object -> AccessDenied (existing and missing key)")
def _():
    b_refused(s3b.get_object, Bucket=BKT, Key="obj")
    b_refused(s3b.get_object, Bucket=BKT, Key="no-such-key")


@check("tenant B: head_object / head_bucket -> 403")
def _():
    expect_error("403", 403, s3b.head_object, Bucket=BKT, Key="obj")
    expect_error("403", 403, s3b.head_bucket, Bucket=BKT)


@check("tenant B: put_object -> AccessDenied")
def _():
    b_refused(s3b.put_object, Bucket=BKT, Key="from-b", Body=b"b")
    expect_error("NoSuchKey", 404, s3a.get_object, Bucket=BKT, Key="from-b")


@check("tenant B: delete_object / delete_objects -> refused, object kept")
def _():
    b_refused(s3b.delete_object, Bucket=BKT, Key="obj")
    try:
        r = s3b.delete_objects(Bucket=BKT, Delete={"Objects": [{"Key": "obj"}]})
        # S3 authorizes each key: 200 with a per-key AccessDenied is also valid.
        errs = [(x["Key"], x["Code"]) for x in r.get("Errors", [])]
        if r.get("Deleted") or errs != [("obj", "AccessDenied")]:
            fail(f"delete_objects by B: {ok_summary(r)}")
    except ClientError as e:
        if (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]) != ("AccessDenied", 403):
            fail(f"delete_objects by B: {err_summary(e)}")
    eq(body_of(s3a.get_object(Bucket=BKT, Key="obj")), OBJ_BODY, "object still there")


@check("tenant B: copy from / into A's bucket -> AccessDenied")
def _():
    b_refused(s3b.copy_object, Bucket=BKT_B, Key="stolen", CopySource={"Bucket": BKT, "Key": "obj"})
    s3b.put_object(Bucket=BKT_B, Key="mine", Body=b"b's")
    b_refused(s3b.copy_object, Bucket=BKT, Key="planted", CopySource={"Bucket": BKT_B, "Key": "mine"})
    # nor may A read B's private object as a copy source
    b_refused(s3a.copy_object, Bucket=BKT, Key="planted", CopySource={"Bucket": BKT_B, "Key": "mine"})


@check("tenant B: multipart on A's bucket -> AccessDenied")
def _():
    b_refused(s3b.create_multipart_upload, Bucket=BKT, Key="mp-b")
    uid = s3a.create_multipart_upload(Bucket=BKT, Key="mp-a")["UploadId"]
    try:
        s3a.upload_part(Bucket=BKT, Key="mp-a", UploadId=uid, PartNumber=1, Body=b"a")
        b_refused(s3b.upload_part, Bucket=BKT, Key="mp-a", UploadId=uid, PartNumber=2, Body=b"b")
        b_refused(s3b.list_parts, Bucket=BKT, Key="mp-a", UploadId=uid)
        b_refused(s3b.abort_multipart_upload, Bucket=BKT, Key="mp-a", UploadId=uid)
        b_refused(s3b.complete_multipart_upload, Bucket=BKT, Key="mp-a", UploadId=uid,
                  MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": quoted_md5(b"a")}]})
        buid = s3b.create_multipart_upload(Bucket=BKT_B, Key="pc")["UploadId"]
        try:
            b_refused(s3b.upload_part_copy, Bucket=BKT_B, Key="pc", UploadId=buid, PartNumber=1,
                      CopySource={"Bucket": BKT, "Key": "obj"})
        finally:
            s3b.abort_multipart_upload(Bucket=BKT_B, Key="pc", UploadId=buid)
        eq([p["PartNumber"] for p in s3a.list_parts(Bucket=BKT, Key="mp-a", UploadId=uid).get("Parts", [])],
           [1], "A's parts untouched")
    finally:
        s3a.abort_multipart_upload(Bucket=BKT, Key="mp-a", UploadId=uid)


@check("tenant B: bucket/object ACLs -> AccessDenied")
def _():
    b_refused(s3b.get_bucket_acl, Bucket=BKT)
    b_refused(s3b.put_bucket_acl, Bucket=BKT, ACL="public-read")
    b_refused(s3b.get_object_acl, Bucket=BKT, Key="obj")
    b_refused(s3b.put_object_acl, Bucket=BKT, Key="obj", ACL="public-read")
    expect_error("AccessDenied", 403, anon.get_object, Bucket=BKT, Key="obj")
    eq(grants(s3a.get_bucket_acl(Bucket=BKT)), {("CanonicalUser", s3a.get_bucket_acl(Bucket=BKT)["Owner"]["ID"],
                                                 "FULL_CONTROL")}, "A's bucket ACL unchanged")


@check("tenant B: bucket metadata (location, versioning) -> AccessDenied")
def _():
    b_refused(s3b.get_bucket_location, Bucket=BKT)
    b_refused(s3b.get_bucket_versioning, Bucket=BKT)


@check("tenant B: delete_bucket -> AccessDenied")
def _():
    b_refused(s3b.delete_bucket, Bucket=BKT)
    s3a.create_bucket(Bucket=bname("empty"))
    b_refused(s3b.delete_bucket, Bucket=bname("empty"))
    eq(status_of(s3a.head_bucket(Bucket=bname("empty"))), 200, "A's empty bucket survives")


# ---------------------------------------------------------------- checksums

def b64(raw):
    return base64.b64encode(raw).decode()


def sha256_b64(data):
    return b64(hashlib.sha256(data).digest())


def crc32_b64(data):
    return b64(zlib.crc32(data).to_bytes(4, "big"))


@check("checksum: put_object keeps ChecksumSHA256; returned in checksum mode only, not for a range; wrong -> BadDigest")
def _():
    body = b"A" * 1024
    want = sha256_b64(body)
    r = s3a.put_object(Bucket=BKT, Key="ck-sha", Body=body, ChecksumAlgorithm="SHA256", ChecksumSHA256=want)
    eq(r.get("ChecksumSHA256"), want, "put ChecksumSHA256")
    h = s3a.head_object(Bucket=BKT, Key="ck-sha")
    if "ChecksumSHA256" in h:
        fail("HEAD without ChecksumMode returned the checksum")
    h = s3a.head_object(Bucket=BKT, Key="ck-sha", ChecksumMode="ENABLED")
    eq(h.get("ChecksumSHA256"), want, "head ChecksumSHA256")
    eq(h.get("ChecksumType"), "FULL_OBJECT", "head ChecksumType")
    g = s3a.get_object(Bucket=BKT, Key="ck-sha", ChecksumMode="ENABLED")
    eq(g.get("ChecksumSHA256"), want, "get ChecksumSHA256")
    eq(body_of(g), body, "get body")
    g = s3a.get_object(Bucket=BKT, Key="ck-sha", ChecksumMode="ENABLED", Range="bytes=0-9")
    if "ChecksumSHA256" in g:
        fail("a range read returned the whole object's checksum")
    eq(body_of(g), body[:10], "range body")
    expect_error("BadDigest", 400, s3a.put_object, Bucket=BKT, Key="ck-sha", Body=body,
                 ChecksumAlgorithm="SHA256", ChecksumSHA256=sha256_b64(b"other"))
    eq(body_of(s3a.get_object(Bucket=BKT, Key="ck-sha")), body, "object unchanged after BadDigest")
    a = s3a.get_object_attributes(Bucket=BKT, Key="ck-sha",
                                  ObjectAttributes=["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"])
    eq(a.get("ETag"), md5_hex(body), "attributes ETag")
    eq(a.get("Checksum", {}).get("ChecksumSHA256"), want, "attributes Checksum")
    eq(a.get("ObjectSize"), len(body), "attributes ObjectSize")
    eq(a.get("StorageClass"), "STANDARD", "attributes StorageClass")
    if "ObjectParts" in a:
        fail(f"a single PUT has no parts: {a['ObjectParts']}")


@check("checksum: get_object_attributes of a plain object, and of another tenant's -> AccessDenied")
def _():
    s3a.put_object(Bucket=BKT, Key="attr-plain", Body=b"foo", ChecksumAlgorithm="CRC32")
    a = s3a.get_object_attributes(Bucket=BKT, Key="attr-plain", ObjectAttributes=["ETag", "ObjectSize"])
    eq(a.get("ETag"), md5_hex(b"foo"), "ETag")
    eq(a.get("ObjectSize"), 3, "ObjectSize")
    for absent in ("Checksum", "StorageClass", "ObjectParts"):
        if absent in a:
            fail(f"{absent} returned though not asked for")
    expect_error("AccessDenied", 403, s3b.get_object_attributes, Bucket=BKT, Key="attr-plain",
                 ObjectAttributes=["ETag"])
    expect_error("NoSuchKey", 404, s3a.get_object_attributes, Bucket=BKT, Key="attr-missing",
                 ObjectAttributes=["ETag"])


CK1 = b"A" * (5 * MIB)
CK2 = b"B" * (5 * MIB)
CK3 = b"the last part"


def upload_parts(key, algorithm, checksum_type=None, parts=(CK1, CK2, CK3)):
    args = {"ChecksumType": checksum_type} if checksum_type else {}
    r = s3a.create_multipart_upload(Bucket=BKT_MPU, Key=key, ChecksumAlgorithm=algorithm, **args)
    eq(r.get("ChecksumAlgorithm"), algorithm, "create ChecksumAlgorithm")
    uid = r["UploadId"]
    listed = []
    for n, body in enumerate(parts, start=1):
        p = s3a.upload_part(Bucket=BKT_MPU, Key=key, UploadId=uid, PartNumber=n, Body=body,
                            ChecksumAlgorithm=algorithm)
        listed.append({"PartNumber": n, "ETag": p["ETag"], f"Checksum{algorithm}": p[f"Checksum{algorithm}"]})
    return uid, listed


@check("checksum: multipart SHA256 is COMPOSITE of the parts' checksums, per part on GET and in attributes")
def _():
    uid, listed = upload_parts("ck-composite", "SHA256")
    sums = [sha256_b64(p) for p in (CK1, CK2, CK3)]
    eq([p["ChecksumSHA256"] for p in listed], sums, "part checksums")
    lp = s3a.list_parts(Bucket=BKT_MPU, Key="ck-composite", UploadId=uid)
    eq([p.get("ChecksumSHA256") for p in lp["Parts"]], sums, "list_parts checksums")
    want = sha256_b64(b"".join(base64.b64decode(s) for s in sums)) + "-3"
    expect_error("BadDigest", 400, s3a.complete_multipart_upload, Bucket=BKT_MPU, Key="ck-composite",
                 UploadId=uid, ChecksumSHA256=sha256_b64(b"wrong") + "-3", MultipartUpload={"Parts": listed})
    wrong_part = [dict(listed[0], ChecksumSHA256=sums[1])] + listed[1:]
    expect_error("InvalidPart", 400, s3a.complete_multipart_upload, Bucket=BKT_MPU, Key="ck-composite",
                 UploadId=uid, MultipartUpload={"Parts": wrong_part})
    # The parts' checksums may be left out of the list: the stored ones count.
    bare = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in listed]
    r = s3a.complete_multipart_upload(Bucket=BKT_MPU, Key="ck-composite", UploadId=uid,
                                      ChecksumSHA256=want, MultipartUpload={"Parts": bare})
    eq(r.get("ChecksumSHA256"), want, "complete ChecksumSHA256")
    eq(r.get("ChecksumType"), "COMPOSITE", "complete ChecksumType")
    again = s3a.complete_multipart_upload(Bucket=BKT_MPU, Key="ck-composite", UploadId=uid,
                                          MultipartUpload={"Parts": bare})
    eq((again.get("ETag"), again.get("ChecksumSHA256")), (r.get("ETag"), want), "completed again")
    h = s3a.head_object(Bucket=BKT_MPU, Key="ck-composite", ChecksumMode="ENABLED")
    eq((h.get("ChecksumSHA256"), h.get("ChecksumType")), (want, "COMPOSITE"), "head checksum")
    for n, body in enumerate((CK1, CK2, CK3), start=1):
        g = s3a.get_object(Bucket=BKT_MPU, Key="ck-composite", PartNumber=n, ChecksumMode="ENABLED")
        eq(g.get("ChecksumSHA256"), sums[n - 1], f"part {n} checksum")
        if body_of(g) != body:
            fail(f"part {n} body mismatch")
    attrs = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]
    a = s3a.get_object_attributes(Bucket=BKT_MPU, Key="ck-composite", ObjectAttributes=attrs)
    eq(a.get("Checksum", {}).get("ChecksumSHA256"), want, "attributes Checksum")
    eq(a.get("ObjectSize"), len(CK1) + len(CK2) + len(CK3), "attributes ObjectSize")
    parts = a["ObjectParts"]
    eq(parts.get("TotalPartsCount", parts.get("PartsCount")), 3, "TotalPartsCount")
    eq([(p["PartNumber"], p["Size"], p.get("ChecksumSHA256")) for p in parts["Parts"]],
       [(1, len(CK1), sums[0]), (2, len(CK2), sums[1]), (3, len(CK3), sums[2])], "attributes Parts")
    a = s3a.get_object_attributes(Bucket=BKT_MPU, Key="ck-composite", ObjectAttributes=attrs,
                                  MaxParts=1, PartNumberMarker=1)
    parts = a["ObjectParts"]
    eq((parts.get("IsTruncated"), parts.get("NextPartNumberMarker"), parts.get("MaxParts"),
        parts.get("PartNumberMarker")), (True, 2, 1, 1), "paged attributes")
    eq([p["PartNumber"] for p in parts["Parts"]], [2], "paged part")


@check("checksum: multipart CRC32 FULL_OBJECT is the CRC of the whole object, checked by boto3 on GET")
def _():
    uid, listed = upload_parts("ck-full", "CRC32", "FULL_OBJECT")
    want = crc32_b64(CK1 + CK2 + CK3)
    r = s3a.complete_multipart_upload(Bucket=BKT_MPU, Key="ck-full", UploadId=uid,
                                      ChecksumCRC32=want, MultipartUpload={"Parts": listed})
    eq((r.get("ChecksumCRC32"), r.get("ChecksumType")), (want, "FULL_OBJECT"), "complete checksum")
    g = s3a.get_object(Bucket=BKT_MPU, Key="ck-full", ChecksumMode="ENABLED")
    eq((g.get("ChecksumCRC32"), g.get("ChecksumType")), (want, "FULL_OBJECT"), "get checksum")
    if body_of(g) != CK1 + CK2 + CK3:
        fail("body mismatch")
    expect_error("InvalidRequest", 400, s3a.create_multipart_upload, Bucket=BKT_MPU, Key="ck-bad",
                 ChecksumAlgorithm="SHA256", ChecksumType="FULL_OBJECT")


# ---------------------------------------------------------------- cleanup


def cleanup():
    for client in (s3a, s3b):
        try:
            names = [b["Name"] for b in client.list_buckets()["Buckets"] if b["Name"].startswith(PREFIX + "-")]
        except Exception:
            continue
        for name in names:
            try:
                for u in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
                    client.abort_multipart_upload(Bucket=name, Key=u["Key"], UploadId=u["UploadId"])
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                    objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                    if objs:
                        client.delete_objects(Bucket=name, Delete={"Objects": objs, "Quiet": True})
                client.delete_bucket(Bucket=name)
            except Exception as e:  # best effort
                print(f"# cleanup of {name}: {e}", file=sys.stderr)


def main():
    failed = 0
    start = time.monotonic()
    try:
        for name, fn in CHECKS:
            t0 = time.monotonic()
            try:
                fn()
                print(f"ok  {name}", flush=True)
            except CheckFailed as e:
                failed += 1
                print(f"FAIL {name}: {' '.join(str(e).split())}", flush=True)
            except ClientError as e:
                failed += 1
                op = e.operation_name
                print(f"FAIL {name}: unexpected error from {op}: {' '.join(err_summary(e).split())}", flush=True)
            except Exception as e:
                failed += 1
                frames = [f for f in traceback.extract_tb(e.__traceback__)
                          if os.path.abspath(f.filename) == os.path.abspath(__file__)]
                tb = frames[-1] if frames else traceback.extract_tb(e.__traceback__)[-1]
                print(f"FAIL {name}: {type(e).__name__}: {' '.join(str(e).split())} "
                      f"(line {tb.lineno})", flush=True)
            dt_ = time.monotonic() - t0
            if dt_ > 5:
                print(f"# {name} took {dt_:.1f}s", file=sys.stderr)
    finally:
        cleanup()
    print(f"# {len(CHECKS) - failed}/{len(CHECKS)} checks passed in {time.monotonic() - start:.1f}s",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
