//! The Lambda API over HTTP against the real server (no VMs: everything but
//! running an invocation). Requests are signed with SigV4 like AWS clients.

mod common;

use std::time::{Duration, SystemTime};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

const FUNCTIONS: &str = "/2015-03-31/functions";

#[tokio::test]
async fn requests_must_be_signed_by_a_tenant() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(data.path()).await;
    let uri = "/2015-03-31/functions/";
    send(api.addr, "GET", uri, vec![], &[], Signing::None)
        .await
        .assert_error(403, "MissingAuthenticationTokenException");
    send(
        api.addr,
        "GET",
        uri,
        vec![],
        &[],
        Signing::Key(KEY_A, "wrong-secret-0123456789"),
    )
    .await
    .assert_error(403, "InvalidSignatureException");
    send(
        api.addr,
        "GET",
        uri,
        vec![],
        &[],
        Signing::Key("AKIAUNKNOWNKEY000000", SECRET_A),
    )
    .await
    .assert_error(403, "UnrecognizedClientException");
    let old = SystemTime::now() - Duration::from_secs(20 * 60);
    send(
        api.addr,
        "GET",
        uri,
        vec![],
        &[],
        Signing::KeyAt(KEY_A, SECRET_A, old),
    )
    .await
    .assert_error(403, "InvalidSignatureException");
    let ok = send(
        api.addr,
        "GET",
        uri,
        vec![],
        &[],
        Signing::Key(KEY_A, SECRET_A),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json(), json!({ "Functions": [] }));
    // A signed header changed after signing.
    let r = send(
        api.addr,
        "POST",
        FUNCTIONS,
        b"{}".to_vec(),
        &[("x-amz-content-sha256", "00")],
        Signing::Key(KEY_A, SECRET_A),
    )
    .await;
    r.assert_error(403, "InvalidSignatureException");
    // Metrics are not signed and count requests.
    let m = send(api.addr, "GET", "/metrics", vec![], &[], Signing::None).await;
    assert_eq!(m.status, 200);
    assert!(String::from_utf8_lossy(&m.body).contains("ListFunctions"));
    api.stop().await;
}

