//! Which credentials go to which endpoint, and the OAuth2 refresh-token
//! exchange for identity tokens.
//!
//! Credentials from the CRI request are for the image's own registry and are
//! sent only there, never to a mirror (a mirror gets the credentials its own
//! `[registry.hosts."<mirror host>"]` entry names). Request credentials win
//! over the config file's.

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::config::{PullAuth, RegistryHost};

/// Credentials for one endpoint, before any token exchange.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials.
    Anonymous,
    /// User and password (basic auth, or sent to the token endpoint).
    Basic(String, String),
    /// A bearer token sent as is.
    Bearer(String),
    /// An OAuth2 refresh token to exchange for a bearer token.
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic(user, _) => write!(f, "Basic({user:?}, <redacted>)"),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// The `auth` field could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("the auth string is not base64 of \"user:password\"")]
pub struct AuthDecodeError;

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn decode_auth(auth: &str) -> Result<(String, String), AuthDecodeError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| AuthDecodeError)?;
    let text = String::from_utf8(bytes).map_err(|_| AuthDecodeError)?;
    let (user, pass) = text.split_once(':').ok_or(AuthDecodeError)?;
    Ok((user.to_string(), pass.to_string()))
}

fn pick(
    username: Option<&str>,
    password: Option<&str>,
    auth: Option<&str>,
    identity_token: Option<&str>,
    registry_token: Option<&str>,
) -> Result<Credentials, AuthDecodeError> {
    if let Some(token) = registry_token {
        return Ok(Credentials::Bearer(token.to_string()));
    }
    if let Some(token) = identity_token {
        return Ok(Credentials::IdentityToken(token.to_string()));
    }
    if let Some(user) = username {
        return Ok(Credentials::Basic(
            user.to_string(),
            password.unwrap_or_default().to_string(),
        ));
    }
    if let Some(auth) = auth {
        let (user, pass) = decode_auth(auth)?;
        return Ok(Credentials::Basic(user, pass));
    }
    Ok(Credentials::Anonymous)
}

/// Credentials from a CRI request (`None` if the request carries none).
pub fn from_request(auth: &PullAuth) -> Result<Option<Credentials>, AuthDecodeError> {
    let creds = pick(
        non_empty(&auth.username),
        non_empty(&auth.password),
        non_empty(&auth.auth),
        non_empty(&auth.identity_token),
        non_empty(&auth.registry_token),
    )?;
    Ok((creds != Credentials::Anonymous).then_some(creds))
}

/// Credentials from a config file host entry.
pub fn from_config(host: &RegistryHost) -> Result<Credentials, AuthDecodeError> {
    pick(
        host.username.as_deref().and_then(non_empty),
        host.password.as_deref(),
        host.auth.as_deref().and_then(non_empty),
        host.identity_token.as_deref().and_then(non_empty),
        None,
    )
}

/// The identity token exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenExchangeError {
    /// The registry did not answer or answered with an error.
    #[error("the token endpoint {endpoint} refused the identity token")]
    Refused {
        /// The realm URL.
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// The token endpoint answered, but without a token.
    #[error("the token endpoint {endpoint} answered without an access token")]
    NoToken {
        /// The realm URL.
        endpoint: String,
    },
    /// The registry does not use bearer tokens, so an identity token is useless.
    #[error("registry {registry} offers no bearer token endpoint for an identity token")]
    NoTokenEndpoint {
        /// The registry host.
        registry: String,
    },
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

/// Parses `Bearer realm="…",service="…"` into (realm, service).
fn bearer_challenge(header: &str) -> Option<(String, Option<String>)> {
    let rest = header.trim().strip_prefix("Bearer ")?;
    let mut realm = None;
    let mut service = None;
    for part in rest.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_string();
        match key.trim() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            _ => {}
        }
    }
    Some((realm?, service))
}

