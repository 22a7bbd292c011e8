//! Amazon ECR upstreams: the registry password is a token from ECR's
//! `GetAuthorizationToken`, asked with the AWS credential chain
//! (environment, profile, web identity, container and instance roles),
//! valid 12 hours. It is fetched again once half its lifetime has passed
//! (the old one serves until a minute before it expires while that runs or
//! fails), and at once when the registry refuses it; one fetch at a time
//! serves every request (`upstream::refresh`).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use driver_core::Secret;
use tokio::time::Instant;

use super::refresh::{Fetched as Refresh, Refreshed, Unready};

/// Registry credentials from a token.
type Login = (String, Secret);

/// A token's credentials and when they expire, as fetched.
type Fetched = Result<(Login, SystemTime), String>;

/// Tokens for one ECR registry.
#[derive(Debug)]
pub struct EcrTokens {
    tokens: Refreshed<Login>,
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

/// How long a token with `left` to live is used without asking again
/// (half of it), and how long after that while a new fetch runs or fails
/// (until a minute before it expires).
fn windows(left: Duration) -> (Duration, Duration) {
    let fresh = left / 2;
    (
        fresh,
        (left - fresh).saturating_sub(Duration::from_secs(60)),
    )
}

impl EcrTokens {
    /// Tokens for the ECR registry of `region`.
    pub fn new(region: &str) -> Self {
        let region = region.to_owned();
        Self {
            tokens: Refreshed::new(move || {
                let region = region.clone();
                // The SDK's future is deep: boxed and erased here, so that
                // every upstream request's future does not carry its type.
                let asked: std::pin::Pin<
                    Box<dyn std::future::Future<Output = Fetched> + Send + 'static>,
                > = Box::pin(async move { fetch(&region).await });
                async move {
                    asked.await.map(|(login, expires)| {
                        let left = expires
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        let (fresh, grace) = windows(left);
                        Refresh {
                            value: login,
                            fresh: Some(fresh),
                            grace,
                        }
                    })
                }
            }),
        }
    }

    /// The registry credentials to use now (`AWS` and the token), a fetch
    /// waited for at most `within`.
    pub(crate) async fn credentials(&self, within: Duration) -> Result<Login, Unready> {
        self.tokens.get(within).await
    }

    /// Forgets the token if it was taken at or before `asked` (the
    /// registry refused a request that sent it).
    pub(crate) fn forget(&self, asked: Instant) {
        self.tokens.forget(asked);
    }
}

/// Asks ECR of `region` for a token.
async fn fetch(region: &str) -> Fetched {
    let failed = |why: String| format!("ECR authorization token ({region}): {why}");
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
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
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(
            windows(hours(12)),
            (hours(6), hours(6) - Duration::from_secs(60))
        );
        assert_eq!(
            windows(Duration::ZERO),
            (Duration::ZERO, Duration::ZERO),
            "an expired token is fetched again"
        );
    }
}
