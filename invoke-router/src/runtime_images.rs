//! The managed runtimes' images: which read-only root file system (built by
//! `images/runtimes/build`, printed by `images/build --print-paths` as
//! `runtime_NAME=PATH`) a VM of a managed runtime (`python3.13`,
//! `nodejs20.x`) gets as its second drive.
//!
//! Set in the config file's `[guest.runtimes]` table (`"python3.13" =
//! "/path/runtime.ext4"`) or with `--runtime-image NAME=PATH`; when neither
//! names one and the guest kernel also comes from `images/build`, the
//! checkout's `images/build --print-paths` says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ember_protocol::RuntimeKind;

use crate::config::ConfigError;
use crate::runtime::Runtime;

fn is_managed(name: &str) -> bool {
    Runtime::parse(name).is_some_and(|r| r.kind().is_managed())
}

/// The root file system of each managed runtime this router can start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeImages(BTreeMap<String, PathBuf>);

impl RuntimeImages {
    /// The image of `kind`, if there is one.
    pub fn image(&self, kind: RuntimeKind) -> Option<&Path> {
        let name = kind.managed_name()?;
        self.0.get(name).map(PathBuf::as_path)
    }

    /// The images by runtime name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_path()))
    }

    /// Reads `runtime_NAME=PATH` lines (the output of `images/build
    /// --print-paths`); other lines are ignored.
    pub fn from_print_paths(text: &str) -> Self {
        let images = text
            .lines()
            .filter_map(|l| l.strip_prefix("runtime_")?.split_once('='))
            .map(|(name, path)| (name.to_string(), PathBuf::from(path)))
            .collect();
        RuntimeImages(images)
    }

    /// Builds the settings from the config file's table and the flags (the
    /// flags win); with neither and `discover`, asks `images/build`.
    /// Every runtime must be a managed one and every image a file.
    pub fn resolve(
        file: &BTreeMap<String, PathBuf>,
        flags: &[(String, PathBuf)],
        discover: bool,
    ) -> Result<Self, ConfigError> {
        let mut images = file.clone();
        images.extend(flags.iter().cloned());
        let images = if images.is_empty() && discover {
            discover_images()?
        } else {
            RuntimeImages(images)
        };
        for (name, path) in &images.0 {
            if !is_managed(name) {
                return Err(ConfigError::Invalid(format!(
                    "runtime image for '{name}': not a managed runtime (expected one of {})",
                    managed_names()
                )));
            }
            if !path.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "runtime image for {name}: {} is not a file",
                    path.display()
                )));
            }
        }
        Ok(images)
    }
}

/// `python3.13, nodejs20.x`.
pub fn managed_names() -> String {
    Runtime::ALL
        .iter()
        .filter(|r| r.kind().is_managed())
        .map(|r| r.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `--runtime-image NAME=PATH`.
pub fn parse_flag(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!(
            "'{s}' is not NAME=PATH (e.g. python3.13=/path/runtime.ext4)"
        )),
    }
}

/// The checkout's runtime images, from `images/build --print-paths`
/// (which builds them when they are not cached).
fn discover_images() -> Result<RuntimeImages, ConfigError> {
    let Some(checkout) = crate::config::find_checkout() else {
        return Ok(RuntimeImages::default());
    };
    let out = std::process::Command::new(checkout.join("images/build"))
        .arg("--print-paths")
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| ConfigError::Invalid(format!("cannot run images/build: {e}")))?;
    if !out.status.success() {
        return Err(ConfigError::Invalid(format!(
            "images/build failed ({})",
            out.status
        )));
    }
    Ok(RuntimeImages::from_print_paths(&String::from_utf8_lossy(
        &out.stdout,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_paths_lines_name_the_images() {
        let text = "vmlinux=/k\nruntime_python3.13=/c/py.ext4\nruntime_nodejs20.x=/c/node.ext4\n";
        let images = RuntimeImages::from_print_paths(text);
        assert_eq!(
            images.image(RuntimeKind::Python313),
            Some(Path::new("/c/py.ext4"))
        );
        assert_eq!(
            images.image(RuntimeKind::Nodejs20),
            Some(Path::new("/c/node.ext4"))
        );
        assert_eq!(images.image(RuntimeKind::Provided), None);
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("ember-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("py.ext4");
        std::fs::write(&img, b"x").unwrap();
        let ok = RuntimeImages::resolve(
            &BTreeMap::new(),
            &[("python3.13".into(), img.clone())],
            false,
        )
        .unwrap();
        assert_eq!(ok.image(RuntimeKind::Python313), Some(img.as_path()));
        let e = RuntimeImages::resolve(&BTreeMap::new(), &[("ruby3.3".into(), img)], false)
            .unwrap_err();
        assert!(e.to_string().contains("not a managed runtime"), "{e}");
        let e = RuntimeImages::resolve(
            &BTreeMap::new(),
            &[("nodejs20.x".into(), dir.join("missing"))],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("is not a file"), "{e}");
        assert!(parse_flag("python3.13").is_err());
        assert!(parse_flag("=x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
