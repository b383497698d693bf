//! Bad records go to the dead-letter topic with the reason and their source, and
//! everything else stays exact.

use std::time::Duration;

use anyhow::Result;

use crate::support::*;

#[test]
fn malformed_records_are_dead_lettered_and_the_rest_stays_exact() -> Result<()> {
    let app = unique("dlq");
    let input = format!("{app}-trades");
    let output = format!("{app}-out");
    let dead = format!("{app}-dead");
    create_topic(&input, 1)?;
    let base = 1_700_000_000_000i64;
    let trade = |i: i64, side: &str| {
        format!(r#"{{"type":"{side}","ticker":"AAPL","price":{}.25,"size":{}}}"#, 100 + i % 7, 1 + i % 5)
    };
    let mut records: Vec<RawRecord> = Vec::new();
    for i in 0..2_000i64 {
        let ts = base + i * 10;
        let side = if i % 4 == 0 { "BID" } else { "ASK" };
        records.push((Some(b"AAPL".to_vec()), Some(trade(i, side).into_bytes()), ts));
        match i {
            // A malformed record with a far-future timestamp must not move stream
            // time (it would close every window).
            500 => records.push((Some(b"AAPL".to_vec()), Some(b"{not json".to_vec()), ts + 3_600_000)),
            900 => {
                records.push((Some(b"AAPL".to_vec()), Some(br#"{"type":"ASK","ticker":"AAPL","size":3}"#.to_vec()), ts))
            }
            1200 => records.push((None, Some(trade(i, "ASK").into_bytes()), ts)),
            _ => {}
        }
    }
    produce(&input, &records)?;
    let dir = tempfile::tempdir()?;
    let mut args = pipeline_args("stock-stats", &app, &input, &output, dir.path())?;
    args.extend(["--dead-letter-topic".to_string(), dead.clone()]);
    let mut weir = spawn_weir(&args, &dir.path().join("weir.log"))?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    terminate(&mut weir)?;

    let letters = read_all(&dead)?;
    assert_eq!(letters.len(), 3, "three bad records: {letters:#?}");
    let inputs = read_all(&input)?;
    let reasons: Vec<&str> = letters.iter().map(|l| l.headers["weir.error"].as_str()).collect();
    assert!(reasons.iter().any(|r| r.starts_with("invalid value: key must be a string")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("missing field `price`")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("no key")), "{reasons:?}");
    for letter in &letters {
        assert_eq!(letter.headers["weir.source.topic"], input);
        let offset: i64 = letter.headers["weir.source.offset"].parse()?;
        let source = inputs.iter().find(|r| r.offset == offset).expect("source offset exists");
        assert_eq!(source.value, letter.value, "the dead letter carries the original value");
        assert_eq!(letter.headers["weir.source.partition"], source.partition.to_string());
    }

    let want = recompute(&inputs, 0);
    let got = last_results(&read_all(&output)?)?;
    assert_same(&got, &want);
    Ok(())
}
