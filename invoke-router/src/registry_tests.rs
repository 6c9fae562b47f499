//! Registry tests: CRUD, quotas in the commit, bounded invocation logs.

use super::*;

fn rec(tenant: &str, name: &str) -> FunctionRecord {
    FunctionRecord {
        tenant: tenant.into(),
        name: name.into(),
        runtime: Runtime::Exec,
        handler: "cat".into(),
        role: String::new(),
        description: String::new(),
        memory_mib: 128,
        timeout_s: 3,
        env: BTreeMap::from([("A".to_string(), "1".to_string())]),
        code_sha256_hex: "ab".into(),
        code_sha256_base64: "qw==".into(),
        code_size: 10,
        revision_id: "r1".into(),
        last_modified: "t".into(),
        reserved_concurrency: None,
    }
}

#[test]
fn quotas_are_checked_in_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    let q = Quotas {
        max_functions: 2,
        max_code_bytes: 25,
        ..Quotas::default()
    };
    reg.create_within(&rec("t", "a"), &q).unwrap();
    reg.create_within(&rec("t", "b"), &q).unwrap();
    assert!(matches!(
        reg.create_within(&rec("t", "c"), &q),
        Err(RegistryError::Quota(QuotaExceeded::Functions { limit: 2 }))
    ));
    // A duplicate is a conflict, not a quota error.
    assert!(matches!(
        reg.create_within(&rec("t", "a"), &q),
        Err(RegistryError::Conflict)
    ));
    // Another tenant has its own count.
    reg.create_within(&rec("u", "c"), &q).unwrap();
    let mut big = rec("t", "a");
    big.code_size = 16;
    assert!(matches!(
        reg.update_within(&big, None, &q),
        Err(RegistryError::Quota(QuotaExceeded::CodeBytes {
            used: 10,
            adding: 16,
            ..
        }))
    ));
    big.code_size = 15;
    reg.update_within(&big, None, &q).unwrap();
    assert_eq!(
        reg.usage("t").unwrap(),
        Usage {
            functions: 2,
            code_bytes: 25
        }
    );
    assert_eq!(reg.usage_except("t", "a").unwrap(), 10);
    assert_eq!(
        reg.code_hashes().unwrap(),
        HashSet::from(["ab".to_string()])
    );
}

#[test]
fn crud_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    reg.create(&rec("t1", "b")).unwrap();
    reg.create(&rec("t1", "a")).unwrap();
    reg.create(&rec("t2", "a")).unwrap();
    assert!(matches!(
        reg.create(&rec("t1", "a")),
        Err(RegistryError::Conflict)
    ));
    drop(reg);
    let reg = Registry::open(dir.path()).unwrap();
    let names: Vec<_> = reg
        .list("t1", None, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(reg.list("t1", Some("a"), 10).unwrap().len(), 1);
    assert_eq!(reg.get("t1", "a").unwrap().unwrap().env["A"], "1");
    let mut r = rec("t1", "a");
    r.revision_id = "r2".into();
    assert!(matches!(
        reg.update(&r, Some("zz")),
        Err(RegistryError::RevisionMismatch)
    ));
    reg.update(&r, Some("r1")).unwrap();
    assert_eq!(reg.get("t1", "a").unwrap().unwrap().revision_id, "r2");
    reg.set_reserved_concurrency("t1", "a", Some(5)).unwrap();
    reg.set_reserved_concurrency("t1", "b", Some(7)).unwrap();
    assert_eq!(reg.reserved_total_except("t1", "a").unwrap(), 7);
    assert!(reg.code_in_use("ab").unwrap());
    reg.delete("t1", "a").unwrap();
    assert!(matches!(
        reg.delete("t1", "a"),
        Err(RegistryError::NotFound)
    ));
    assert!(reg.get("t2", "a").unwrap().is_some());
}

#[test]
fn invocation_logs_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    for i in 0..(LOGS_PER_FUNCTION + 5) {
        reg.record_invocation(&InvocationLog {
            request_id: format!("r{i}"),
            tenant: "t".into(),
            function: "f".into(),
            timestamp: "x".into(),
            outcome: "Success".into(),
            slot_id: "s".into(),
            cold_start: i == 0,
            duration_us: 1,
            log_tail: b"log".to_vec(),
        })
        .unwrap();
    }
    assert!(reg.invocation("t", "f", "r0").unwrap().is_none());
    assert!(reg.invocation("t", "f", "r5").unwrap().is_some());
    let last = format!("r{}", LOGS_PER_FUNCTION + 4);
    assert_eq!(
        reg.invocation("t", "f", &last).unwrap().unwrap().log_tail,
        b"log"
    );
}
