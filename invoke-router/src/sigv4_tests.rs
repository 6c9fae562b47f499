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
    let h = signed_post(
        body,
        &[("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")],
        &signed,
    );
    assert_eq!(
        verify_at(&h, "POST", "/a%3Ab/c", body, DATE),
        Err(AuthError::Mismatch)
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
