//! The signer's audit log: exactly one JSON line per RPC, granted or denied (invariant I-7).
//!
//! Each record carries `prev`, the hex SHA-256 of the previous line's bytes (without its newline;
//! 64 zeros for the first record of a file), and a `seq` that increases by one, so [`verify`]
//! detects an edited, dropped, inserted or reordered line. Nothing secret is written: the caller
//! identity, the operation, key id, algorithm, decision, rule and reason, and the SHA-256 of what
//! was (or would have been) signed.
//!
//! Durability: the file is opened with `O_APPEND`; each record is written with one `write(2)`
//! and flushed from the process's buffer before the RPC answers, but not `fsync`ed. A process
//! crash loses nothing that was answered; a kernel crash or power loss can lose the last records
//! the page cache had not written back (the core's own audit log records the signatures it
//! received). See docs/signer.md.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use certgate_proto::{Caller, ErrorKind, RpcError};

use crate::algo::sha256;

/// Record format version.
pub const VERSION: u32 = 1;

/// One RPC's outcome, to be recorded.
#[derive(Debug)]
pub struct AuditEvent<'a> {
    /// Who called.
    pub caller: &'a Caller,
    /// The RPC: `Sign`, `SignBatch`, `PublicKey`, `ListKeys`, `GenerateKey`.
    pub op: &'static str,
    /// Key id (empty when the call named none).
    pub key_id: &'a str,
    /// Algorithm name (empty when none).
    pub algorithm: &'a str,
    /// `Ok` when granted, else the error returned to the caller.
    pub outcome: Result<(), &'a RpcError>,
    /// Number of messages (1 for Sign, the batch size for SignBatch, 0 otherwise).
    pub count: u64,
    /// SHA-256 of the signed message; for a batch, SHA-256 over the concatenated item digests;
    /// for GenerateKey, of the new public key.
    pub digest: Option<[u8; 32]>,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Eq)]
struct Record {
    v: u32,
    seq: u64,
    time: String,
    prev: String,
    caller: String,
    op: String,
    key_id: String,
    algorithm: String,
    decision: String,
    kind: String,
    rule: String,
    reason: String,
    count: u64,
    digest: String,
}

fn kind_name(kind: ErrorKind) -> &'static str {
    kind.as_str_name()
}

/// Encodes one record line (without the newline). Pure; used by [`AuditLog`] and tests.
pub fn encode(seq: u64, prev: &[u8; 32], time: &str, ev: &AuditEvent<'_>) -> Vec<u8> {
    let (decision, kind, rule, reason) = match ev.outcome {
        Ok(()) => ("granted", "", "", ""),
        Err(e) => (
            "denied",
            kind_name(e.kind),
            e.rule.as_str(),
            e.message.as_str(),
        ),
    };
    let record = Record {
        v: VERSION,
        seq,
        time: time.to_owned(),
        prev: hex::encode(prev),
        caller: ev.caller.to_string(),
        op: ev.op.to_owned(),
        key_id: ev.key_id.to_owned(),
        algorithm: ev.algorithm.to_owned(),
        decision: decision.to_owned(),
        kind: kind.to_owned(),
        rule: rule.to_owned(),
        reason: reason.to_owned(),
        count: ev.count,
        digest: ev.digest.map(hex::encode).unwrap_or_default(),
    };
    // serializing a struct of strings and integers cannot fail
    serde_json::to_vec(&record).unwrap_or_default()
}

/// Checks a whole audit file's chain: every line parses, `seq` starts at 1 and increases by one,
/// and every `prev` is the SHA-256 of the line before. Returns the number of records.
pub fn verify(contents: &[u8]) -> Result<u64, String> {
    let mut prev = [0u8; 32];
    let mut expected_seq = 1;
    for (i, line) in contents.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let r: Record = serde_json::from_slice(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if r.seq != expected_seq {
            return Err(format!(
                "line {}: seq {} where {expected_seq} was expected",
                i + 1,
                r.seq
            ));
        }
        if r.prev != hex::encode(prev) {
            return Err(format!(
                "line {}: prev does not match the previous record",
                i + 1
            ));
        }
        prev = sha256(line);
        expected_seq += 1;
    }
    Ok(expected_seq - 1)
}

struct State {
    out: BufWriter<File>,
    seq: u64,
    prev: [u8; 32],
}

