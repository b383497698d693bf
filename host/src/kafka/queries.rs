//! Kafka questions that may take long, asked on a thread of their own so the poll
//! loop never waits for them: where a newly assigned task resumes (the group's
//! committed offset and its metadata) and how far its changelog reaches; the
//! fencing of departed hosts' producers before that (their open transactions
//! would hold both back); and the purges of repartition topics (records before
//! the committed offsets of the tasks reading them are deleted, as Kafka
//! Streams does).
//!
//! The committed offsets are asked for with `require_stable` (a read_committed
//! client), so while another producer's transaction holds offsets of a partition
//! pending — a host that died or hung mid-commit — the answer waits for that
//! transaction to end instead of returning offsets that may still move. Each
//! task is asked about on its own (its partition of every topic it reads, in
//! one request), so one pending transaction holds back only its own task, and
//! every question is asked again until it is answered: while the broker is
//! away, restoring tasks wait instead of failing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, TopicPartitionList};

use super::health::Health;
use super::source::Reporting;
use super::{KafkaIoError, is_coordinator_transient, set_default};
use crate::task::TaskId;

/// How long one attempt may take.
const ATTEMPT: Duration = Duration::from_millis(1500);
/// An answer taking this long is mentioned in the log.
const SLOW: Duration = Duration::from_millis(100);
/// How often a question that keeps waiting is mentioned in the log.
const NOTE_EVERY: Duration = Duration::from_secs(5);

/// Where a task resumes, as Kafka knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The task.
    pub task: TaskId,
    /// Which request this answers (the caller's counter).
    pub epoch: u64,
    /// The group's committed offset of each of the task's inputs, if any.
    pub committed: Vec<Option<i64>>,
    /// The metadata committed with them (the same on each input a commit
    /// carried; empty where none was committed).
    pub metadata: Vec<String>,
    /// Per store: its changelog partition's first offset and its end,
    /// counting records of open transactions (restore reads every committed
    /// record before it).
    pub changelogs: Vec<(i64, i64)>,
}

/// What a task's question is about.
#[derive(Debug, Clone)]
pub struct Question {
    /// The task.
    pub task: TaskId,
    /// The topics of its input partitions (the task's partition of each).
    pub inputs: Vec<String>,
    /// Its stores' changelogs.
    pub changelogs: Vec<String>,
}

enum Request {
    Resume { question: Question, epoch: u64 },
    Fence(Vec<String>),
    Forget(TaskId),
    Purge(TopicPartitionList),
}

/// The question thread of one pipeline.
pub struct Queries {
    tx: Option<Sender<Request>>,
    rx: Receiver<Resume>,
    thread: Option<JoinHandle<()>>,
}

struct Worker {
    offsets: BaseConsumer<Reporting>,
    ends: BaseConsumer<Reporting>,
    admin: AdminClient<Reporting>,
    health: Health,
    /// The clients' settings (the brokers, for fencing).
    base: ClientConfig,
}

