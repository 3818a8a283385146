//! Balances in sled: the append-only `ledger` and each capped key's spend per calendar month
//! (`key_spend`). `crate::ledger` decides; this file only keeps.
//!
//! No sled transactions (see `executions.rs`). Each entry of a project's ledger carries the
//! project's balance and held amount after it, so the newest entry *is* the account and one
//! insert changes it atomically. A hold is one entry; its settle or release another, written
//! after the execution's terminal record (sled's log is durable as a prefix: a later write that
//! survived implies every earlier one did), so recovery finds every hold a crash left open in
//! the ledger's tail ([`Store::ledger_tail`]) and the execution's end in its record.
//!
//! Keys: `ledger` project ‖ 0 ‖ seq BE; `key_spend` key id ‖ 0 ‖ month (`YYYYMM` BE u32).

use serde::{Deserialize, Serialize};

use super::{joined, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    TopUp,
    Hold,
    Settle,
    Release,
}

/// One line of a project's ledger (stored in the binary layout below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub seq: u64,
    pub kind: EntryKind,
    /// Top-up: added; hold: reserved; settle: charged; release: the hold given back.
    pub amount_micros: u64,
    pub execution_id: Option<String>,
    pub key_id: Option<String>,
    /// Settle: the hold it closes (0 for a charge without a hold, e.g. embeddings).
    pub hold_micros: u64,
    /// Settle: what the answer cost beyond what the balance could pay (never charged).
    pub uncollected_micros: u64,
    pub at_ms: u64,
    /// The account after this entry.
    pub balance_micros: u64,
    pub held_micros: u64,
}

impl LedgerEntry {
    /// The entry after seq `after`: the account is `balance` and `held` once it is applied.
    pub fn next_after(
        after: u64,
        kind: EntryKind,
        amount: u64,
        balance: u64,
        held: u64,
    ) -> LedgerEntry {
        LedgerEntry {
            seq: after + 1,
            kind,
            amount_micros: amount,
            execution_id: None,
            key_id: None,
            hold_micros: 0,
            uncollected_micros: 0,
            at_ms: crate::domain::now_ms(),
            balance_micros: balance,
            held_micros: held,
        }
    }
}

/// A hold not yet settled or released (kept in memory; durable as its ledger entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRecord {
    pub project_id: String,
    pub key_id: String,
    pub amount_micros: u64,
    /// The ledger entry that placed it; `None` for a project without a balance (the hold only
    /// counts against the key's monthly cap).
    pub seq: Option<u64>,
}

fn ledger_key(project: &str, seq: u64) -> Vec<u8> {
    joined(project, &seq.to_be_bytes())
}

fn spend_key(key_id: &str, month: u32) -> Vec<u8> {
    joined(key_id, &month.to_be_bytes())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> sled::Error {
    sled::Error::Unsupported(format!("corrupt {what}: {e}"))
}

// Entries and rows are stored in a small fixed binary layout rather than JSON: a ledger is
// appended to on every submit and every end, and sled rewrites a leaf's whole contents now and
// then, so bytes per entry are work per request (JSON made an entry ~260 bytes, this ~110).
// Layout version byte first, then big-endian integers, then length-prefixed strings.
const CODEC_VERSION: u8 = 1;

fn kind_byte(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::TopUp => 0,
        EntryKind::Hold => 1,
        EntryKind::Settle => 2,
        EntryKind::Release => 3,
    }
}

fn put_str(out: &mut Vec<u8>, s: Option<&str>) {
    let s = s.unwrap_or_default();
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads the fields back in the order they were written.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn str(&mut self) -> Option<Option<String>> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(self.take(len)?).ok()?;
        Some((!s.is_empty()).then(|| s.to_string()))
    }
}

pub(crate) fn encode_entry(e: &LedgerEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(72 + 64);
    out.push(CODEC_VERSION);
    out.push(kind_byte(e.kind));
    for n in [
        e.seq,
        e.amount_micros,
        e.hold_micros,
        e.uncollected_micros,
        e.at_ms,
        e.balance_micros,
        e.held_micros,
    ] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    put_str(&mut out, e.execution_id.as_deref());
    put_str(&mut out, e.key_id.as_deref());
    out
}

pub(crate) fn decode_entry(bytes: &[u8]) -> sled::Result<LedgerEntry> {
    let mut r = Reader(bytes);
    let entry = (|| {
        if r.u8()? != CODEC_VERSION {
            return None;
        }
        let kind = match r.u8()? {
            0 => EntryKind::TopUp,
            1 => EntryKind::Hold,
            2 => EntryKind::Settle,
            3 => EntryKind::Release,
            _ => return None,
        };
        Some(LedgerEntry {
            kind,
            seq: r.u64()?,
            amount_micros: r.u64()?,
            hold_micros: r.u64()?,
            uncollected_micros: r.u64()?,
            at_ms: r.u64()?,
            balance_micros: r.u64()?,
            held_micros: r.u64()?,
            execution_id: r.str()?,
            key_id: r.str()?,
        })
    })();
    entry.ok_or_else(|| corrupt("ledger entry", "unreadable bytes"))
}

impl Store {
    /// Appends `entry` to its project's ledger (its `seq` decides the place).
    pub fn append_ledger(&self, project: &str, entry: &LedgerEntry) -> sled::Result<()> {
        let value = encode_entry(entry);
        self.ledger.insert(ledger_key(project, entry.seq), value)?;
        Ok(())
    }