#[tokio::test]
async fn function_lifecycle_over_http() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(data.path()).await;
    let r = api.call("POST", FUNCTIONS, create_body("hello")).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let conf = r.json();
    assert_eq!(conf["FunctionName"], "hello");
    assert!(conf["FunctionArn"]
        .as_str()
        .unwrap()
        .starts_with("arn:aws:lambda:us-east-1:"));
    assert!(conf["FunctionArn"]
        .as_str()
        .unwrap()
        .ends_with(":function:hello"));
    assert_eq!(conf["Runtime"], "provided.al2023");
    assert_eq!(conf["MemorySize"], 256);
    assert_eq!(conf["Timeout"], 10);
    assert_eq!(conf["Version"], "$LATEST");
    assert_eq!(conf["State"], "Active");
    assert_eq!(conf["Environment"]["Variables"]["GREETING"], "hi");
    let sha = conf["CodeSha256"].as_str().unwrap().to_string();
    let rev1 = conf["RevisionId"].as_str().unwrap().to_string();
    // The code's image is in the store, named by the zip's SHA-256.
    let hex_sha = hex::encode(
        base64::engine::general_purpose::STANDARD
            .decode(&sha)
            .unwrap(),
    );
    let image = data.path().join(format!("code/images/{hex_sha}.ext4"));
    assert!(image.is_file());

    api.call("POST", FUNCTIONS, create_body("hello"))
        .await
        .assert_error(409, "ResourceConflictException");

    let got = api
        .call("GET", "/2015-03-31/functions/hello", Value::Null)
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["Configuration"]["CodeSha256"], sha.as_str());
    // By ARN and with the $LATEST qualifier too.
    let arn = conf["FunctionArn"].as_str().unwrap().replace(':', "%3A");
    assert_eq!(
        api.call(
            "GET",
            &format!("{FUNCTIONS}/{arn}?Qualifier=%24LATEST"),
            Value::Null
        )
        .await
        .status,
        200
    );
    api.call(
        "GET",
        &format!("{FUNCTIONS}/hello?Qualifier=7"),
        Value::Null,
    )
    .await
    .assert_error(404, "ResourceNotFoundException");
    assert_eq!(
        api.call(
            "GET",
            &format!("{FUNCTIONS}/hello/configuration"),
            Value::Null
        )
        .await
        .json()["Handler"],
        "bootstrap"
    );

    // Configuration update: new revision, fields replaced.
    let r = api
        .call(
            "PUT",
            &format!("{FUNCTIONS}/hello/configuration"),
            json!({ "MemorySize": 512, "Environment": { "Variables": {} } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["MemorySize"], 512);
    assert!(r.json().get("Environment").is_none());
    assert_ne!(r.json()["RevisionId"], rev1.as_str());
    // A stale RevisionId is refused.
    api.call(
        "PUT",
        &format!("{FUNCTIONS}/hello/configuration"),
        json!({ "Timeout": 5, "RevisionId": rev1 }),
    )
    .await
    .assert_error(412, "PreconditionFailedException");

    // Code update: new hash; the old image goes when nothing uses it.
    let new_zip = zip_of(&[("bootstrap", b"#!/bin/sh\necho v2\n", 0o755)]);
    let r = api
        .call(
            "PUT",
            &format!("{FUNCTIONS}/hello/code"),
            json!({ "ZipFile": new_zip }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_ne!(r.json()["CodeSha256"], sha.as_str());
    assert!(!image.exists());

    // Listing pages by name.
    for name in ["a1", "a2", "a3"] {
        assert_eq!(
            api.call("POST", FUNCTIONS, create_body(name)).await.status,
            201
        );
    }
    let page = api
        .call("GET", &format!("{FUNCTIONS}/?MaxItems=2"), Value::Null)
        .await
        .json();
    let names: Vec<_> = page["Functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["FunctionName"].clone())
        .collect();
    assert_eq!(names, [json!("a1"), json!("a2")]);
    assert_eq!(page["NextMarker"], "a2");
    let page = api
        .call(
            "GET",
            &format!("{FUNCTIONS}/?MaxItems=2&Marker=a2"),
            Value::Null,
        )
        .await
        .json();
    let names: Vec<_> = page["Functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["FunctionName"].clone())
        .collect();
    assert_eq!(names, [json!("a3"), json!("hello")]);
    assert!(page.get("NextMarker").is_none());
    api.call("GET", &format!("{FUNCTIONS}/?MaxItems=0"), Value::Null)
        .await
        .assert_error(400, "ValidationException");

    // Another tenant sees none of it, and may use the same names.
    assert_eq!(
        api.call_as_b("GET", &format!("{FUNCTIONS}/"), Value::Null)
            .await
            .json(),
        json!({ "Functions": [] })
    );
    api.call_as_b("GET", &format!("{FUNCTIONS}/hello"), Value::Null)
        .await
        .assert_error(404, "ResourceNotFoundException");
    api.call_as_b("GET", &format!("{FUNCTIONS}/{arn}"), Value::Null)
        .await
        .assert_error(404, "ResourceNotFoundException");
    assert_eq!(
        api.call_as_b("POST", FUNCTIONS, create_body("hello"))
            .await
            .status,
        201
    );
    api.call_as_b("DELETE", &format!("{FUNCTIONS}/hello"), Value::Null)
        .await;

    // Delete: 204, then gone.
    assert_eq!(
        api.call("DELETE", &format!("{FUNCTIONS}/hello"), Value::Null)
            .await
            .status,
        204
    );
    api.call("GET", &format!("{FUNCTIONS}/hello"), Value::Null)
        .await
        .assert_error(404, "ResourceNotFoundException");
    api.call("DELETE", &format!("{FUNCTIONS}/hello"), Value::Null)
        .await
        .assert_error(404, "ResourceNotFoundException");
    api.stop().await;
}

#[tokio::test]
async fn reserved_concurrency() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(data.path()).await;
    for name in ["f1", "f2"] {
        assert_eq!(
            api.call("POST", FUNCTIONS, create_body(name)).await.status,
            201
        );
    }
    let put = |name: &str| format!("/2017-10-31/functions/{name}/concurrency");
    let get = |name: &str| format!("/2019-09-30/functions/{name}/concurrency");
    assert_eq!(
        api.call("GET", &get("f1"), Value::Null).await.json(),
        json!({})
    );
    let r = api
        .call(
            "PUT",
            &put("f1"),
            json!({ "ReservedConcurrentExecutions": 6 }),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({ "ReservedConcurrentExecutions": 6 }));
    assert_eq!(
        api.call("GET", &get("f1"), Value::Null).await.json()["ReservedConcurrentExecutions"],
        6
    );
    assert_eq!(
        api.call("GET", &format!("{FUNCTIONS}/f1"), Value::Null)
            .await
            .json()["Concurrency"]["ReservedConcurrentExecutions"],
        6
    );
    // The tenant's limit is 10: 6 + 5 does not fit, 6 + 4 does.
    api.call(
        "PUT",
        &put("f2"),
        json!({ "ReservedConcurrentExecutions": 5 }),
    )
    .await
    .assert_error(400, "InvalidParameterValueException");
    assert_eq!(
        api.call(
            "PUT",
            &put("f2"),
            json!({ "ReservedConcurrentExecutions": 4 })
        )
        .await
        .status,
        200
    );
    api.call(
        "PUT",
        &put("f2"),
        json!({ "ReservedConcurrentExecutions": -1 }),
    )
    .await
    .assert_error(400, "ValidationException");
    api.call(
        "PUT",
        &put("nope"),
        json!({ "ReservedConcurrentExecutions": 1 }),
    )
    .await
    .assert_error(404, "ResourceNotFoundException");
    assert_eq!(
        api.call("DELETE", &put("f1"), Value::Null).await.status,
        204
    );
    assert_eq!(
        api.call("GET", &get("f1"), Value::Null).await.json(),
        json!({})
    );
    api.stop().await;
}

#[tokio::test]
async fn bad_input_gets_lambda_errors_and_creates_nothing() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(data.path()).await;
    let with = |patch: Value| {
        let mut body = create_body("bad");
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases = [
        (
            with(json!({ "FunctionName": "no spaces" })),
            "ValidationException",
        ),
        (
            with(json!({ "FunctionName": "x".repeat(65) })),
            "ValidationException",
        ),
        (
            with(json!({ "Runtime": "python3.12" })),
            "InvalidParameterValueException",
        ),
        (with(json!({ "MemorySize": 64 })), "ValidationException"),
        (with(json!({ "MemorySize": 10241 })), "ValidationException"),
        (with(json!({ "Timeout": 0 })), "ValidationException"),
        (with(json!({ "Timeout": 901 })), "ValidationException"),
        (
            with(json!({ "Handler": "two words" })),
            "ValidationException",
        ),
        (
            with(json!({ "Environment": { "Variables": { "AWS_REGION": "x" } } })),
            "InvalidParameterValueException",
        ),
        (
            with(json!({ "Code": { "ZipFile": "not base64!" } })),
            "InvalidParameterValueException",
        ),
        (
            with(json!({ "Code": { "ZipFile": "bm90IGEgemlw" } })),
            "InvalidParameterValueException",
        ),
        (
            with(json!({ "Code": { "ZipFile": zip_of(&[("../escape", b"x", 0o644)]) } })),
            "InvalidParameterValueException",
        ),
        (
            with(json!({ "Code": { "S3Bucket": "b", "S3Key": "k" } })),
            "InvalidParameterValueException",
        ),
        (
            with(json!({ "MemorySize": "lots" })),
            "InvalidRequestContentException",
        ),
    ];
    for (body, code) in cases {
        api.call("POST", FUNCTIONS, body)
            .await
            .assert_error(400, code);
    }
    api.raw("POST", FUNCTIONS, b"{\"FunctionName\":".to_vec(), &[])
        .await
        .assert_error(400, "InvalidRequestContentException");
    // Nothing was created: no function, no code, no images.
    assert_eq!(
        api.call("GET", &format!("{FUNCTIONS}/"), Value::Null)
            .await
            .json(),
        json!({ "Functions": [] })
    );
    for dir in ["code/zips", "code/images", "code/tmp"] {
        assert_eq!(
            std::fs::read_dir(data.path().join(dir)).unwrap().count(),
            0,
            "{dir}"
        );
    }

    // Invoke: unknown function, bad headers, bad JSON, too large.
    let inv = |name: &str| format!("/2015-03-31/functions/{name}/invocations");
    api.raw("POST", &inv("nope"), b"{}".to_vec(), &[])
        .await
        .assert_error(404, "ResourceNotFoundException");
    assert_eq!(
        api.call("POST", FUNCTIONS, create_body("f")).await.status,
        201
    );
    api.raw(
        "POST",
        &inv("f"),
        b"{}".to_vec(),
        &[("x-amz-invocation-type", "Later")],
    )
    .await
    .assert_error(400, "ValidationException");
    api.raw(
        "POST",
        &inv("f"),
        b"{}".to_vec(),
        &[("x-amz-log-type", "Head")],
    )
    .await
    .assert_error(400, "ValidationException");
    api.raw("POST", &inv("f"), b"{oops".to_vec(), &[])
        .await
        .assert_error(400, "InvalidRequestContentException");
    let big = vec![b' '; ember_protocol::MAX_PAYLOAD_LEN + 1];
    api.raw("POST", &inv("f"), big, &[])
        .await
        .assert_error(413, "RequestEntityTooLargeException");
    let dry = api
        .raw(
            "POST",
            &inv("f"),
            b"{}".to_vec(),
            &[("x-amz-invocation-type", "DryRun")],
        )
        .await;
    assert_eq!(dry.status, 204);
    assert!(dry.header("x-amzn-requestid").is_some());
    let event = api
        .raw(
            "POST",
            &inv("f"),
            b"{\"k\":1}".to_vec(),
            &[("x-amz-invocation-type", "Event")],
        )
        .await;
    assert_eq!(event.status, 202);
    let id = event.header("x-amzn-requestid").unwrap().to_string();
    let logs = api
        .call("GET", &format!("{}/{id}/logs", inv("f")), Value::Null)
        .await;
    assert_eq!(logs.status, 200, "{}", String::from_utf8_lossy(&logs.body));
    assert_eq!(logs.json()["InvocationType"], "Event");
    api.call("GET", &format!("{}/nope/logs", inv("f")), Value::Null)
        .await
        .assert_error(404, "ResourceNotFoundException");
    // Unknown routes.
    api.call("GET", "/2015-03-31/nothing", Value::Null)
        .await
        .assert_error(404, "UnknownOperationException");
    api.stop().await;
}

#[tokio::test]
async fn the_registry_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(data.path()).await;
    assert_eq!(
        api.call("POST", FUNCTIONS, create_body("keep"))
            .await
            .status,
        201
    );
    assert_eq!(
        api.call(
            "PUT",
            "/2017-10-31/functions/keep/concurrency",
            json!({ "ReservedConcurrentExecutions": 3 })
        )
        .await
        .status,
        200
    );
    let before = api
        .call("GET", &format!("{FUNCTIONS}/keep"), Value::Null)
        .await
        .json();
    api.stop().await;

    let api = Api::start(data.path()).await;
    let after = api
        .call("GET", &format!("{FUNCTIONS}/keep"), Value::Null)
        .await
        .json();
    assert_eq!(before, after);
    assert_eq!(after["Concurrency"]["ReservedConcurrentExecutions"], 3);
    api.stop().await;
}
