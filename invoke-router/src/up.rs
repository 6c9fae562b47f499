//! `ember-invoke-router up`: the README's start command. So far it says
//! what it will do and prints the default tenant's credentials (created once
//! and kept in the data directory); the soft-host orchestration comes next.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

/// Flags of `up`.
#[derive(Args, Default)]
pub struct UpArgs {
    /// Data directory [default: $XDG_DATA_HOME/ember or ~/.local/share/ember].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// The default tenant's key pair, created on first use.
fn default_credentials(data_dir: &Path) -> std::io::Result<(String, String)> {
    let path = data_dir.join("default-tenant.toml");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        if let (Some(id), Some(secret)) = (get("access_key_id ="), get("secret_access_key =")) {
            return Ok((id, secret));
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let raw = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    let id = format!("AKIAEMBER{}", &raw[..11]);
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let text = format!(
        "# The default tenant of `ember-invoke-router up`.\n[[tenants]]\nid = \"default\"\n\
         [[tenants.keys]]\naccess_key_id = \"{id}\"\nsecret_access_key = \"{secret}\"\n"
    );
    std::fs::write(&path, text)?;
    Ok((id, secret))
}

/// Runs `up`.
pub fn run(args: UpArgs, default_data_dir: &Path) -> ExitCode {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| default_data_dir.to_path_buf());
    let (id, secret) = match default_credentials(&data_dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "ember-invoke-router: cannot keep credentials in {}: {e}",
                data_dir.display()
            );
            return ExitCode::from(1);
        }
    };
    println!("ember-invoke-router up will:");
    println!("  1. build the guest images if needed (images/build)");
    println!(
        "  2. serve the Lambda API on 127.0.0.1:9000 with data in {}",
        data_dir.display()
    );
    println!("     (without hardware virtualization: router and VMs inside images/softhost,");
    println!("      the API port forwarded to 127.0.0.1:9000)");
    println!("  3. register a sample 'hello' function, then run until interrupted");
    println!(
        "Not wired yet: use `ember-invoke-router serve --config {}` for now.",
        data_dir.join("default-tenant.toml").display()
    );
    println!();
    println!("ENDPOINT=http://127.0.0.1:9000");
    println!("AWS_ACCESS_KEY_ID={id}");
    println!("AWS_SECRET_ACCESS_KEY={secret}");
    println!("aws lambda invoke --endpoint-url http://127.0.0.1:9000 --region us-east-1 --function-name hello out.json");
    ExitCode::SUCCESS
}