/// The append-only audit file.
pub struct AuditLog {
    path: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

impl AuditLog {
    /// Opens (creating, mode 0600) the audit file for appending and continues its chain from its
    /// last record. A file whose last line is not a valid record (a torn write, an edit) is
    /// refused: the operator must look at it before the signer signs again.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let (seq, prev) = last_record(&mut file)?;
        Ok(Self {
            path: path.to_owned(),
            state: Mutex::new(State {
                out: BufWriter::with_capacity(64 * 1024, file),
                seq,
                prev,
            }),
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and flushes it to the file before returning.
    pub fn record(&self, ev: &AuditEvent<'_>) -> io::Result<()> {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let seq = st.seq + 1;
        let line = encode(seq, &st.prev, &now, ev);
        let mut buf = line.clone();
        buf.push(b'\n');
        st.out.write_all(&buf)?;
        st.out.flush()?;
        st.seq = seq;
        st.prev = sha256(&line);
        Ok(())
    }
}

fn last_record(file: &mut File) -> io::Result<(u64, [u8; 32])> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((0, [0u8; 32]));
    }
    let tail_len = len.min(1 << 20);
    file.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    file.take(tail_len).read_to_end(&mut tail)?;
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("audit log: {why}"));
    if tail.last() != Some(&b'\n') {
        return Err(bad("the last record is incomplete (torn write?)"));
    }
    let body = &tail[..tail.len() - 1];
    let start = body.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    if start == 0 && tail_len < len {
        return Err(bad("the last record is longer than 1 MiB"));
    }
    let line = &body[start..];
    let record: Record =
        serde_json::from_slice(line).map_err(|_| bad("the last line is not an audit record"))?;
    Ok((record.seq, sha256(line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(caller: &Caller) -> AuditEvent<'_> {
        AuditEvent {
            caller,
            op: "Sign",
            key_id: "k1",
            algorithm: "ECDSA_P256_SHA256",
            outcome: Ok(()),
            count: 1,
            digest: Some(sha256(b"m")),
        }
    }

    #[test]
    fn records_chain_across_reopen_and_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let caller = Caller::Uid(1000);
        let log = AuditLog::open(&path).expect("open");
        log.record(&granted(&caller)).expect("record");
        let err = RpcError::policy("policy.issuing.ca_certificate", "no CA certs");
        log.record(&AuditEvent {
            outcome: Err(&err),
            ..granted(&caller)
        })
        .expect("record");
        drop(log);
        let log = AuditLog::open(&path).expect("reopen");
        log.record(&granted(&caller)).expect("record");
        let text = std::fs::read(&path).expect("read");
        assert_eq!(verify(&text), Ok(3));
        let lines: Vec<serde_json::Value> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("json"))
            .collect();
        assert_eq!(lines[1]["decision"], "denied");
        assert_eq!(lines[1]["rule"], "policy.issuing.ca_certificate");
        assert_eq!(lines[1]["kind"], "POLICY_REFUSED");
        assert_eq!(lines[2]["seq"], 3);
        assert_eq!(lines[0]["caller"], "uid:1000");
    }

    #[test]
    fn verify_detects_edit_gap_and_reorder() {
        let caller = Caller::Uid(1);
        let mut prev = [0u8; 32];
        let mut lines = vec![];
        for seq in 1..=3 {
            let line = encode(seq, &prev, "2026-01-01T00:00:00Z", &granted(&caller));
            prev = sha256(&line);
            lines.push(line);
        }
        let join = |ls: &[Vec<u8>]| {
            ls.iter()
                .flat_map(|l| [l.clone(), b"\n".to_vec()].concat())
                .collect::<Vec<u8>>()
        };
        assert_eq!(verify(&join(&lines)), Ok(3));
        let mut edited = lines.clone();
        edited[1] = String::from_utf8(edited[1].clone())
            .expect("utf8")
            .replace("k1", "k2")
            .into_bytes();
        assert!(verify(&join(&edited)).is_err());
        assert!(verify(&join(&[lines[0].clone(), lines[2].clone()])).is_err());
        assert!(
            verify(&join(&[
                lines[0].clone(),
                lines[2].clone(),
                lines[1].clone()
            ]))
            .is_err()
        );
    }

    #[test]
    fn torn_last_record_is_refused_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, b"{\"v\":1,\"seq\":1").expect("write");
        assert!(AuditLog::open(&path).is_err());
    }
}
