//! Project balances across nodes, exact: each project's ledger is a subject of stream
//! `SWITCHYARD_LEDGER` (`switchyard.ledger.<hex project>`), one message per entry, and an entry
//! is appended only if the subject still ends with the entry it was computed from (expected
//! last subject sequence). Two nodes holding against the same balance at once: one append
//! wins, the other reads the new last entry and checks again, so parallel submits anywhere
//! never hold more than the balance. Each node mirrors the stream into its local ledger (the
//! history API and the cached accounts read it there).
//!
//! Keys' monthly spend caps are exact the same way: a capped key's month is a KV entry
//! (`switchyard_key_months`, `<key>.<YYYYMM>`: spent, held) changed only by compare-and-set.
//!
//! Open holds are KV entries (`switchyard_holds`, by execution id): closing one first removes
//! it with a compare-and-set on its revision, so a hold is settled or released exactly once,
//! by whichever node ends its execution (or finds it ended after a takeover).

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::HeaderMap;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

use super::Cluster;
use crate::ledger::{Ledger, Refusal};
use crate::store::{decode_entry, encode_entry, EntryKind, LedgerEntry, Store};

pub const LEDGER_STREAM: &str = "SWITCHYARD_LEDGER";
pub(super) const LEDGER_PREFIX: &str = "switchyard.ledger.";

fn subject(project: &str) -> String {
    format!("{LEDGER_PREFIX}{}", hex::encode(project))
}

#[derive(Serialize, Deserialize)]
struct OpenHold {
    project_id: String,
    key_id: String,
    amount_micros: u64,
    /// Whether the project's ledger holds it (the project has a balance).
    #[serde(default = "yes")]
    in_ledger: bool,
    /// The month (`YYYYMM`) whose spend of the key holds it, when the key has a monthly cap.
    #[serde(default)]
    key_month: Option<u32>,
}

fn yes() -> bool {
    true
}

/// A capped key's spend in one month, and what its open holds reserve.
#[derive(Serialize, Deserialize, Default, Clone, Copy)]
struct KeyMonth {
    spent: u64,
    held: u64,
}

fn key_month_entry(key_id: &str, month: u32) -> String {
    format!("{key_id}.{month}")
}

fn entry(
    kind: EntryKind,
    after: &LedgerEntry,
    amount: u64,
    balance: u64,
    held: u64,
) -> LedgerEntry {
    LedgerEntry::next_after(after.seq, kind, amount, balance, held)
}

impl Cluster {
    /// The project's last entry (its account) and that message's stream sequence; `None` for
    /// a project without a balance.
    pub async fn account(&self, project: &str) -> anyhow::Result<(Option<LedgerEntry>, u64)> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self
            .ledger
            .get_last_raw_message_by_subject(&subject(project))
            .await
        {
            Ok(message) => Ok((Some(decode_entry(&message.payload)?), message.sequence)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok((None, 0)),
            Err(e) => Err(anyhow::anyhow!("reading the ledger of {project}: {e}")),
        }
    }