impl Worker {
    /// Answers the questions of `open` together: one request for the
    /// committed offsets of all their inputs, then the ends of their
    /// changelogs. Any failure fails them all (a pending transaction holds
    /// some offsets): the caller then asks each on its own, so one held task
    /// does not hold back the others.
    ///
    /// The ends are high watermarks, asked per partition (`fetch_watermarks`):
    /// batched through librdkafka's `offsets_for_times` (timestamp -1) they came
    /// out short of an open transaction's records, and a restore ended before
    /// records committed after that transaction (the multi-host chaos test).
    fn answer(&self, open: &[(&Question, u64)]) -> Result<Vec<Resume>, String> {
        let started = Instant::now();
        let mut inputs = TopicPartitionList::new();
        for (q, _) in open {
            for input in &q.inputs {
                inputs.add_partition(input, q.task.partition);
            }
        }
        let committed = self.offsets.committed_offsets(inputs, ATTEMPT).map_err(|e| {
            if is_coordinator_transient(&e) {
                format!("{e} (the group coordinator is moving, or another producer's transaction holds the offsets)")
            } else {
                e.to_string()
            }
        })?;
        let mut answers = Vec::with_capacity(open.len());
        for (q, epoch) in open {
            let p = q.task.partition;
            let (mut at, mut metadata) = (Vec::new(), Vec::new());
            for input in &q.inputs {
                let elem = committed.find_partition(input, p).ok_or_else(|| format!("no answer for {input}"))?;
                elem.error().map_err(|e| format!("{input}: {e}"))?;
                at.push(elem.offset().to_raw().filter(|o| *o >= 0));
                metadata.push(elem.metadata().to_owned());
            }
            let changelogs = (q.changelogs.iter())
                .map(|c| self.ends.fetch_watermarks(c, p, ATTEMPT).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            answers.push(Resume { task: q.task, epoch: *epoch, committed: at, metadata, changelogs });
        }
        if started.elapsed() >= SLOW {
            tracing::info!(
                pipeline = %self.health.pipeline(),
                tasks = open.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "where tasks resume took long to learn"
            );
        }
        Ok(answers)
    }

    /// Fences the producers of `transactional_ids` (hosts that left the group):
    /// a new epoch for each aborts the transaction it may have left open, which
    /// holds back the readers of its changelogs and its committed offsets until
    /// `transaction.timeout.ms` otherwise.
    fn fence(&self, transactional_ids: &[String]) {
        for id in transactional_ids {
            let started = Instant::now();
            match super::fence(&self.base, id, None) {
                Ok(()) => tracing::info!(
                    pipeline = %self.health.pipeline(),
                    transactional_id = %id,
                    took_ms = started.elapsed().as_millis() as u64,
                    "fenced a host that left the group"
                ),
                Err(error) => tracing::warn!(
                    pipeline = %self.health.pipeline(),
                    transactional_id = %id,
                    %error,
                    "fencing a host that left the group failed; its open transaction (if any) ends at its timeout"
                ),
            }
        }
    }

    /// Deletes the records before `offsets`; a failure only delays it to the
    /// next purge (the records are consumed either way).
    fn purge(&self, offsets: &TopicPartitionList) {
        let opts = AdminOptions::new().request_timeout(Some(ATTEMPT));
        match futures_executor::block_on(self.admin.delete_records(offsets, &opts)) {
            Ok(done) => {
                for e in done.elements() {
                    if let Err(error) = e.error() {
                        tracing::debug!(pipeline = %self.health.pipeline(), topic = e.topic(), partition = e.partition(), %error, "purging a repartition topic");
                    }
                }
            }
            Err(error) => tracing::debug!(pipeline = %self.health.pipeline(), %error, "purging repartition topics"),
        }
    }
}

impl Queries {
    /// Starts the thread, with clients of `base`, for `group`'s offsets on
    /// `input` and the ends of `changelog`.
    pub fn start(
        base: &ClientConfig,
        group: &str,
        health: Health,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, KafkaIoError> {
        let mut offsets = base.clone();
        offsets.set("group.id", group).set("enable.auto.commit", "false").set("isolation.level", "read_committed");
        // Offsets held by an open transaction are asked for again (librdkafka
        // retries UNSTABLE_OFFSET_COMMIT itself): soon, since the host taking
        // a task over fences the transaction's producer within milliseconds.
        set_default(&mut offsets, "retry.backoff.ms", "10");
        set_default(&mut offsets, "retry.backoff.max.ms", "50");
        let mut ends = base.clone();
        ends.remove("group.id");
        ends.set("isolation.level", "read_uncommitted");
        let make = |config: &ClientConfig| -> Result<BaseConsumer<Reporting>, KafkaIoError> {
            config
                .create_with_context(Reporting::new(health.clone(), "queries"))
                .map_err(|e| KafkaIoError::Setup(e.to_string()))
        };
        let admin = ends
            .create_with_context(Reporting::new(health.clone(), "admin"))
            .map_err(|e| KafkaIoError::Setup(e.to_string()))?;
        let worker = Worker { offsets: make(&offsets)?, ends: make(&ends)?, admin, health, base: base.clone() };
        let (tx, requests) = channel();
        let (answers, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("weir-queries".into())
            .spawn(move || run(worker, requests, answers, stop))
            .map_err(|e| KafkaIoError::Setup(format!("query thread: {e}")))?;
        Ok(Self { tx: Some(tx), rx, thread: Some(thread) })
    }

    /// Asks where `question`'s task resumes; the answer carries `epoch`.
    pub fn ask(&self, question: Question, epoch: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Resume { question, epoch });
        }
    }

