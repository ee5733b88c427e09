//! The grant tables on etcd (issue 11, item 8). Per host, under
//! `<prefix>/grants/<host>/`: `table` (the body; its etcd `version` is the
//! revision), `seq` (the newest log seq given) and `log/<seq, 20 digits>`
//! (one JSON line each). A commit is one Txn: compare the table's version
//! (and the counter's, read just before), put the table, the lines and the
//! counter.

use crate::keys::range_end;
use crate::{kvs, EtcdStore};
use bulkhead_store::{GrantLogEntry, GrantTableDoc, Result, StoreError};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use serde::{Deserialize, Serialize};

/// etcd's default `--max-txn-ops`: the most operations one Txn may hold.
const MAX_TXN_OPS: usize = 128;

/// Log lines one commit may carry: its Txn also puts the table and the counter.
const MAX_LINES: usize = MAX_TXN_OPS - 2;

/// Lines read per range request when pruning, well under gRPC's message limit.
const PAGE: i64 = 512;

/// One log line as stored.
#[derive(Serialize, Deserialize)]
struct Line {
    seq: u64,
    at_ms: u64,
    event: String,
}

fn corrupt(host: &str, reason: String) -> StoreError {
    StoreError::Corrupt {
        name: format!("grants/{host}"),
        reason,
    }
}

impl EtcdStore {
    fn decode_line(&self, host: &str, kv: &KeyValue) -> Result<Line> {
        let line: Line = serde_json::from_slice(kv.value())
            .map_err(|e| corrupt(host, format!("log line: {e}")))?;
        if kv.key() != self.keys.grant_line(host, line.seq).as_bytes() {
            return Err(corrupt(
                host,
                format!(
                    "log line {} under the key {:?}",
                    line.seq,
                    String::from_utf8_lossy(kv.key())
                ),
            ));
        }
        Ok(line)
    }

