//! Tenancy through the HTTP API: the per-tenant quota on pending Event
//! invocations answers with Lambda's throttling error, for that tenant only.

mod common;

use common::*;

fn inv(name: &str) -> String {
    format!("/2015-03-31/functions/{name}/invocations")
}

#[tokio::test]
async fn a_tenant_past_its_pending_event_quota_gets_429() {
    let data = tempfile::tempdir().unwrap();
    let mut config = config(data.path());
    // alpha may have 2 events pending; the VMM does not exist, so they stay
    // pending (each attempt fails and waits a minute for its retry).
    config.tenants[0].quotas.max_pending_events = 2;
    let api = Api::start_with(config).await;
    let a = api
        .call("POST", "/2015-03-31/functions", create_body("f"))
        .await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let b = api
        .call_as_b("POST", "/2015-03-31/functions", create_body("f"))
        .await;
    assert_eq!(b.status, 201, "{}", String::from_utf8_lossy(&b.body));
    let event = [("x-amz-invocation-type", "Event")];
    for _ in 0..2 {
        let r = api.raw("POST", &inv("f"), b"{}".to_vec(), &event).await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    }
    let r = api.raw("POST", &inv("f"), b"{}".to_vec(), &event).await;
    r.assert_error(429, "TooManyRequestsException");
    assert_eq!(r.json()["Type"], "User");
    let message = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("max_pending_events"), "{message}");
    // beta's own quota is untouched.
    let b = api
        .call_as_b_raw("POST", &inv("f"), b"{}".to_vec(), &event)
        .await;
    assert_eq!(b.status, 202, "{}", String::from_utf8_lossy(&b.body));
    api.stop().await;
}
