//! SigV4 against AWS's published signature test suite (`get-vanilla` and
//! friends: key `AKIDEXAMPLE`, region `us-east-1`, service `service`,
//! 2015-08-30T12:36:00Z), then the verifier's refusals.

use super::*;
use crate::timefmt::parse_amz_date;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const DATE: &str = "20150830T123600Z";

fn headers(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h = vec![
        ("Host".to_string(), "example.amazonaws.com".to_string()),
        ("X-Amz-Date".to_string(), DATE.to_string()),
    ];
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    h
}

fn suite_authorization(method: &str, query: &str, body: &[u8]) -> String {
    let h = headers(&[]);
    let req = RequestParts {
        method,
        path: "/",
        query,
        headers: &h,
        body,
    };
    sign(
        &req,
        "AKIDEXAMPLE",
        SECRET,
        "us-east-1",
        "service",
        &["host", "x-amz-date"],
    )
    .unwrap()
}

fn expected(sig: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature={sig}"
    )
}

#[test]
fn aws_suite_vectors() {
    // get-vanilla
    assert_eq!(
        suite_authorization("GET", "", b""),
        expected("5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    );
    // get-vanilla-query-order-key-case
    assert_eq!(
        suite_authorization("GET", "Param2=value2&Param1=value1", b""),
        expected("b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
    );
    // post-vanilla
    assert_eq!(
        suite_authorization("POST", "", b""),
        expected("5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")
    );
    // post-vanilla-query
    assert_eq!(
        suite_authorization("POST", "Param1=value1", b""),
        expected("28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11")
    );
}

fn verify_at(
    h: &[(String, String)],
    method: &str,
    path: &str,
    body: &[u8],
    now: &str,
) -> Result<Authorization, AuthError> {
    let req = RequestParts {
        method,
        path,
        query: "",
        headers: h,
        body,
    };
    let secrets = |key: &str| (key == "AKIDEXAMPLE").then(|| SECRET.to_string());
    verify(&req, "service", parse_amz_date(now).unwrap(), secrets)
}

#[test]
fn the_published_get_vanilla_request_verifies() {
    let h = headers(&[(
        "Authorization",
        &expected("5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    )]);
    let auth = verify_at(&h, "GET", "/", b"", DATE).unwrap();
    assert_eq!(auth.access_key_id, "AKIDEXAMPLE");
    assert_eq!(auth.region, "us-east-1");
    // Within 15 minutes either way is fine; beyond is not.
    assert!(verify_at(&h, "GET", "/", b"", "20150830T125000Z").is_ok());
    assert!(matches!(
        verify_at(&h, "GET", "/", b"", "20150830T125200Z"),
        Err(AuthError::Expired(_))
    ));
    assert!(matches!(
        verify_at(&h, "GET", "/", b"", "20150830T122000Z"),
        Err(AuthError::Expired(_))
    ));
}

fn signed_post(body: &[u8], extra: &[(&str, &str)], signed: &[&str]) -> Vec<(String, String)> {
    let mut h = headers(extra);
    let req = RequestParts {
        method: "POST",
        path: "/a%3Ab/c",
        query: "",
        headers: &h,
        body,
    };
    let auth = sign(&req, "AKIDEXAMPLE", SECRET, "eu-west-1", "service", signed).unwrap();
    h.push(("Authorization".into(), auth));
    h
}

#[test]
fn tampering_is_detected() {
    let h = signed_post(b"{\"a\":1}", &[], &["host", "x-amz-date"]);
    assert!(verify_at(&h, "POST", "/a%3Ab/c", b"{\"a\":1}", DATE).is_ok());
    assert_eq!(
        verify_at(&h, "POST", "/a%3Ab/c", b"{\"a\":2}", DATE),
        Err(AuthError::Mismatch)
    );
    assert_eq!(
        verify_at(&h, "PUT", "/a%3Ab/c", b"{\"a\":1}", DATE),
        Err(AuthError::Mismatch)
    );
    assert_eq!(
        verify_at(&h, "POST", "/a%3Ab/d", b"{\"a\":1}", DATE),
        Err(AuthError::Mismatch)
    );
}

#[test]
fn content_sha256_header_must_match_the_body() {
    let body = b"payload";
    let good = hex::encode(Sha256::digest(body));
    let signed = ["host", "x-amz-content-sha256", "x-amz-date"];
    let h = signed_post(body, &[("X-Amz-Content-Sha256", &good)], &signed);
    assert!(verify_at(&h, "POST", "/a%3Ab/c", body, DATE).is_ok());
    // A declared hash that is not the body's: the signature matches the
    // declaration, the body does not.
    let other = hex::encode(Sha256::digest(b"other"));
    let h = signed_post(b"other", &[("X-Amz-Content-Sha256", &other)], &signed);
    assert_eq!(
        verify_at(&h, "POST", "/a%3Ab/c", body, DATE),
        Err(AuthError::Mismatch)
    );
    for refused in [
        "UNSIGNED-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "abc",
    ] {
        let h = signed_post(body, &[("X-Amz-Content-Sha256", refused)], &signed);
        assert!(
            matches!(
                verify_at(&h, "POST", "/a%3Ab/c", body, DATE),
                Err(AuthError::Malformed(_))
            ),
            "{refused}"
        );
    }
}

fn head_at(h: &[(String, String)], must_sign: &[&str]) -> Result<PendingSignature, AuthError> {
    let head = RequestHead {
        method: "POST",
        path: "/a%3Ab/c",
        query: "",
        headers: h,
    };
    let secrets = |key: &str| (key == "AKIDEXAMPLE").then(|| SECRET.to_string());
    verify_head(
        &head,
        "service",
        parse_amz_date(DATE).unwrap(),
        secrets,
        must_sign,
    )
}

#[test]
fn the_head_is_checked_before_the_body_and_the_body_after() {
    let body = b"{\"a\":1}";
    let digest: [u8; 32] = Sha256::digest(body).into();
    // Without a declared hash (boto3): the head passes, the body decides.
    let h = signed_post(body, &[], &["host", "x-amz-date"]);
    let pending = head_at(&h, &[]).unwrap();
    assert!(!pending.declared());
    assert_eq!(pending.authorization().access_key_id, "AKIDEXAMPLE");
    assert!(pending.clone().finish(&digest).is_ok());
    let tampered: [u8; 32] = Sha256::digest(b"{\"a\":2}").into();
    assert_eq!(pending.finish(&tampered), Err(AuthError::Mismatch));
    // With one: a wrong signature is refused before any body byte.
    let declared = hex::encode(digest);
    let signed = ["host", "x-amz-content-sha256", "x-amz-date"];
    let mut h = signed_post(body, &[("X-Amz-Content-Sha256", &declared)], &signed);
    let pending = head_at(&h, &[]).unwrap();
    assert!(pending.declared());
    assert!(pending.clone().finish(&digest).is_ok());
    assert_eq!(pending.finish(&tampered), Err(AuthError::Mismatch));
    let auth = h.iter_mut().find(|(n, _)| n == "Authorization").unwrap();
    auth.1 = format!("{}0", &auth.1[..auth.1.len() - 1]);
    assert_eq!(head_at(&h, &[]).unwrap_err(), AuthError::Mismatch);
    // Unknown keys and stale dates never get as far as the body.
    let h = signed_post(body, &[], &["host", "x-amz-date"]);
    let other = h
        .iter()
        .map(|(n, v)| (n.clone(), v.replace("AKIDEXAMPLE", "AKIDOTHER")))
        .collect::<Vec<_>>();
    assert_eq!(head_at(&other, &[]).unwrap_err(), AuthError::UnknownKey);
}

#[test]
fn headers_that_change_the_request_must_be_signed_once() {
    let must = ["x-amz-invocation-type", "x-amz-log-type"];
    let extra = [("X-Amz-Invocation-Type", "Event")];
    let signed = signed_post(
        b"",
        &extra,
        &["host", "x-amz-date", "x-amz-invocation-type"],
    );
    assert!(head_at(&signed, &must).is_ok());
    let unsigned = signed_post(b"", &extra, &["host", "x-amz-date"]);
    assert_eq!(
        head_at(&unsigned, &must).unwrap_err(),
        AuthError::Unsigned("x-amz-invocation-type".into())
    );
    // Absent is fine; present twice is not.
    assert!(head_at(&signed_post(b"", &[], &["host", "x-amz-date"]), &must).is_ok());
    let twice = signed_post(
        b"",
        &[
            ("X-Amz-Invocation-Type", "Event"),
            ("X-Amz-Invocation-Type", "RequestResponse"),
        ],
        &["host", "x-amz-date", "x-amz-invocation-type"],
    );
    assert!(matches!(
        head_at(&twice, &must),
        Err(AuthError::Unsigned(_))
    ));
    assert_eq!(
        AuthError::Unsigned("x".into()).code(),
        "InvalidSignatureException"
    );
}

#[test]
fn refusals_name_their_cause() {
    let h = headers(&[]);
    assert_eq!(
        verify_at(&h, "GET", "/", b"", DATE),
        Err(AuthError::Missing)
    );
    let h = headers(&[("Authorization", "Basic dXNlcjpwYXNz")]);
    assert!(matches!(
        verify_at(&h, "GET", "/", b"", DATE),
        Err(AuthError::Malformed(_))
    ));
    let other_key = expected("5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        .replace("AKIDEXAMPLE", "AKIDOTHER");
    let h = headers(&[("Authorization", &other_key)]);
    assert_eq!(
        verify_at(&h, "GET", "/", b"", DATE),
        Err(AuthError::UnknownKey)
    );
    let bad_sig = expected(&"0".repeat(64));
    let h = headers(&[("Authorization", &bad_sig)]);
    assert_eq!(
        verify_at(&h, "GET", "/", b"", DATE),
        Err(AuthError::Mismatch)
    );
    // Host must be signed.
    let h = signed_post(b"", &[], &["x-amz-date"]);
    assert!(matches!(
        verify_at(&h, "POST", "/a%3Ab/c", b"", DATE),
        Err(AuthError::Malformed(_))
    ));
    // Another service's scope.
    let h = headers(&[(
        "Authorization",
        &expected("5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
            .replace("/service/", "/s3/"),
    )]);
    assert!(matches!(
        verify_at(&h, "GET", "/", b"", DATE),
        Err(AuthError::Malformed(_))
    ));
    assert_eq!(AuthError::Mismatch.code(), "InvalidSignatureException");
    assert_eq!(AuthError::UnknownKey.code(), "UnrecognizedClientException");
}

#[test]
fn canonical_query_sorts_and_reencodes() {
    assert_eq!(canonical_query("b=2&a=1&A=0"), "A=0&a=1&b=2");
    assert_eq!(
        canonical_query("Qualifier=%24LATEST&x"),
        "Qualifier=%24LATEST&x="
    );
    assert_eq!(canonical_query("k=a b"), "k=a%20b");
}
