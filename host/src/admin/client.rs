//! The client side of the admin API, for `weir plugin …`.

use thiserror::Error;

/// A failed call.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The host could not be reached.
    #[error("admin API at {url}: {source}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        source: Box<ureq::Error>,
    },
    /// The host answered with an error.
    #[error("{status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The host's reason.
        message: String,
    },
}

/// A call to a host's admin API.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:7070`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Self { base: base.trim_end_matches('/').to_owned(), token, agent }
    }

    fn finish(
        &self,
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String, ClientError> {
        let mut response = result.map_err(|e| ClientError::Transport { url: url.to_owned(), source: Box::new(e) })?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        Err(ClientError::Refused { status, message })
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// GET a path.
    pub fn get(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let result = self.agent.get(&url).call();
        self.finish(&url, result)
    }

    /// DELETE a path.
    pub fn delete(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.delete(&url);
        if let Some(auth) = self.auth() {
            request = request.header("Authorization", auth);
        }
        let result = request.call();
        self.finish(&url, result)
    }

    /// Uploads a plugin component under `name`. A file over the host's upload
    /// limit is refused here, with the host's own message, before it is sent (a
    /// host cuts an oversized upload off mid-way, which a client would only see
    /// as a broken connection).
    pub fn upload(&self, name: &str, bytes: &[u8]) -> Result<String, ClientError> {
        let limit = self
            .get("/v1/host")
            .ok()
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|host| host["max_upload_bytes"].as_u64());
        if let Some(limit) = limit
            && bytes.len() as u64 > limit
        {
            return Err(ClientError::Refused {
                status: 413,
                message: format!("the upload is {} bytes; the limit is {limit} bytes", bytes.len()),
            });
        }
        self.post(&format!("/v1/plugins/{name}"), "application/wasm", bytes)
    }

    /// POST bytes to a path.
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.post(&url).header("Content-Type", content_type);
        if let Some(auth) = self.auth() {
            request = request.header("Authorization", auth);
        }
        let result = request.send(body);
        self.finish(&url, result)
    }
}
