//! The outbox: the records a task wants written — results, records for the
//! next sub-topology (repartition topics), changelog records and dead letters — collected in order until the pipeline drains them into one
//! transaction at commit. A task never talks to Kafka itself, so a transaction is
//! open only while a commit sends, and a task's behaviour can be tested without a
//! broker.

/// Where a record goes; the pipeline maps each to a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// A sink of the topology, by index.
    Sink(usize),
    /// A repartition topic of the topology, by index (partitioned by key).
    Repartition(usize),
    /// The changelog of store `.1` of sub-topology `.0` (in the order of
    /// [`crate::topology::Sub::stores`]), at the task's partition.
    Changelog(usize, usize),
    /// The dead-letter topic.
    DeadLetter,
}

/// One record to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    /// Where it goes.
    pub dest: Dest,
    /// A partition, or `None` for the default partitioner.
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Timestamp in ms.
    pub timestamp: Option<i64>,
    /// Headers.
    pub headers: Vec<(&'static str, String)>,
}

/// Records waiting for the next commit.
#[derive(Debug, Default)]
pub struct Outbox {
    records: Vec<Out>,
    bytes: usize,
}

impl Outbox {
    /// Queues a record.
    pub fn push(&mut self, out: Out) {
        self.bytes += out.key.as_ref().map_or(0, Vec::len) + out.value.as_ref().map_or(0, Vec::len);
        self.records.push(out);
    }

    /// Bytes of keys and values queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The queued records, in order.
    pub fn records(&self) -> &[Out] {
        &self.records
    }

    /// Forgets everything queued (the commit it was for was given up).
    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }
}