    /// Fences the producers of `transactional_ids` before answering anything
    /// asked after this.
    pub fn fence(&self, transactional_ids: Vec<String>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Fence(transactional_ids));
        }
    }

    /// Stops asking about `task`.
    pub fn forget(&self, task: TaskId) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Forget(task));
        }
    }

    /// Deletes the records of repartition topics before `offsets` (consumed
    /// and committed).
    pub fn purge(&self, offsets: TopicPartitionList) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Purge(offsets));
        }
    }

    /// The answers that arrived since the last call.
    pub fn answers(&self) -> Vec<Resume> {
        self.rx.try_iter().collect()
    }
}

impl Drop for Queries {
    fn drop(&mut self) {
        // The thread ends at its next look at the channel. It is not waited for:
        // closing its clients can take long while Kafka is away, and nothing may
        // hold up a stopping pipeline.
        self.tx.take();
        drop(self.thread.take());
    }
}

fn run(worker: Worker, requests: Receiver<Request>, answers: Sender<Resume>, stop: Arc<AtomicBool>) {
    // Task → (question, epoch, asked since, last noted).
    let mut open: BTreeMap<TaskId, (Question, u64, Instant, Instant)> = BTreeMap::new();
    loop {
        let next = if open.is_empty() {
            requests.recv_timeout(Duration::from_millis(200))
        } else {
            requests.try_recv().map_err(|e| match e {
                std::sync::mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                std::sync::mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        };
        match next {
            Ok(Request::Resume { question, epoch }) => {
                let now = Instant::now();
                open.insert(question.task, (question, epoch, now, now));
                continue;
            }
            Ok(Request::Fence(ids)) => {
                worker.fence(&ids);
                continue;
            }
            Ok(Request::Forget(task)) => {
                open.remove(&task);
                continue;
            }
            Ok(Request::Purge(offsets)) => {
                worker.purge(&offsets);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // Every open question at once; on any failure, each on its own.
        if open.len() > 1 {
            let all: Vec<(&Question, u64)> = open.values().map(|(q, e, _, _)| (q, *e)).collect();
            if let Ok(resumes) = worker.answer(&all) {
                for resume in resumes {
                    if answers.send(resume).is_err() {
                        return;
                    }
                }
                open.clear();
                continue;
            }
        }
        let mut done = Vec::new();
        for (&task, (question, epoch, since, noted)) in open.iter_mut() {
            match worker.answer(&[(question, *epoch)]).and_then(|mut r| r.pop().ok_or_else(|| "no answer".to_owned())) {
                Ok(resume) => {
                    if since.elapsed() >= NOTE_EVERY {
                        tracing::info!(
                            pipeline = %worker.health.pipeline(),
                            %task,
                            waited_ms = since.elapsed().as_millis() as u64,
                            "where the task resumes is known now"
                        );
                    }
                    if answers.send(resume).is_err() {
                        return;
                    }
                    done.push(task);
                }
                Err(reason) => {
                    if noted.elapsed() >= NOTE_EVERY {
                        *noted = Instant::now();
                        tracing::warn!(
                            pipeline = %worker.health.pipeline(),
                            %task,
                            waited_ms = since.elapsed().as_millis() as u64,
                            %reason,
                            "waiting to learn where the task resumes (committed offsets and changelog end); asking again"
                        );
                    }
                }
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
        for task in done {
            open.remove(&task);
        }
        if !open.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
