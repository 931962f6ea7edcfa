"""SigV4 signing against AWS's published examples: known request -> canonical request, string to
sign and signature.

Sources:
- S3: "Authenticating Requests: Using the Authorization Header (AWS Signature Version 4)",
  section "Examples: Signature Calculations" (docs.aws.amazon.com/AmazonS3/latest/API/
  sig-v4-header-based-auth.html): GET Object, PUT Object, GET Bucket Lifecycle, GET Bucket
  (List Objects); access key AKIAIOSFODNN7EXAMPLE, 20130524T000000Z, us-east-1.
- The generic "Signature Version 4 test suite" (docs.aws.amazon.com/general/latest/gr/
  signature-v4-test-suite.html), case get-vanilla; access key AKIDEXAMPLE, 20150830T123600Z.
"""

from __future__ import annotations

import hashlib

import pytest
from mailstack.storage.blob import sigv4
from mailstack.storage.blob.sigv4 import EMPTY_SHA256, Signer, canonical_request, string_to_sign, uri_encode

S3_ACCESS = "AKIAIOSFODNN7EXAMPLE"
S3_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
S3_DATE = "20130524T000000Z"
S3_SCOPE = "20130524/us-east-1/s3/aws4_request"
S3_HOST = "examplebucket.s3.amazonaws.com"
PUT_BODY = b"Welcome to Amazon S3."


def test_get_object_with_range() -> None:
    headers = {"Host": S3_HOST, "Range": "bytes=0-9", "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": S3_DATE}
    request, _ = canonical_request("GET", "/test.txt", {}, headers, EMPTY_SHA256)
    assert request == (
        "GET\n/test.txt\n\n"
        f"host:{S3_HOST}\nrange:bytes=0-9\nx-amz-content-sha256:{EMPTY_SHA256}\nx-amz-date:{S3_DATE}\n\n"
        f"host;range;x-amz-content-sha256;x-amz-date\n{EMPTY_SHA256}"
    )
    assert string_to_sign(S3_DATE, S3_SCOPE, request) == (
        f"AWS4-HMAC-SHA256\n{S3_DATE}\n{S3_SCOPE}\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
    )
    auth = Signer("us-east-1").authorization(
        S3_ACCESS, S3_SECRET, S3_DATE, "GET", "/test.txt", {}, headers, EMPTY_SHA256
    )
    assert auth == (
        f"AWS4-HMAC-SHA256 Credential={S3_ACCESS}/{S3_SCOPE},"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_put_object_encodes_the_key_once() -> None:
    payload = hashlib.sha256(PUT_BODY).hexdigest()
    assert payload == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
    path = "/" + uri_encode("test$file.text", keep_slash=True)
    assert path == "/test%24file.text"
    headers = {
        "Date": "Fri, 24 May 2013 00:00:00 GMT",
        "Host": S3_HOST,
        "x-amz-content-sha256": payload,
        "x-amz-date": S3_DATE,
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
    }
    request, signed = canonical_request("PUT", path, {}, headers, payload)
    assert signed == "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class"
    assert string_to_sign(S3_DATE, S3_SCOPE, request).endswith(
        "\n9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d"
    )
    auth = Signer("us-east-1").authorization(S3_ACCESS, S3_SECRET, S3_DATE, "PUT", path, {}, headers, payload)
    assert auth.endswith("Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")


@pytest.mark.parametrize(
    ("query", "canonical_query", "to_sign_hash", "sig"),
    [
        (
            {"lifecycle": ""},
            "lifecycle=",
            "9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca",
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
        ),
        (
            {"prefix": "J", "max-keys": "2"},  # given out of order: the canonical query sorts
            "max-keys=2&prefix=J",
            "df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7",
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        ),
    ],
)
def test_bucket_requests_with_query(query: dict[str, str], canonical_query: str, to_sign_hash: str, sig: str) -> None:
    headers = {"host": S3_HOST, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": S3_DATE}
    request, _ = canonical_request("GET", "/", query, headers, EMPTY_SHA256)
    assert request.split("\n")[2] == canonical_query
    assert string_to_sign(S3_DATE, S3_SCOPE, request).rsplit("\n", 1)[1] == to_sign_hash
    auth = Signer("us-east-1").authorization(S3_ACCESS, S3_SECRET, S3_DATE, "GET", "/", query, headers, EMPTY_SHA256)
    assert auth.endswith(f"Signature={sig}")


def test_generic_suite_get_vanilla() -> None:
    headers = {"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z"}
    request, _ = canonical_request("GET", "/", {}, headers, EMPTY_SHA256)
    assert request == (
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" + EMPTY_SHA256
    )
    scope = "20150830/us-east-1/service/aws4_request"
    assert string_to_sign("20150830T123600Z", scope, request).endswith(
        "\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    )
    auth = Signer("us-east-1", "service").authorization(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "20150830T123600Z",
        "GET",
        "/",
        {},
        headers,
        EMPTY_SHA256,
    )
    assert auth.endswith("Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        ("plain-Key_1.0~x", "plain-Key_1.0~x"),  # the unreserved set stays as it is
        ("dir/sub dir/file", "dir/sub%20dir/file"),  # "/" kept in a path, space is %20 (never "+")
        ("a+b=c&d", "a%2Bb%3Dc%26d"),
        ("caf\u00e9 \u2603", "caf%C3%A9%20%E2%98%83"),  # UTF-8 bytes, upper-case hex
        ("100%", "100%25"),
        ("*'()!$,;:@", "%2A%27%28%29%21%24%2C%3B%3A%40"),
    ],
)
def test_uri_encoding_of_keys(key: str, encoded: str) -> None:
    assert uri_encode(key, keep_slash=True) == encoded
    assert uri_encode("a/b", keep_slash=False) == "a%2Fb"


def test_header_values_are_trimmed_and_folded() -> None:
    request, signed = canonical_request("GET", "/", {}, {"X-Odd": "  a   b  ", "Host": "h"}, EMPTY_SHA256)
    assert "\nx-odd:a b\n" in request
    assert signed == "host;x-odd"


def test_signing_key_is_renewed_with_the_date() -> None:
    signer = Signer("us-east-1")
    headers = {"host": S3_HOST, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": S3_DATE}
    first = signer.authorization(S3_ACCESS, S3_SECRET, S3_DATE, "GET", "/", {}, headers, EMPTY_SHA256)
    next_day = {**headers, "x-amz-date": "20130525T000000Z"}
    second = signer.authorization(S3_ACCESS, S3_SECRET, "20130525T000000Z", "GET", "/", {}, next_day, EMPTY_SHA256)
    assert "20130525/us-east-1/s3/aws4_request" in second
    expected = sigv4.signature(
        sigv4.signing_key(S3_SECRET, "20130525", "us-east-1", "s3"),
        string_to_sign(
            "20130525T000000Z",
            "20130525/us-east-1/s3/aws4_request",
            canonical_request("GET", "/", {}, next_day, EMPTY_SHA256)[0],
        ),
    )
    assert second.endswith(expected) and first != second