    /// The counter's value and etcd version (0, 0 when no line was ever written).
    async fn grant_seq(&self, op: &'static str, host: &str) -> Result<(u64, i64)> {
        let (kvs, _) = self
            .range(op, self.keys.grant_seq(host), GetOptions::new())
            .await?;
        let Some(kv) = kvs.first() else {
            return Ok((0, 0));
        };
        let seq = std::str::from_utf8(kv.value())
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt(host, "the log counter is not a number".into()))?;
        Ok((seq, kv.version()))
    }

    pub(crate) async fn etcd_grant_table(&self, host: &str) -> Result<Option<GrantTableDoc>> {
        let (kvs, _) = self
            .range(
                "grant_table",
                self.keys.grant_table(host),
                GetOptions::new(),
            )
            .await?;
        Ok(kvs.first().map(|kv| GrantTableDoc {
            body: kv.value().to_vec(),
            revision: kv.version() as u64,
        }))
    }

    pub(crate) async fn etcd_commit_grant_table(
        &self,
        host: &str,
        expected: u64,
        body: &[u8],
        log: &[(u64, String)],
    ) -> Result<u64> {
        let op = "commit_grant_table";
        StoreError::check_grant_host(host)?;
        if log.len() > MAX_LINES {
            return Err(StoreError::Invalid {
                name: format!("grants/{host}"),
                reason: format!(
                    "{} log lines in one commit; etcd takes at most {MAX_LINES}",
                    log.len()
                ),
            });
        }
        let (table, counter) = (self.keys.grant_table(host), self.keys.grant_seq(host));
        let attempts = self.opts.admit_attempts.max(1);
        for attempt in 1..=attempts {
            let (last, counter_version) = self.grant_seq(op, host).await?;
            let mut then = vec![TxnOp::put(table.clone(), body, None)];
            for (seq, (at_ms, event)) in (last + 1..).zip(log) {
                let line = Line {
                    seq,
                    at_ms: *at_ms,
                    event: event.clone(),
                };
                then.push(TxnOp::put(
                    self.keys.grant_line(host, seq),
                    crate::encode(&line),
                    None,
                ));
            }
            if !log.is_empty() {
                let newest = last + log.len() as u64;
                then.push(TxnOp::put(counter.clone(), newest.to_string(), None));
            }
            let when = [
                Compare::version(table.clone(), CompareOp::Equal, expected as i64),
                Compare::version(counter.clone(), CompareOp::Equal, counter_version),
            ];
            let why = [TxnOp::get(
                table.clone(),
                Some(GetOptions::new().with_keys_only()),
            )];
            let resp = self
                .txn(op, Txn::new().when(when).and_then(then).or_else(why))
                .await?;
            if resp.succeeded() {
                // The compare held the version at `expected`; the put made it one more.
                return Ok(expected + 1);
            }
            let found = kvs(&resp.op_responses(), 0)
                .first()
                .map_or(0, |kv| kv.version() as u64);
            if found != expected {
                return Err(StoreError::grant_conflict(host, expected, found));
            }
            // Only a commit moves the counter and it moves the table too, so
            // this is a commit that landed between our read and our Txn.
            tracing::debug!(host, attempt, "grant log counter moved; reading it again");
        }
        Err(StoreError::Unavailable {
            op,
            message: format!("the grant log counter moved during each of {attempts} attempts"),
        })
    }

    pub(crate) async fn etcd_grant_log(
        &self,
        host: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<GrantLogEntry>> {
        // etcd reads a limit of 0 as "no limit".
        let Some(first) = after.checked_add(1).filter(|_| limit > 0) else {
            return Ok(Vec::new());
        };
        let opts = GetOptions::new()
            .with_range(range_end(&self.keys.grant_log(host)))
            .with_sort(SortTarget::Key, SortOrder::Ascend)
            .with_limit(limit.min(i64::MAX as usize) as i64);
        let (kvs, _) = self
            .range("grant_log", self.keys.grant_line(host, first), opts)
            .await?;
        kvs.iter()
            .map(|kv| {
                let l = self.decode_line(host, kv)?;
                Ok(GrantLogEntry {
                    seq: l.seq,
                    at_ms: l.at_ms,
                    event: l.event,
                })
            })
            .collect()
    }

    /// Every line of `host`'s log as `(key, at_ms)`, oldest first, read a page at a time.
    async fn grant_lines(&self, op: &'static str, host: &str) -> Result<Vec<(String, u64)>> {
        let end = range_end(&self.keys.grant_log(host));
        let mut from = self.keys.grant_log(host);
        let mut out = Vec::new();
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_sort(SortTarget::Key, SortOrder::Ascend)
                .with_limit(PAGE);
            let (kvs, _) = self.range(op, from.clone(), opts).await?;
            for kv in &kvs {
                let line = self.decode_line(host, kv)?;
                out.push((self.keys.grant_line(host, line.seq), line.at_ms));
            }
            match out.last() {
                // The smallest key after the last one read.
                Some((key, _)) if kvs.len() as i64 == PAGE => from = format!("{key}\0"),
                _ => return Ok(out),
            }
        }
    }

    pub(crate) async fn etcd_prune_grant_log(
        &self,
        host: &str,
        before_ms: u64,
        keep: usize,
    ) -> Result<u64> {
        let op = "prune_grant_log";
        let lines = self.grant_lines(op, host).await?;
        let old = &lines[..lines.len().saturating_sub(keep)];
        // Runs of neighbouring lines to drop, each one range delete. No key
        // falls between two neighbours later: new lines get higher seqs.
        let mut runs: Vec<(&str, &str)> = Vec::new();
        let mut in_run = false;
        for (key, at_ms) in old {
            match (*at_ms < before_ms, in_run, runs.last_mut()) {
                (true, true, Some(run)) => run.1 = key,
                (true, _, _) => runs.push((key, key)),
                (false, _, _) => {}
            }
            in_run = *at_ms < before_ms;
        }
        let mut gone = 0;
        for chunk in runs.chunks(MAX_TXN_OPS) {
            let ops: Vec<_> = chunk
                .iter()
                .map(|(first, last)| {
                    TxnOp::delete(
                        *first,
                        Some(DeleteOptions::new().with_range(format!("{last}\0"))),
                    )
                })
                .collect();
            let resp = self.txn(op, Txn::new().and_then(ops)).await?;
            for r in resp.op_responses() {
                if let TxnOpResponse::Delete(d) = r {
                    gone += d.deleted() as u64;
                }
            }
        }
        Ok(gone)
    }
}
