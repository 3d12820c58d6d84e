"""Known-answer tests for the two SMS request signatures, from the platforms' own docs.

TC3-HMAC-SHA256: the worked example of Tencent Cloud's "Signature v3" page (CVM
DescribeInstances, timestamp 1551113065, the page's masked SecretKey used literally).
Aliyun RPC v1: the "testsecret" DescribeRegions example of the RPC signature page, and the
dysmsapi SendSms example ("testSecret", 阿里云短信测试专用) of the SMS signature page.
"""

from __future__ import annotations

from qunfa.crypto import aliyun_rpc, tc3

TC3_PAYLOAD = (
    b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
)
TC3_HEADERS = {"Content-Type": "application/json; charset=utf-8", "Host": "cvm.tencentcloudapi.com"}
TC3_SECRET_KEY = "Gu5t9xGARNpq86cd98joQYCN3*******"


def test_tc3_canonical_request_matches_the_documented_example() -> None:
    canonical = tc3.canonical_request(TC3_HEADERS, ("content-type", "host"), TC3_PAYLOAD)
    assert canonical == (
        "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n"
        "\ncontent-type;host\n35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
    )
    assert tc3.string_to_sign(1551113065, "cvm", canonical) == (
        "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n"
        "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
    )


def test_tc3_signature_and_authorization_match_the_documented_example() -> None:
    canonical = tc3.canonical_request(TC3_HEADERS, ("content-type", "host"), TC3_PAYLOAD)
    sig = tc3.signature(TC3_SECRET_KEY, 1551113065, "cvm", canonical)
    assert sig == "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"
    auth = tc3.authorization(
        "AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******", 1551113065, "cvm", ("content-type", "host"), sig
    )
    assert auth == (
        "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******/2019-02-25/cvm/"
        "tc3_request, SignedHeaders=content-type;host, Signature=" + sig
    )
    parsed = tc3.parse_authorization(auth)
    assert parsed is not None and parsed.signature == sig and parsed.date == "2019-02-25"


def test_tc3_sign_headers_round_trips_and_any_byte_change_breaks_it() -> None:
    body = '{"PhoneNumberSet": ["+8613800138000"], "SignName": "腾讯云"}'.encode()
    headers = tc3.sign_headers(
        secret_id="AKIDtest", secret_key="k3y", service="sms", host="127.0.0.1:9",
        action="SendSms", version="2021-01-11", region="ap-guangzhou", payload=body,
        timestamp=1700000000,
    )  # fmt: skip
    parsed = tc3.parse_authorization(headers["Authorization"])
    assert parsed is not None and parsed.signed_headers == ("content-type", "host")
    again = tc3.signature(
        "k3y", 1700000000, "sms", tc3.canonical_request(headers, parsed.signed_headers, body)
    )
    assert again == parsed.signature
    tampered = body.replace(b"138", b"139", 1)
    other = tc3.signature(
        "k3y", 1700000000, "sms", tc3.canonical_request(headers, parsed.signed_headers, tampered)
    )
    assert other != parsed.signature


def test_aliyun_rpc_signature_matches_the_documented_describe_regions_example() -> None:
    params = {
        "Timestamp": "2016-02-23T12:46:24Z", "Format": "XML", "AccessKeyId": "testid",
        "Action": "DescribeRegions", "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf", "Version": "2014-05-26",
        "SignatureVersion": "1.0",
    }  # fmt: skip
    assert aliyun_rpc.string_to_sign("GET", params) == (
        "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML"
        "%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"
        "%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
    )
    assert aliyun_rpc.sign("GET", params, "testsecret") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    # Signature itself never takes part, and the method does.
    assert aliyun_rpc.sign("GET", {**params, "Signature": "x"}, "testsecret") == (
        "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    )
    assert aliyun_rpc.sign("POST", params, "testsecret") != "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_aliyun_rpc_signature_matches_the_documented_dysmsapi_example() -> None:
    params = {
        "AccessKeyId": "testId", "Action": "SendSms", "Format": "XML", "OutId": "123",
        "PhoneNumbers": "15300000001", "RegionId": "cn-hangzhou", "SignName": "阿里云短信测试专用",
        "SignatureMethod": "HMAC-SHA1", "SignatureNonce": "45e25e9b-0a6f-4070-8c85-2956eda1b466",
        "SignatureVersion": "1.0", "TemplateCode": "SMS_71390007",
        "TemplateParam": '{"customer":"test"}', "Timestamp": "2017-07-12T02:42:19Z",
        "Version": "2017-05-25",
    }  # fmt: skip
    assert aliyun_rpc.sign("GET", params, "testSecret") == "zJDF+Lrzhj/ThnlvIToysFRq6t4="
    assert aliyun_rpc.sign("GET", {**params, "OutId": "124"}, "testSecret") != (
        "zJDF+Lrzhj/ThnlvIToysFRq6t4="
    )


def test_aliyun_percent_encoding_follows_rfc3986() -> None:
    assert aliyun_rpc.percent_encode("a b*c~d/é") == "a%20b%2Ac~d%2F%C3%A9"
    signed = aliyun_rpc.signed_params(
        "POST", {"Action": "SendBatchSms"}, access_key_id="id", secret="s", version="2017-05-25",
        now=0.0, nonce="n",
    )  # fmt: skip
    assert signed["Timestamp"] == "1970-01-01T00:00:00Z"
    assert aliyun_rpc.sign("POST", signed, "s") == signed["Signature"]
