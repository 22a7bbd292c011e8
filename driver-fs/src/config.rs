use std::path::PathBuf;

use serde::Deserialize;

/// When the driver forces data to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Before every `put_content`, `commit` and `close` returns, flush the
    /// file and (after a rename) its directory: committed data survives a
    /// power loss.
    #[default]
    Always,
    /// Leave flushing to the OS: faster, but a power loss may lose or
    /// truncate recently committed files. A process crash loses nothing.
    Never,
}

/// Configuration of [`FsDriver`](crate::FsDriver).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FsConfig {
    /// The directory everything is stored under; created if missing.
    /// Distribution's key and default: `rootdirectory`, `/var/lib/registry`.
    #[serde(rename = "rootdirectory")]
    pub root_directory: PathBuf,
    /// The durability policy.
    pub fsync: Fsync,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            root_directory: PathBuf::from("/var/lib/registry"),
            fsync: Fsync::default(),
        }
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FsConfig {
    /// Variable naming the root directory.
    pub const ENV_ROOT: &'static str = "FS_ROOT_DIRECTORY";
    /// Variable naming the fsync policy (`always` or `never`).
    pub const ENV_FSYNC: &'static str = "FS_FSYNC";

    /// The default configuration rooted at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self {
            root_directory: root.into(),
            ..Self::default()
        }
    }

    /// The configuration from `FS_ROOT_DIRECTORY` and `FS_FSYNC`, or `None`
    /// when `FS_ROOT_DIRECTORY` is unset.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let Some(root) = std::env::var_os(Self::ENV_ROOT) else {
            return Ok(None);
        };
        let fsync = match std::env::var(Self::ENV_FSYNC).as_deref() {
            Err(_) | Ok("always") => Fsync::Always,
            Ok("never") => Fsync::Never,
            Ok(other) => {
                return Err(ConfigError {
                    variable: Self::ENV_FSYNC,
                    value: other.to_owned(),
                    reason: "expected `always` or `never`",
                });
            }
        };
        Ok(Some(Self {
            fsync,
            ..Self::at(root)
        }))
    }
}
