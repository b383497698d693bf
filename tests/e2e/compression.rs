//! Every topic a Kafka producer can write is readable: an input topic holding
//! batches compressed with gzip, snappy, lz4 and zstd (and none) is processed
//! exactly; the pipeline's own writes are compressed as its `compression` setting
//! says (checked in the broker's log segments), and a restart on an empty state
//! directory restores from the compressed changelog.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::support::*;

const CODECS: [&str; 5] = ["gzip", "snappy", "lz4", "zstd", "none"];

/// The compression codecs (Kafka's attribute bits: 0 none, 1 gzip, 2 snappy,
/// 3 lz4, 4 zstd) of the data batches in `topic`'s log segments on the test broker.
fn batch_codecs(topic: &str) -> Result<BTreeSet<u8>> {
    let data = match std::env::var("WEIR_KAFKA_DIR") {
        Ok(dir) => PathBuf::from(dir).join("data"),
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("no root")?.join(".kafka/data"),
    };
    let mut codecs = BTreeSet::new();
    for entry in std::fs::read_dir(&data).with_context(|| format!("the test broker's data in {}", data.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name.rsplit_once('-').is_some_and(|(t, p)| t == topic && p.parse::<u32>().is_ok()) {
            continue;
        }
        for segment in std::fs::read_dir(&path)? {
            let segment = segment?.path();
            if segment.extension().is_some_and(|e| e == "log") {
                let bytes = std::fs::read(&segment)?;
                let mut at = 0usize;
                // Batch: base offset (8), length (4), leader epoch (4), magic (1),
                // crc (4), attributes (2, bit 5 = control).
                while at + 23 <= bytes.len() {
                    let length = i32::from_be_bytes(bytes[at + 8..at + 12].try_into()?) as usize;
                    let attributes = u16::from_be_bytes(bytes[at + 21..at + 23].try_into()?);
                    if attributes & 0x20 == 0 {
                        codecs.insert((attributes & 0x07) as u8);
                    }
                    at += 12 + length;
                }
            }
        }
    }
    Ok(codecs)
}

#[test]
fn every_codec_is_read_and_what_weir_writes_is_compressed_as_configured() -> Result<()> {
    let app = unique("codecs");
    let (input, output) = (format!("{app}-trades"), format!("{app}-out"));
    create_topic(&input, 2)?;
    for (i, codec) in CODECS.iter().enumerate() {
        let start = GEN_START_MS + i as i64 * 10_000;
        let status = gen_trades_command(&bootstrap(), &input, 5_000, 20, 2, 500, 0, start)?
            .args(["--compression", codec])
            .env("RUST_LOG", "warn")
            .status()?;
        if !status.success() {
            bail!("producing {codec} batches failed");
        }
    }
    // The batches are in the broker's segment files once acknowledged; awaited
    // (up to 30 s) rather than read once, as CI once saw none on the first read.
    let every = BTreeSet::from([0, 1, 2, 3, 4]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut written = batch_codecs(&input)?;
    while written != every && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        written = batch_codecs(&input)?;
    }
    assert_eq!(written, every, "the input must hold a batch of every codec");

    let dir = tempfile::tempdir()?;
    let run = |state: &str| -> Result<Vec<String>> {
        let mut args = pipeline_args("stock-stats", &app, &input, &output, &dir.path().join(state))?;
        args.extend(["--grace-ms", "2000", "--compression", "zstd", "--instance-id", "codecs"].map(String::from));
        Ok(args)
    };
    let log = dir.path().join("weir.log");
    let mut weir = spawn_weir(&run("a")?, &log)?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(180))?;
    terminate(&mut weir)?;
    assert_eq!(batch_codecs(&output)?, BTreeSet::from([4]), "output batches are zstd");
    assert_eq!(batch_codecs(&format!("{app}-windows-changelog"))?, BTreeSet::from([4]), "changelog batches are zstd");

    // More trades, into windows still open, and a host with no state: it
    // restores them from the zstd changelog.
    gen_trades_at(&input, 5_000, 20, 2, 500, 0, GEN_START_MS + 4 * 10_000 + 2_500)?;
    let mut weir = spawn_weir(&run("b")?, &log)?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(180))?;
    terminate(&mut weir)?;
    let text = std::fs::read_to_string(&log)?;
    let restored = restored_records(&text);
    assert!(restored > 0, "the second host must restore from the changelog:\n{text}");
    assert_same(&last_results(&read_all(&output)?)?, &recompute(&read_all(&input)?, 2_000));
    Ok(())
}
