//! `remoteurls` entries, each URL with its own credentials or none, and
//! `exec.env`, the variables a credential helper gets besides the few
//! every helper gets.

use driver_core::Secret;
use serde::Deserialize;

use super::{ConfigError, RemoteUrl, invalid, scalar_secret, scalar_text, upstream_url};
use crate::upstream::Credentials;

/// One URL of `remoteurls`: the URL (with credentials of its own in it,
/// if any), or `{url, username, password}`. A URL without credentials of
/// its own is asked anonymously: the first URL's never go to another.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RemoteUrlEntry {
    /// `https://mirror.example` (or `https://user:pass@mirror.example`).
    Plain(RemoteUrl),
    /// `{url: https://mirror.example, username: u, password: p}`.
    WithCredentials(RemoteUrlCredentials),
}

/// `{url, username, password}` in `remoteurls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteUrlCredentials {
    /// The URL.
    pub url: RemoteUrl,
    /// Its user name.
    #[serde(deserialize_with = "scalar_text")]
    pub username: Option<String>,
    /// Its password (never shown by `Debug`).
    #[serde(deserialize_with = "scalar_secret")]
    pub password: Option<Secret>,
}

impl RemoteUrlEntry {
    /// The URL and its own credentials; `at` names it in errors.
    pub(super) fn read(&self, at: &str) -> Result<(reqwest::Url, Credentials), ConfigError> {
        let entry = match self {
            Self::Plain(url) => return upstream_url(at, &url.0),
            Self::WithCredentials(entry) => entry,
        };
        let (url, in_url) = upstream_url(&format!("{at}.url"), &entry.url.0)?;
        let given = match (&entry.username, &entry.password) {
            (None, None) => None,
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            _ => return Err(invalid(at, "give username and password together")),
        };
        if in_url.is_some() && given.is_some() {
            return Err(invalid(
                at,
                "give the credentials in the URL or in username and password, not both",
            ));
        }
        Ok((url, given.or(in_url)))
    }
}

/// `exec.env` at `key`: variable names, or prefixes ending in `*`; never
/// the cache's own `REGISTRY_*`, which hold its secrets.
pub(super) fn exec_env(key: &str, env: &[String]) -> Result<Vec<String>, ConfigError> {
    for name in env {
        let bare = name.strip_suffix('*').unwrap_or(name);
        if name.is_empty() || !bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(invalid(
                key,
                format!("{name:?} is not a variable name or prefix"),
            ));
        }
        if name.starts_with("REGISTRY_") {
            return Err(invalid(
                key,
                "REGISTRY_* variables configure this cache and may hold its secrets: never passed",
            ));
        }
    }
    Ok(env.to_vec())
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    /// Each URL of `remoteurls` has its own credentials (in it, or as
    /// `{url, username, password}`) or none: `username` and `password`
    /// are the first URL's and never go to another.
    #[test]
    fn every_remote_url_has_its_own_credentials() {
        fn user(c: &Credentials) -> Option<(&str, &str)> {
            c.as_ref().map(|(u, p)| (u.as_str(), p.expose()))
        }
        let yaml = "storage:\n  inmemory: {}\nproxy:\n  upstreams:\n    - namespace: docker.io\n      username: hub\n      password: hub-secret\n      remoteurls:\n        - https://registry-1.docker.io\n        - https://mirror.gcr.io\n        - {url: https://mirror.example, username: m, password: m-secret}\n        - \"https://u:in%40url@other.example/prefix\"\n      exec: {command: helper, env: [AWS_REGION, \"GOOGLE_*\"]}\n";
        let specs = Config::parse("test", yaml, std::iter::empty())
            .expect("loads")
            .namespaces()
            .expect("namespaces");
        let spec = &specs[0];
        assert_eq!(spec.remote.as_str(), "https://registry-1.docker.io/");
        assert_eq!(user(&spec.credentials), Some(("hub", "hub-secret")));
        let fallbacks: Vec<_> = spec
            .plan
            .fallbacks
            .iter()
            .map(|f| (f.url.as_str(), user(&f.credentials)))
            .collect();
        assert_eq!(
            fallbacks,
            [
                ("https://mirror.gcr.io/", None),
                ("https://mirror.example/", Some(("m", "m-secret"))),
                ("https://other.example/prefix", Some(("u", "in@url"))),
            ]
        );
        assert_eq!(
            spec.plan.exec.as_ref().map(|e| e.env.clone()),
            Some(vec!["AWS_REGION".to_owned(), "GOOGLE_*".to_owned()])
        );
    }
}
