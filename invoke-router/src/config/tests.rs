use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const TENANT: &str = "[[tenants]]\nid = \"acme\"\nkeys = [{ access_key_id = \"AKIAACMEACMEACME0001\", secret_access_key = \"secretsecretsecret\" }]\n";

#[test]
fn toml_and_json_files_parse() {
    let dir = tempfile::tempdir().unwrap();
    let toml_path = write(
        dir.path(),
        "c.toml",
        &format!("listen = \"127.0.0.1:9100\"\n[capacity]\nmemory_mib = 2048\n{TENANT}"),
    );
    let f = ConfigFile::load(&toml_path).unwrap();
    assert_eq!(f.listen.unwrap().port(), 9100);
    assert_eq!(f.capacity.memory_mib, Some(2048));
    assert_eq!(f.tenants[0].keys[0].access_key_id, "AKIAACMEACMEACME0001");
    assert_eq!(f.tenants[0].account().len(), 12);
    assert_eq!(f.tenants[0].quotas, Quotas::default());
    let json_path = write(
        dir.path(),
        "c.json",
        r#"{"tenants":[{"id":"a","concurrency":5,"quotas":{"max_pending_events":7},"keys":[]}]}"#,
    );
    let t = &ConfigFile::load(&json_path).unwrap().tenants[0];
    assert_eq!(t.concurrency, 5);
    assert_eq!(t.quotas.max_pending_events, 7);
    assert_eq!(t.quotas.max_functions, Quotas::default().max_functions);
    std::fs::write(&json_path, r#"{"tenant":[]}"#).unwrap();
    let err = ConfigFile::load(&json_path).unwrap_err().to_string();
    assert!(err.contains("tenant"), "{err}");
}

fn flags(dir: &Path) -> ServeFlags {
    let img = write(dir, "img", "");
    ServeFlags {
        kernel: Some(img.clone()),
        initramfs: Some(img),
        vmm: Some("/bin/true".into()),
        data_dir: Some(dir.join("d")),
        ..Default::default()
    }
}

#[test]
fn flags_override_the_file_and_tenants_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.toml",
        "[capacity]\nmemory_mib = 2048\nvcpus = 3\n[timing]\nqueue_wait_ms = 5\n[events]\nworkers_per_tenant = 2\n",
    );
    let tenants = write(dir.path(), "t.toml", TENANT);
    let mut f = flags(dir.path());
    f.config = Some(cfg);
    f.capacity_vcpus = Some(4);
    // No tenants anywhere: refused, naming where they come from.
    let err = ServeConfig::resolve(&f).unwrap_err().to_string();
    assert!(err.contains("--tenants-file"), "{err}");
    f.tenants_files = vec![tenants];
    let c = ServeConfig::resolve(&f).unwrap();
    assert_eq!(c.capacity.mem_mib, 2048);
    assert_eq!(c.capacity.vcpus, 4);
    assert_eq!(c.timing.queue_wait, Duration::from_millis(5));
    assert_eq!(c.events.workers_per_tenant, 2);
    assert_eq!(c.events.workers, EventSettings::default().workers);
    assert_eq!(c.tenants[0].id, "acme");
    assert_eq!(c.run_dir(), dir.path().join("d/run"));
}

#[test]
fn a_tenants_file_refuses_anything_but_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "t.toml", "listen = \"0.0.0.0:1\"\n");
    assert!(load_tenants_file(&p).is_err());
    let p = write(dir.path(), "t.toml", TENANT);
    assert_eq!(load_tenants_file(&p).unwrap().len(), 1);
}

#[test]
fn bad_tenants_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let guest = GuestSettings {
        kernel: dir.path().join("k"),
        initramfs: dir.path().join("i"),
        vmm: "ember-vmm".into(),
        runtime_images: Default::default(),
    };
    let mut t = TenantConfig::new("acme", "AKIAACMEACMEACME0001", "secretsecretsecret");
    let ok = ServeConfig::new(dir.path().into(), guest.clone(), vec![t.clone()]);
    ok.validate().unwrap();
    t.quotas.max_pending_events = 0;
    let c = ServeConfig::new(dir.path().into(), guest.clone(), vec![t.clone()]);
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("max_pending_events"));
    let twice = vec![ok.tenants[0].clone(), ok.tenants[0].clone()];
    let c = ServeConfig::new(dir.path().into(), guest, twice);
    assert!(c.validate().unwrap_err().to_string().contains("twice"));
}
