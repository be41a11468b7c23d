//! Background work: the audit key, batch-signing the audit chain, ingesting the signer's log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use certgate_proto::signer::{Algorithm, KeyRole, KeyType};
use serde_json::json;

use crate::audit::{AuditEntry, signed_message};
use crate::error::{CoreError, Result};
use crate::signer_client::Signer;
use crate::store::Store;

/// Meta key holding the audit public key (SPKI DER, hex).
pub const META_AUDIT_KEY: &str = "audit_public_key";
const META_INGEST_OFFSET: &str = "signer_audit_offset";
const META_INGEST_PREV: &str = "signer_audit_prev";
const META_INGEST_SEQ: &str = "signer_audit_seq";

/// Makes sure the AUDIT key exists in the signer and its public key is pinned in the store. A
/// different key than the pinned one is refused: old signatures would no longer verify.
pub async fn ensure_audit_key(store: &dyn Store, signer: &Signer, key_id: &str) -> Result<()> {
    let info = signer
        .ensure_key(key_id, "", KeyRole::Audit, KeyType::Ed25519Key, None)
        .await?;
    let spki_hex = hex::encode(&info.public_key_der);
    match store.meta_get(META_AUDIT_KEY)? {
        Some(pinned) if pinned != spki_hex => Err(CoreError::Internal(format!(
            "signer key {key_id:?} is not the audit key pinned in the store"
        ))),
        Some(_) => Ok(()),
        None => store.meta_set(META_AUDIT_KEY, &spki_hex),
    }
}

/// Signs every unsigned audit record (in batches of up to 1000). Returns how many were signed.
pub async fn sign_pending(store: &dyn Store, signer: &Signer, key_id: &str) -> Result<usize> {
    let mut total = 0;
    loop {
        let pending = store.unsigned_audit(1000)?;
        if pending.is_empty() {
            return Ok(total);
        }
        let messages = pending.iter().map(|(_, h)| signed_message(h)).collect();
        let sigs = signer
            .sign_batch(key_id, Algorithm::Ed25519, messages)
            .await?;
        if sigs.len() != pending.len() {
            return Err(CoreError::SignerUnavailable(
                "signature count mismatch".into(),
            ));
        }
        let pairs: Vec<(u64, Vec<u8>)> = pending.iter().map(|(s, _)| *s).zip(sigs).collect();
        total += pairs.len();
        store.set_audit_signatures(&pairs)?;
    }
}

/// Ingests new lines of the signer's JSONL audit log: checks each line's `prev` against the
/// SHA-256 of the line before and its `seq`, then appends one `signer.audit` checkpoint record
/// (first and last seq, last line hash) to the core chain, anchoring the signer's log in ours.
/// A broken signer chain appends `signer.audit_broken` and stops ingesting.
pub fn ingest_signer_log(store: &dyn Store, path: &Path) -> Result<usize> {
    use std::io::{Read, Seek, SeekFrom};
    let io_err = |e: std::io::Error| CoreError::Store(format!("signer audit log: {e}"));
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(e)),
    };
    let len = file.metadata().map_err(io_err)?.len();
    let offset: u64 = store
        .meta_get(META_INGEST_OFFSET)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if offset > len {
        store.append_audit(&AuditEntry::new(
            "signer.audit_broken",
            "",
            "core",
            json!({"reason": "signer audit log shrank", "offset": offset, "len": len}),
        ))?;
        return Err(CoreError::Internal("signer audit log shrank".into()));
    }
    // Read only what was appended since the last run: the log grows with every signer RPC and a
    // whole-file read every interval would grow with it.
    file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    let mut rest = Vec::new();
    file.read_to_end(&mut rest).map_err(io_err)?;
    let offset = usize::try_from(offset)
        .map_err(|_| CoreError::Internal("signer audit log offset overflows usize".into()))?;
    let mut prev = store
        .meta_get(META_INGEST_PREV)?
        .unwrap_or_else(|| "0".repeat(64));
    let mut seq: u64 = store
        .meta_get(META_INGEST_SEQ)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let first_seq = seq + 1;
    let mut pos = offset;
    let mut lines = 0;
    for line in rest.split_inclusive(|b| *b == b'\n') {
        if !line.ends_with(b"\n") {
            break; // a line still being written
        }
        let body = &line[..line.len() - 1];
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| CoreError::Internal(format!("signer audit line: {e}")))?;
        let line_prev = v.get("prev").and_then(|p| p.as_str()).unwrap_or("");
        let line_seq = v.get("seq").and_then(|s| s.as_u64()).unwrap_or(0);
        if line_prev != prev || line_seq != seq + 1 {
            store.append_audit(&AuditEntry::new(
                "signer.audit_broken",
                "",
                "core",
                json!({"seq": line_seq, "expected_seq": seq + 1}),
            ))?;
            return Err(CoreError::Internal(format!(
                "signer audit log broken at seq {line_seq}"
            )));
        }
        prev = hex::encode(digest::digest(&digest::SHA256, body));
        seq = line_seq;
        pos += line.len();
        lines += 1;
    }
    if lines > 0 {
        store.append_audit(&AuditEntry::new(
            "signer.audit",
            "",
            "core",
            json!({"first_seq": first_seq, "last_seq": seq, "last_line_sha256": prev, "lines": lines}),
        ))?;
        store.meta_set(META_INGEST_OFFSET, &pos.to_string())?;
        store.meta_set(META_INGEST_PREV, &prev)?;
        store.meta_set(META_INGEST_SEQ, &seq.to_string())?;
    }
    Ok(lines)
}

