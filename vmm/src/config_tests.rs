use super::*;

fn base() -> VmmConfig {
    VmmConfig {
        kernel: "vmlinux".into(),
        initrd: None,
        cmdline: DEFAULT_CMDLINE.into(),
        vcpus: 1,
        mem_mib: 128,
        vsock: None,
        drives: vec![],
        serial: SerialOutput::Stdout,
    }
}

#[test]
fn accepts_a_plain_config() {
    base().validate().unwrap();
}

#[test]
fn names_the_field_of_each_bad_value() {
    type Mutation = Box<dyn Fn(&mut VmmConfig)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|c| c.vcpus = 0), field::VCPUS),
        (Box::new(|c| c.vcpus = 255), field::VCPUS),
        (Box::new(|c| c.mem_mib = 1), field::MEM),
        (Box::new(|c| c.mem_mib = u64::MAX), field::MEM),
        (Box::new(|c| c.cmdline = "a\nb".into()), field::CMDLINE),
        (Box::new(|c| c.kernel = "".into()), field::KERNEL),
        (
            Box::new(|c| {
                c.vsock = Some(VsockConfig {
                    guest_cid: 2,
                    uds_path: "v.sock".into(),
                    allowed_host_ports: vec![],
                })
            }),
            field::CID,
        ),
        (
            Box::new(|c| {
                c.vsock = Some(VsockConfig {
                    guest_cid: u64::from(u32::MAX),
                    uds_path: "v.sock".into(),
                    allowed_host_ports: vec![],
                })
            }),
            field::CID,
        ),
        (
            Box::new(|c| {
                c.vsock = Some(VsockConfig {
                    guest_cid: 3,
                    uds_path: "x".repeat(100).into(),
                    allowed_host_ports: vec![],
                })
            }),
            field::UDS,
        ),
        (
            Box::new(|c| {
                c.vsock = Some(VsockConfig {
                    guest_cid: 3,
                    uds_path: "v.sock".into(),
                    allowed_host_ports: vec![5000, u32::MAX],
                })
            }),
            field::ALLOW_PORT,
        ),
        (
            Box::new(|c| {
                c.vsock = Some(VsockConfig {
                    guest_cid: 3,
                    uds_path: "v.sock".into(),
                    allowed_host_ports: (0..=MAX_ALLOWED_PORTS as u32).collect(),
                })
            }),
            field::ALLOW_PORT,
        ),
        (
            Box::new(|c| {
                c.drives = (0..17)
                    .map(|i| DriveConfig {
                        path: format!("d{i}").into(),
                        read_only: false,
                    })
                    .collect()
            }),
            field::DRIVE,
        ),
    ];
    for (mutate, want) in cases {
        let mut config = base();
        mutate(&mut config);
        let err = config.validate().unwrap_err();
        assert_eq!(err.field, want, "{err}");
        assert!(!err.reason.is_empty());
    }
}

#[test]
fn parses_drive_and_serial_specs() {
    assert_eq!(
        parse_drive("a.img,ro").unwrap(),
        DriveConfig {
            path: "a.img".into(),
            read_only: true
        }
    );
    assert!(!parse_drive("b.img").unwrap().read_only);
    assert!(parse_drive("b.img,rx").unwrap_err().reason.contains("rx"));
    assert!(parse_drive(",ro").is_err());
    assert_eq!(parse_serial("none").unwrap(), SerialOutput::None);
    assert_eq!(
        parse_serial("file:/tmp/c").unwrap(),
        SerialOutput::File("/tmp/c".into())
    );
    assert!(parse_serial("file:").is_err());
    assert!(parse_serial("tty").is_err());
}

#[test]
fn reads_a_firecracker_style_file() {
    let text = r#"{
        "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false},
        "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
        "drives": [{"drive_id": "rootfs", "path_on_host": "/d", "is_root_device": false, "is_read_only": true}],
        "serial": "none"
    }"#;
    let c = VmmConfig::from_json(text).unwrap();
    assert_eq!(c.vcpus, 2);
    assert_eq!(c.mem_mib, 256);
    assert_eq!(c.initrd, Some("/i".into()));
    assert_eq!(c.drives[0].path, PathBuf::from("/d"));
    assert!(c.drives[0].read_only);
    let vsock = c.vsock.unwrap();
    assert_eq!(vsock.guest_cid, 3);
    assert!(
        vsock.allowed_host_ports.is_empty(),
        "no host port by default"
    );
    assert_eq!(c.serial, SerialOutput::None);
    let text = text.replace(
        r#""uds_path": "/tmp/v.sock""#,
        r#""uds_path": "/tmp/v.sock", "allowed_host_ports": [7000, 7001]"#,
    );
    let c = VmmConfig::from_json(&text).unwrap();
    assert_eq!(c.vsock.unwrap().allowed_host_ports, [7000, 7001]);
}

#[test]
fn refuses_bad_json_with_the_reason() {
    for (text, needle) in [
        ("{", "EOF"),
        (r#"{"boot-source": {}}"#, "kernel_image_path"),
        (
            r#"{"boot-source": {"kernel_image_path": "/k"}, "network-interfaces": []}"#,
            "network-interfaces",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": -1}}"#,
            "vcpu_count",
        ),
    ] {
        let err = VmmConfig::from_json(text).unwrap_err();
        assert!(err.to_string().contains(needle), "{text}: {err}");
    }
    let err = VmmConfig::from_json(
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 0}}"#,
    )
    .unwrap_err();
    assert_eq!(err.field, field::VCPUS);
}