    /// The newest entry of every project that has a ledger: the accounts.
    pub fn ledger_accounts(&self) -> sled::Result<Vec<(String, LedgerEntry)>> {
        let mut accounts = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        // One probe per project: the last key under its prefix, then skip past the prefix.
        while let Some((key, _)) = self.ledger.range(from.as_slice()..).next().transpose()? {
            let Some(end) = key.iter().position(|&b| b == 0) else {
                return Err(corrupt("ledger key", "no separator"));
            };
            let project = String::from_utf8_lossy(&key[..end]).into_owned();
            let mut next = key[..end].to_vec();
            next.push(1);
            let last = self
                .ledger
                .range(key[..=end].to_vec()..next.clone())
                .next_back()
                .transpose()?
                .expect("the prefix has the key just read");
            accounts.push((project, decode_entry(&last.1)?));
            from = next;
        }
        Ok(accounts)
    }

    /// The project's entries written at or after `since_ms` (by their time), oldest first:
    /// read backwards from the newest, so the cost is the tail's length, not the ledger's.
    pub fn ledger_tail(&self, project: &str, since_ms: u64) -> sled::Result<Vec<LedgerEntry>> {
        let start = ledger_key(project, 0);
        let end = joined(project, &[0xff; 9]);
        let mut tail = Vec::new();
        for item in self.ledger.range(start..end).rev() {
            let entry = decode_entry(&item?.1)?;
            if entry.at_ms < since_ms {
                break;
            }
            tail.push(entry);
        }
        tail.reverse();
        Ok(tail)
    }

    /// Up to `limit` entries after seq `after` (newest last), and whether more follow.
    pub fn ledger_page(
        &self,
        project: &str,
        after: Option<u64>,
        limit: usize,
    ) -> sled::Result<(Vec<LedgerEntry>, bool)> {
        let start = ledger_key(project, after.map_or(0, |s| s + 1));
        let end = joined(project, &[0xff; 9]);
        let mut entries = Vec::with_capacity(limit);
        for item in self.ledger.range(start..end) {
            if entries.len() == limit {
                return Ok((entries, true));
            }
            entries.push(decode_entry(&item?.1)?);
        }
        Ok((entries, false))
    }

    /// What `key_id` was charged in `month` (`YYYYMM`).
    pub fn key_spend(&self, key_id: &str, month: u32) -> sled::Result<u64> {
        Ok(self
            .key_spend
            .get(spend_key(key_id, month))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    pub fn put_key_spend(&self, key_id: &str, month: u32, micros: u64) -> sled::Result<()> {
        self.key_spend
            .insert(spend_key(key_id, month), &micros.to_be_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, kind: EntryKind, amount: u64, exec: Option<&str>) -> LedgerEntry {
        LedgerEntry {
            seq,
            kind,
            amount_micros: amount,
            execution_id: exec.map(String::from),
            key_id: None,
            hold_micros: 0,
            uncollected_micros: 0,
            at_ms: 1,
            balance_micros: 0,
            held_micros: 0,
        }
    }

    #[test]
    fn entries_read_back_as_written_and_garbage_is_refused() {
        let mut e = entry(7, EntryKind::Settle, 1_234, Some("exec_x"));
        e.key_id = Some("key_é".into());
        e.hold_micros = 10_000;
        e.uncollected_micros = 5;
        e.balance_micros = u64::MAX;
        assert_eq!(decode_entry(&encode_entry(&e)).unwrap(), e);
        let top_up = entry(1, EntryKind::TopUp, 9, None);
        assert_eq!(decode_entry(&encode_entry(&top_up)).unwrap(), top_up);
        let bytes = encode_entry(&e);
        assert!(decode_entry(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_entry(b"{\"seq\": 1}").is_err());
    }

    #[tokio::test]
    async fn accounts_are_the_newest_entry_of_each_project() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (project, seq) in [("a", 1), ("a", 2), ("ab", 1), ("b", 1), ("b", 2), ("b", 3)] {
            store
                .append_ledger(project, &entry(seq, EntryKind::TopUp, seq, None))
                .unwrap();
        }
        let accounts: Vec<(String, u64)> = store
            .ledger_accounts()
            .unwrap()
            .into_iter()
            .map(|(p, e)| (p, e.seq))
            .collect();
        assert_eq!(
            accounts,
            [("a".into(), 2), ("ab".into(), 1), ("b".into(), 3)]
        );
        let (page, more) = store.ledger_page("b", Some(1), 1).unwrap();
        assert_eq!((page[0].seq, more), (2, true));
        let (page, more) = store.ledger_page("b", Some(2), 5).unwrap();
        assert_eq!((page.len(), more), (1, false));
    }

    #[tokio::test]
    async fn the_tail_is_what_was_written_since_a_time_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (seq, at) in [(1, 10), (2, 20), (3, 30), (4, 40)] {
            let mut e = entry(seq, EntryKind::Hold, 1, Some("e"));
            e.at_ms = at;
            store.append_ledger("p", &e).unwrap();
        }
        store
            .append_ledger("q", &entry(1, EntryKind::TopUp, 1, None))
            .unwrap();
        let seqs = |since| -> Vec<u64> {
            store
                .ledger_tail("p", since)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        assert_eq!(seqs(25), [3, 4]);
        assert_eq!(seqs(0), [1, 2, 3, 4]);
        assert!(seqs(41).is_empty());
    }
}
