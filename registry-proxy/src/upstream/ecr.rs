//! Amazon ECR upstreams: the registry password is a token from ECR's
//! `GetAuthorizationToken`, asked with the AWS credential chain
//! (environment, profile, web identity, container and instance roles),
//! valid 12 hours. It is fetched again once half its lifetime has passed,
//! and at once when the registry refuses it.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use driver_core::Secret;

/// Registry credentials from a token.
type Login = (String, Secret);

/// A token's credentials and when they expire, as fetched.
type Fetched = Result<(Login, SystemTime), String>;

/// Tokens for one ECR registry.
#[derive(Debug)]
pub struct EcrTokens {
    region: String,
    /// The credentials, when they were fetched, and when they expire.
    cached: tokio::sync::Mutex<Option<(Login, SystemTime, SystemTime)>>,
}

/// The region of an ECR registry host (`<account>.dkr.ecr.<region>.amazonaws.com`,
/// or `.amazonaws.com.cn`), if it is one.
pub fn region_of(host: &str) -> Option<&str> {
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let (account, rest) = rest.split_once(".dkr.ecr.")?;
    let region = rest.strip_suffix(".api").unwrap_or(rest);
    (!account.is_empty()
        && account.bytes().all(|b| b.is_ascii_digit())
        && !region.is_empty()
        && !region.contains('.'))
    .then_some(region)
}

/// Whether a token fetched at `fetched` that expires at `expires` should
/// be fetched again at `now`: past half its lifetime.
fn due(fetched: SystemTime, expires: SystemTime, now: SystemTime) -> bool {
    let lifetime = expires.duration_since(fetched).unwrap_or_default();
    now.duration_since(fetched).unwrap_or_default() >= lifetime / 2
}

impl EcrTokens {
    /// Tokens for the ECR registry of `region`.
    pub fn new(region: &str) -> Self {
        Self {
            region: region.to_owned(),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The registry credentials to use now (`AWS` and the token).
    pub async fn credentials(&self) -> Result<Login, String> {
        let mut cached = self.cached.lock().await;
        if let Some((credentials, fetched, expires)) = cached.as_ref() {
            if !due(*fetched, *expires, SystemTime::now()) {
                return Ok(credentials.clone());
            }
        }
        // The SDK's future is deep: boxed and erased here, so that every
        // upstream request's future does not carry its type.
        let fetch: std::pin::Pin<Box<dyn std::future::Future<Output = Fetched> + Send + '_>> =
            Box::pin(self.fetch());
        let (credentials, expires) = fetch.await?;
        *cached = Some((credentials.clone(), SystemTime::now(), expires));
        Ok(credentials)
    }

    /// Forgets the token (the registry refused it).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }

    /// Asks ECR for a token.
    async fn fetch(&self) -> Fetched {
        let failed = |why: String| format!("ECR authorization token ({}): {why}", self.region);
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(self.region.clone()))
            .load()
            .await;
        let answer = aws_sdk_ecr::Client::new(&config)
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| failed(aws_sdk_ecr::error::DisplayErrorContext(e).to_string()))?;
        let data = answer
            .authorization_data()
            .first()
            .ok_or_else(|| failed("no authorization data".into()))?;
        let token = data
            .authorization_token()
            .ok_or_else(|| failed("no token".into()))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| failed("the token is not base64 of user:password".into()))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| failed("the token is not user:password".into()))?;
        // ECR's tokens last 12 hours; without a date, an hour is assumed.
        let expires = data
            .expires_at()
            .and_then(|at| SystemTime::try_from(*at).ok())
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600));
        Ok((
            (user.to_owned(), Secret::from(password.to_owned())),
            expires,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_hosts_and_refresh_times() {
        assert_eq!(
            region_of("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some("eu-west-1")
        );
        assert_eq!(
            region_of("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
            Some("cn-north-1")
        );
        for other in [
            "registry-1.docker.io",
            "dkr.ecr.eu-west-1.amazonaws.com",
            "abc.dkr.ecr.eu-west-1.amazonaws.com",
            "123.dkr.ecr..amazonaws.com",
            "public.ecr.aws",
        ] {
            assert_eq!(region_of(other), None, "{other}");
        }
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let expires = t0 + Duration::from_secs(12 * 3600);
        assert!(!due(t0, expires, t0 + Duration::from_secs(3600)));
        assert!(due(t0, expires, t0 + Duration::from_secs(6 * 3600)));
        assert!(due(t0, t0, t0), "an expired token is fetched again");
    }
}