/// Turns credentials into what the registry client sends. An identity token
/// is exchanged at the registry's token endpoint (OAuth2 `refresh_token`
/// grant, as Docker does) for a bearer token scoped to pulling `repository`.
pub async fn resolve(
    creds: &Credentials,
    http: &reqwest::Client,
    base_url: &str,
    registry: &str,
    repository: &str,
) -> Result<RegistryAuth, TokenExchangeError> {
    let token = match creds {
        Credentials::Anonymous => return Ok(RegistryAuth::Anonymous),
        Credentials::Basic(user, pass) => {
            return Ok(RegistryAuth::Basic(user.clone(), pass.clone()));
        }
        Credentials::Bearer(token) => return Ok(RegistryAuth::Bearer(token.clone())),
        Credentials::IdentityToken(token) => token,
    };
    let refused = |endpoint: &str| {
        let endpoint = endpoint.to_string();
        move |source| TokenExchangeError::Refused { endpoint, source }
    };
    let probe_url = format!("{base_url}/v2/");
    let probe = http
        .get(&probe_url)
        .send()
        .await
        .map_err(refused(&probe_url))?;
    let challenge = probe
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(bearer_challenge);
    let Some((realm, service)) = challenge else {
        return Err(TokenExchangeError::NoTokenEndpoint {
            registry: registry.to_string(),
        });
    };
    let scope = format!("repository:{repository}:pull");
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", token.as_str()),
        ("client_id", "hull"),
        ("scope", scope.as_str()),
    ];
    if let Some(service) = service.as_deref() {
        form.push(("service", service));
    }
    let answer: TokenAnswer = http
        .post(&realm)
        .form(&form)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(refused(&realm))?
        .json()
        .await
        .map_err(refused(&realm))?;
    match answer.access_token.or(answer.token) {
        Some(bearer) => Ok(RegistryAuth::Bearer(bearer)),
        None => Err(TokenExchangeError::NoToken { endpoint: realm }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_credentials_in_docker_order() {
        let mut auth = PullAuth {
            auth: base64::engine::general_purpose::STANDARD.encode("alice:pw:with:colons"),
            ..Default::default()
        };
        assert_eq!(
            from_request(&auth).unwrap(),
            Some(Credentials::Basic("alice".into(), "pw:with:colons".into()))
        );
        auth.username = "bob".into();
        auth.password = "pw".into();
        assert_eq!(
            from_request(&auth).unwrap(),
            Some(Credentials::Basic("bob".into(), "pw".into()))
        );
        auth.identity_token = "refresh".into();
        assert_eq!(
            from_request(&auth).unwrap(),
            Some(Credentials::IdentityToken("refresh".into()))
        );
        auth.registry_token = "bearer".into();
        assert_eq!(
            from_request(&auth).unwrap(),
            Some(Credentials::Bearer("bearer".into()))
        );
        assert_eq!(from_request(&PullAuth::default()).unwrap(), None);
    }

    #[test]
    fn bad_auth_string_is_an_error() {
        let auth = PullAuth {
            auth: "not base64!".into(),
            ..Default::default()
        };
        assert!(from_request(&auth).is_err());
        let no_colon = PullAuth {
            auth: base64::engine::general_purpose::STANDARD.encode("nocolon"),
            ..Default::default()
        };
        assert!(from_request(&no_colon).is_err());
    }

    #[test]
    fn config_credentials() {
        let host = RegistryHost {
            username: Some("u".into()),
            password: Some("p".into()),
            ..Default::default()
        };
        assert_eq!(
            from_config(&host).unwrap(),
            Credentials::Basic("u".into(), "p".into())
        );
        assert_eq!(
            from_config(&RegistryHost::default()).unwrap(),
            Credentials::Anonymous
        );
    }

    #[test]
    fn parses_bearer_challenge() {
        let (realm, service) = bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull,push""#,
        )
        .unwrap();
        assert_eq!(realm, "https://auth.example/token");
        assert_eq!(service.as_deref(), Some("registry.example"));
        assert!(bearer_challenge(r#"Basic realm="x""#).is_none());
    }

    /// A fake registry + token endpoint: `GET /v2/` answers 401 with a bearer
    /// challenge, `POST /token` answers an access token if the form carries
    /// the refresh token. Returns the base URL and the form it received.
    async fn token_server(
        expected_refresh: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let realm = format!("{base}/token");
        let server = tokio::spawn(async move {
            let mut form = String::new();
            for _ in 0..2 {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = conn.read(&mut buf).await.unwrap();
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&request).into_owned();
                let answer = if text.starts_with("GET /v2/") {
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\nWww-Authenticate: Bearer realm=\"{realm}\",service=\"fake\"\r\nContent-Length: 0\r\n\r\n"
                    )
                } else {
                    form = text
                        .split_once("\r\n\r\n")
                        .map(|(_, b)| b.to_string())
                        .unwrap_or_default();
                    let body = if form.contains(&format!("refresh_token={expected_refresh}")) {
                        r#"{"access_token":"granted"}"#
                    } else {
                        r#"{}"#
                    };
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                };
                conn.write_all(answer.as_bytes()).await.unwrap();
            }
            form
        });
        (base, server)
    }

    #[tokio::test]
    async fn identity_token_is_exchanged_for_a_bearer_token() {
        let (base, server) = token_server("refresh-me").await;
        let auth = resolve(
            &Credentials::IdentityToken("refresh-me".into()),
            &reqwest::Client::new(),
            &base,
            "fake",
            "team/app",
        )
        .await
        .unwrap();
        assert_eq!(auth, RegistryAuth::Bearer("granted".into()));
        let form = server.await.unwrap();
        assert!(form.contains("grant_type=refresh_token"), "{form}");
        assert!(
            form.contains("scope=repository%3Ateam%2Fapp%3Apull"),
            "{form}"
        );
        assert!(form.contains("service=fake"), "{form}");
    }

    #[tokio::test]
    async fn identity_token_without_an_access_token_in_the_answer_fails() {
        let (base, _server) = token_server("other").await;
        let err = resolve(
            &Credentials::IdentityToken("refresh-me".into()),
            &reqwest::Client::new(),
            &base,
            "fake",
            "team/app",
        )
        .await
        .unwrap_err();
        assert!(matches!(err, TokenExchangeError::NoToken { .. }), "{err}");
    }
}
