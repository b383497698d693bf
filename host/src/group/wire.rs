//! One connection to a broker for the group member: Kafka's wire framing over a
//! blocking TCP stream, messages encoded by the `kafka-protocol` crate (Kafka's
//! own schemas), versions agreed with the broker once per connection.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FindCoordinatorRequest, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, Request, StrBytes};

use super::GroupError;

/// Largest response accepted (a group's metadata is small; this bounds a
/// corrupt length prefix).
const MAX_RESPONSE: usize = 64 << 20;

/// A connection to one broker.
pub(crate) struct Connection {
    stream: TcpStream,
    broker: String,
    client_id: StrBytes,
    correlation: i32,
    /// The broker's version range per API key.
    versions: HashMap<i16, (i16, i16)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("broker", &self.broker).finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `broker` (`host:port`) within `timeout` and learns its versions.
    pub(crate) fn open(broker: &str, client_id: &str, timeout: Duration) -> Result<Self, GroupError> {
        let io = |source| GroupError::Io { broker: broker.to_owned(), source };
        let addrs: Vec<_> = broker.to_socket_addrs().map_err(io)?.collect();
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = stream.ok_or_else(|| {
            io(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))
        })?;
        stream.set_nodelay(true).map_err(io)?;
        let mut connection = Self {
            stream,
            broker: broker.to_owned(),
            client_id: StrBytes::from_string(client_id.to_owned()),
            correlation: 0,
            versions: HashMap::new(),
        };
        // ApiVersions v0 is understood by every broker; its answer lists the rest.
        let request = ApiVersionsRequest::default();
        let response: ApiVersionsResponse = connection.exchange(ApiKey::ApiVersions as i16, 0, &request, timeout)?;
        if response.error_code != 0 {
            return Err(GroupError::broker("ApiVersions", response.error_code));
        }
        connection.versions = response.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
        Ok(connection)
    }

    /// Connects to the first of `servers` (a `bootstrap.servers` list) that answers.
    pub(crate) fn bootstrap(servers: &str, client_id: &str, timeout: Duration) -> Result<Self, GroupError> {
        let mut last = GroupError::Protocol(format!("no broker in bootstrap servers {servers:?}"));
        for server in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let server = server.split_once("://").map_or(server, |(_, s)| s);
            match Self::open(server, client_id, timeout) {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The broker this connection reaches.
    pub(crate) fn broker(&self) -> &str {
        &self.broker
    }

    /// The highest version of `R` both sides speak, up to the versions
    /// librdkafka itself uses (every broker and librdkafka's mock cluster
    /// answer those; newer ones add nothing a static member needs).
    pub(crate) fn version<R: Request>(&self) -> Result<i16, GroupError> {
        let mut ours = R::VERSIONS;
        ours.max = ours.max.min(highest_used(R::KEY));
        let name = api_name(R::KEY);
        let &(min, max) = self.versions.get(&R::KEY).ok_or_else(|| GroupError::Unsupported {
            api: name,
            reason: format!("broker {} does not offer it", self.broker),
        })?;
        let version = max.min(ours.max);
        if version < min.max(ours.min) {
            return Err(GroupError::Unsupported {
                api: name,
                reason: format!(
                    "broker {} speaks versions {min}..={max}, Weir {}..={}",
                    self.broker, ours.min, ours.max
                ),
            });
        }
        Ok(version)
    }

    /// Sends `request` at the agreed version and waits up to `wait` for the answer.
    pub(crate) fn send<R: Request>(&mut self, request: &R, wait: Duration) -> Result<(i16, R::Response), GroupError> {
        let version = self.version::<R>()?;
        Ok((version, self.exchange(R::KEY, version, request, wait)?))
    }

    fn exchange<Q: Encodable, A: Decodable + HeaderVersion + Message>(
        &mut self,
        key: i16,
        version: i16,
        request: &Q,
        wait: Duration,
    ) -> Result<A, GroupError> {
        let api = api_name(key);
        let protocol = |e: anyhow::Error| GroupError::Protocol(format!("{api} v{version}: {e}"));
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(key)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(self.client_id.clone()));
        let header_version = ApiKey::try_from(key)
            .map_err(|()| GroupError::Protocol(format!("unknown API key {key}")))?
            .request_header_version(version);
        let mut body = BytesMut::new();
        header.encode(&mut body, header_version).map_err(protocol)?;
        request.encode(&mut body, version).map_err(protocol)?;
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
        frame.extend_from_slice(&body);
        let broker = format!("{} ({api} v{version})", self.broker);
        let io = |source| GroupError::Io { broker: broker.clone(), source };
        self.stream.set_write_timeout(Some(wait.max(Duration::from_millis(1)))).map_err(io)?;
        self.stream.write_all(&frame).map_err(io)?;
        self.stream.set_read_timeout(Some(wait.max(Duration::from_millis(1)))).map_err(io)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(io)?;
        let size = i32::from_be_bytes(size);
        if size < 4 || size as usize > MAX_RESPONSE {
            return Err(GroupError::Protocol(format!("{api}: answer of {size} bytes")));
        }
        let mut answer = vec![0u8; size as usize];
        self.stream.read_exact(&mut answer).map_err(io)?;
        let mut answer = Bytes::from(answer);
        let header = ResponseHeader::decode(&mut answer, A::header_version(version)).map_err(protocol)?;
        if header.correlation_id != self.correlation {
            return Err(GroupError::Protocol(format!(
                "{api}: answer to request {} where {} was asked",
                header.correlation_id, self.correlation
            )));
        }
        A::decode(&mut answer, version).map_err(protocol)
    }

    /// Asks which broker coordinates `key` (a group if `key_type` is 0, a
    /// transactional id if 1); returns its `host:port`.
    pub(crate) fn find_coordinator(&mut self, key: &str, key_type: i8, wait: Duration) -> Result<String, GroupError> {
        let key = StrBytes::from_string(key.to_owned());
        let version = self.version::<FindCoordinatorRequest>()?;
        let request = if version >= 4 {
            FindCoordinatorRequest::default().with_key_type(key_type).with_coordinator_keys(vec![key])
        } else {
            FindCoordinatorRequest::default().with_key_type(key_type).with_key(key)
        };
        let (version, response) = self.send(&request, wait)?;
        let (error, host, port) = if version >= 4 {
            let c = response
                .coordinators
                .first()
                .ok_or_else(|| GroupError::Protocol("FindCoordinator: no coordinator in the answer".into()))?;
            (c.error_code, c.host.to_string(), c.port)
        } else {
            (response.error_code, response.host.to_string(), response.port)
        };
        if error != 0 {
            return Err(GroupError::broker("FindCoordinator", error));
        }
        Ok(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
    }
}

/// The highest version of API `key` Weir sends.
fn highest_used(key: i16) -> i16 {
    match ApiKey::try_from(key) {
        Ok(ApiKey::FindCoordinator) => 2,
        Ok(ApiKey::JoinGroup) => 5,
        Ok(ApiKey::SyncGroup | ApiKey::Heartbeat | ApiKey::LeaveGroup) => 3,
        Ok(ApiKey::OffsetCommit) => 7,
        Ok(ApiKey::InitProducerId) => 4,
        _ => i16::MAX,
    }
}

/// A readable name of API `key`.
fn api_name(key: i16) -> &'static str {
    match ApiKey::try_from(key) {
        Ok(ApiKey::ApiVersions) => "ApiVersions",
        Ok(ApiKey::FindCoordinator) => "FindCoordinator",
        Ok(ApiKey::JoinGroup) => "JoinGroup",
        Ok(ApiKey::SyncGroup) => "SyncGroup",
        Ok(ApiKey::Heartbeat) => "Heartbeat",
        Ok(ApiKey::LeaveGroup) => "LeaveGroup",
        Ok(ApiKey::OffsetCommit) => "OffsetCommit",
        Ok(ApiKey::InitProducerId) => "InitProducerId",
        _ => "request",
    }
}