    /// Appends the entry `next` computes from the project's last one, again from the new last
    /// one whenever another node appended first. `next` answering `None` appends nothing.
    async fn append_entry(
        &self,
        project: &str,
        mut next: impl FnMut(Option<&LedgerEntry>) -> Option<LedgerEntry>,
    ) -> anyhow::Result<Option<LedgerEntry>> {
        loop {
            let (last, stream_seq) = self.account(project).await?;
            let Some(entry) = next(last.as_ref()) else {
                return Ok(None);
            };
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                stream_seq.to_string().as_str(),
            );
            let ack = self
                .js
                .publish_with_headers(subject(project), headers, encode_entry(&entry).into())
                .await?
                .await;
            match ack {
                Ok(_) => return Ok(Some(entry)),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Holds `amount` for `execution_id` against the project's balance (when it has one) and
    /// the key's monthly `cap` (when it has one). `Ok(false)`: neither applies, nothing held;
    /// `Err` inside: not covered, nothing held.
    pub async fn hold_spend(
        &self,
        project: &str,
        key_id: &str,
        execution_id: &str,
        amount: u64,
        cap: Option<u64>,
    ) -> anyhow::Result<Result<bool, Refusal>> {
        let mut refused = None;
        let appended = self
            .append_entry(project, |last| {
                let last = last?;
                let available = last.balance_micros.saturating_sub(last.held_micros);
                if available < amount {
                    refused = Some(Refusal::Balance {
                        available,
                        needed: amount,
                    });
                    return None;
                }
                let mut e = entry(
                    EntryKind::Hold,
                    last,
                    amount,
                    last.balance_micros,
                    last.held_micros + amount,
                );
                e.execution_id = Some(execution_id.into());
                e.key_id = Some(key_id.into());
                Some(e)
            })
            .await?;
        if let Some(refusal) = refused {
            return Ok(Err(refusal));
        }
        let mut open = OpenHold {
            project_id: project.into(),
            key_id: key_id.into(),
            amount_micros: amount,
            in_ledger: appended.is_some(),
            key_month: None,
        };
        if let Some(cap) = cap.filter(|&c| c > 0) {
            let month = crate::ledger::month_of(crate::domain::now_ms());
            let counted = self
                .update_key_month(key_id, month, |m| {
                    let used = m.spent + m.held;
                    if used.saturating_add(amount) > cap {
                        return Err(Refusal::KeyCap {
                            cap,
                            used,
                            needed: amount,
                        });
                    }
                    m.held += amount;
                    Ok(())
                })
                .await?;
            if let Err(refusal) = counted {
                if open.in_ledger {
                    // The balance covered it, the key's cap did not: give the hold back.
                    self.put_open_hold(execution_id, &open).await?;
                    self.close_hold(execution_id, None).await?;
                }
                return Ok(Err(refusal));
            }
            open.key_month = Some(month);
        }
        if !open.in_ledger && open.key_month.is_none() {
            return Ok(Ok(false));
        }
        self.put_open_hold(execution_id, &open).await?;
        Ok(Ok(true))
    }

    async fn put_open_hold(&self, execution_id: &str, open: &OpenHold) -> anyhow::Result<()> {
        self.holds
            .put(execution_id, serde_json::to_vec(open)?.into())
            .await?;
        Ok(())
    }

    /// Changes a key's month with `change` (see `update_json`).
    async fn update_key_month<E>(
        &self,
        key_id: &str,
        month: u32,
        mut change: impl FnMut(&mut KeyMonth) -> Result<(), E>,
    ) -> anyhow::Result<Result<(), E>> {
        let entry = key_month_entry(key_id, month);
        let changed = super::update_json(&self.key_months, &entry, |m| change(m).map(|()| true));
        Ok(changed.await?.map(|_| ()))
    }

    /// A capped key's spend this month and what its open holds reserve.
    pub async fn key_spend(&self, key_id: &str) -> anyhow::Result<(u64, u64)> {
        let month = crate::ledger::month_of(crate::domain::now_ms());
        Ok(
            match self.key_months.get(key_month_entry(key_id, month)).await? {
                Some(v) => {
                    let m: KeyMonth = serde_json::from_slice(&v)?;
                    (m.spent, m.held)
                }
                None => (0, 0),
            },
        )
    }

    /// Ends the execution's hold, once whichever node asks: charges `cost` (a `completed`
    /// answer's; at most what the balance can pay, the rest recorded as uncollected) or, for
    /// `None`, gives the hold back. Answers what was charged (0 without an open hold).
    pub async fn close_hold(&self, execution_id: &str, cost: Option<u64>) -> anyhow::Result<u64> {
        let Some(open) = self.holds.entry(execution_id).await? else {
            return Ok(0);
        };
        if open.operation != async_nats::jetstream::kv::Operation::Put {
            return Ok(0);
        }
        let hold: OpenHold = serde_json::from_slice(&open.value)?;
        if self
            .holds
            .purge_expect_revision(execution_id, Some(open.revision))
            .await
            .is_err()
        {
            // Another node closed it.
            return Ok(0);
        }
        let cost = cost.unwrap_or(0);
        let charged = match hold.in_ledger {
            true => self.close_in_ledger(execution_id, &hold, cost).await?,
            false => cost,
        };
        if let Some(month) = hold.key_month {
            self.update_key_month(&hold.key_id, month, |m| {
                m.held = m.held.saturating_sub(hold.amount_micros);
                m.spent += charged;
                Ok::<(), ()>(())
            })
            .await?
            .ok();
        }
        Ok(charged)
    }

    /// The settle or release of a hold the project's ledger has; answers what was charged.
    async fn close_in_ledger(
        &self,
        execution_id: &str,
        hold: &OpenHold,
        cost: u64,
    ) -> anyhow::Result<u64> {
        let appended = self
            .append_entry(&hold.project_id, |last| {
                let last = last?;
                let held = last.held_micros.saturating_sub(hold.amount_micros);
                let charged = cost.min(last.balance_micros.saturating_sub(held));
                let kind = if cost > 0 {
                    EntryKind::Settle
                } else {
                    EntryKind::Release
                };
                let amount = if cost > 0 {
                    charged
                } else {
                    hold.amount_micros
                };
                let mut e = entry(kind, last, amount, last.balance_micros - charged, held);
                e.execution_id = Some(execution_id.into());
                e.key_id = Some(hold.key_id.clone());
                if kind == EntryKind::Settle {
                    e.hold_micros = hold.amount_micros;
                    e.uncollected_micros = cost - charged;
                }
                Some(e)
            })
            .await?;
        Ok(appended.map_or(0, |e| {
            if e.kind == EntryKind::Settle {
                e.amount_micros
            } else {
                0
            }
        }))
    }

    /// [`Self::close_hold`], retried until NATS answers (an execution's end must reach the
    /// ledger).
    pub async fn close_hold_eventually(self: Arc<Self>, execution_id: String, cost: Option<u64>) {
        while let Err(err) = self.close_hold(&execution_id, cost).await {
            tracing::warn!(execution_id = %execution_id, error = %err, "cannot close the hold yet; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A charge without a hold (embeddings): from the project's balance when it has one (at
    /// most what it can pay), and counted in the key's month when the key has a cap.
    pub async fn charge(
        &self,
        project: &str,
        key_id: &str,
        cost: u64,
        key_capped: bool,
    ) -> anyhow::Result<u64> {
        let appended = self
            .append_entry(project, |last| {
                let last = last?;
                let charged = cost.min(last.balance_micros.saturating_sub(last.held_micros));
                let mut e = entry(
                    EntryKind::Settle,
                    last,
                    charged,
                    last.balance_micros - charged,
                    last.held_micros,
                );
                e.key_id = Some(key_id.into());
                e.uncollected_micros = cost - charged;
                Some(e)
            })
            .await?;
        let charged = appended.map_or(cost, |e| e.amount_micros);
        if key_capped {
            let month = crate::ledger::month_of(crate::domain::now_ms());
            self.update_key_month(key_id, month, |m| {
                m.spent += charged;
                Ok::<(), ()>(())
            })
            .await?
            .ok();
        }
        Ok(charged)
    }

    /// Adds `amount` to the project's balance (creating it); `None` when the sum would
    /// overflow.
    pub async fn top_up(
        &self,
        project: &str,
        key_id: &str,
        amount: u64,
    ) -> anyhow::Result<Option<LedgerEntry>> {
        self.append_entry(project, |last| {
            let zero = LedgerEntry {
                seq: 0,
                kind: EntryKind::TopUp,
                amount_micros: 0,
                execution_id: None,
                key_id: None,
                hold_micros: 0,
                uncollected_micros: 0,
                at_ms: 0,
                balance_micros: 0,
                held_micros: 0,
            };
            let last = last.unwrap_or(&zero);
            let balance = last.balance_micros.checked_add(amount)?;
            let mut e = entry(EntryKind::TopUp, last, amount, balance, last.held_micros);
            e.key_id = Some(key_id.into());
            Some(e)
        })
        .await
    }

    /// Mirrors every project's ledger into `store` and `ledger`'s cached accounts, for as long
    /// as the node runs.
    pub async fn mirror_ledger(self: Arc<Self>, store: Store, ledger: Arc<Ledger>) {
        let mut position = 0;
        loop {
            if let Err(err) = self
                .mirror_ledger_from(&store, &ledger, &mut position)
                .await
            {
                tracing::warn!(error = %err, "ledger mirror interrupted; resuming");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    async fn mirror_ledger_from(
        &self,
        store: &Store,
        ledger: &Ledger,
        position: &mut u64,
    ) -> anyhow::Result<()> {
        let mut messages =
            super::follow(&self.ledger, format!("{LEDGER_PREFIX}>"), *position).await?;
        while let Some(message) = messages.next().await {
            let message = message?;
            *position = super::stream_seq(&message)?;
            let Some(hex_project) = message.subject.as_str().strip_prefix(LEDGER_PREFIX) else {
                continue;
            };
            let Ok(project) =
                hex::decode(hex_project).map(|p| String::from_utf8_lossy(&p).into_owned())
            else {
                continue;
            };
            let Ok(entry) = decode_entry(&message.payload) else {
                continue;
            };
            store.append_ledger(&project, &entry)?;
            ledger.apply_shared(&project, &entry);
        }
        Ok(())
    }
}
