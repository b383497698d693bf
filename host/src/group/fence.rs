//! Fencing a departed host's transactional producer: an `InitProducerId` with
//! its transactional id bumps the producer epoch, which aborts the transaction
//! the host left open (a host killed inside a commit) and refuses anything its
//! old producer still sends. The host taking its tasks does this at once, so
//! their restores and resume points do not wait for `transaction.timeout.ms`.
//!
//! Spoken over [`wire`](super::wire) rather than through a librdkafka producer:
//! librdkafka asks again only every 500 ms while the coordinator aborts the
//! open transaction (`CONCURRENT_TRANSACTIONS`), which put half a second on
//! every failover; here the question is asked again every few milliseconds.

use std::time::{Duration, Instant};

use kafka_protocol::messages::{InitProducerIdRequest, TransactionalId};
use kafka_protocol::protocol::StrBytes;

use super::GroupError;
use super::wire::Connection;

const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const CONCURRENT_TRANSACTIONS: i16 = 51;
/// Not a Kafka code: the coordinator was found, ask it.
const CONNECTED: i16 = i16::MIN;

/// How long one request may take.
const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// The pause before asking again while the coordinator is busy.
const AGAIN_AFTER: Duration = Duration::from_millis(10);

/// Fences the producers of `transactional_id` (their open transaction is
/// aborted) within `within`. `transaction_timeout` is the timeout the new
/// (never used) epoch carries.
pub fn fence(
    bootstrap: &str,
    client_id: &str,
    transactional_id: &str,
    transaction_timeout: Duration,
    within: Duration,
) -> Result<(), GroupError> {
    let deadline = Instant::now() + within;
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_string(transactional_id.to_owned()))))
        .with_transaction_timeout_ms(i32::try_from(transaction_timeout.as_millis()).unwrap_or(i32::MAX))
        .with_producer_id((-1).into())
        .with_producer_epoch(-1);
    let mut coordinator: Option<Connection> = None;
    loop {
        let answer = match coordinator.as_mut() {
            Some(c) => c.send(&request, REQUEST_WAIT).map(|(_, r)| r.error_code),
            None => find(bootstrap, client_id, transactional_id).map(|c| {
                coordinator = Some(c);
                CONNECTED
            }),
        };
        let again = match answer {
            Ok(0) => return Ok(()),
            Ok(CONNECTED) => continue,
            Ok(code @ (COORDINATOR_LOAD_IN_PROGRESS | CONCURRENT_TRANSACTIONS)) => {
                GroupError::broker("InitProducerId", code)
            }
            Ok(code @ (NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE)) => {
                coordinator = None;
                GroupError::broker("InitProducerId", code)
            }
            Ok(code) => return Err(GroupError::broker("InitProducerId", code)),
            Err(e) => {
                coordinator = None;
                e
            }
        };
        if Instant::now() >= deadline {
            return Err(again);
        }
        std::thread::sleep(AGAIN_AFTER);
    }
}

/// A connection to the transaction coordinator of `transactional_id`.
fn find(bootstrap: &str, client_id: &str, transactional_id: &str) -> Result<Connection, GroupError> {
    let mut any = Connection::bootstrap(bootstrap, client_id, REQUEST_WAIT)?;
    let address = any.find_coordinator(transactional_id, 1, REQUEST_WAIT)?;
    if address == any.broker() { Ok(any) } else { Connection::open(&address, client_id, REQUEST_WAIT) }
}