/// Runs forever: pins the audit key once the signer answers, then every `interval` signs pending
/// audit records and every `ingest_interval` ingests the signer log. Failures are logged and
/// retried next round.
pub async fn run_audit_loop(
    store: Arc<dyn Store>,
    signer: Signer,
    key_id: String,
    signer_log: Option<PathBuf>,
    interval: Duration,
    ingest_interval: Duration,
) {
    let mut key_ready = false;
    let mut last_ingest: Option<tokio::time::Instant> = None;
    loop {
        if !key_ready {
            match ensure_audit_key(store.as_ref(), &signer, &key_id).await {
                Ok(()) => key_ready = true,
                Err(e) => tracing::warn!(error = %e, "audit key not ready"),
            }
        }
        let due = last_ingest.is_none_or(|t| t.elapsed() >= ingest_interval);
        if let Some(path) = &signer_log
            && due
        {
            last_ingest = Some(tokio::time::Instant::now());
            if let Err(e) = ingest_signer_log(store.as_ref(), path) {
                tracing::warn!(error = %e, "signer audit ingestion failed");
            }
        }
        if key_ready && let Err(e) = sign_pending(store.as_ref(), &signer, &key_id).await {
            tracing::warn!(error = %e, "audit signing failed");
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn signer_log(n: u64) -> Vec<String> {
        let mut prev = "0".repeat(64);
        (1..=n)
            .map(|seq| {
                let line = format!(r#"{{"v":1,"seq":{seq},"prev":"{prev}","op":"Sign"}}"#);
                prev = hex::encode(digest::digest(&digest::SHA256, line.as_bytes()));
                line
            })
            .collect()
    }

    #[test]
    fn ingests_new_signer_lines_once_and_detects_a_broken_signer_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let store = SqliteStore::in_memory().unwrap();
        let lines = signer_log(5);
        std::fs::write(&path, lines[..3].join("\n") + "\n").unwrap();
        assert_eq!(ingest_signer_log(&store, &path).unwrap(), 3);
        assert_eq!(ingest_signer_log(&store, &path).unwrap(), 0, "nothing new");
        // a torn last line is left for the next round
        std::fs::write(&path, lines.join("\n") + "\n" + "{\"v\":1").unwrap();
        assert_eq!(ingest_signer_log(&store, &path).unwrap(), 2);
        let checkpoints = store
            .audit_records()
            .unwrap()
            .into_iter()
            .filter(|r| r.kind == "signer.audit")
            .count();
        assert_eq!(checkpoints, 2);

        // an edited earlier line is not re-read, but a new line that does not link is detected
        let mut bad = lines.clone();
        bad.push(r#"{"v":1,"seq":6,"prev":"00","op":"Sign"}"#.into());
        std::fs::write(&path, bad.join("\n") + "\n").unwrap();
        assert!(ingest_signer_log(&store, &path).is_err());
        assert!(
            store
                .audit_records()
                .unwrap()
                .iter()
                .any(|r| r.kind == "signer.audit_broken")
        );
    }
}
