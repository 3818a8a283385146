//! Trees a cluster shares: small, written by admin actions (keys, project limits, the catalog,
//! webhook signing secrets) or once per request (the Responses API's side). Every write to one
//! goes to the local tree as always and, once a cluster is attached, into an ordered queue the
//! cluster forwards to KV; writes other nodes made arrive through [`SharedTree::raw`], which
//! bypasses the queue. On a single node nothing is queued.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc::UnboundedSender;

/// One write to a shared tree: `value` `None` is a removal.
#[derive(Debug)]
pub struct SharedWrite {
    pub tree: &'static str,
    pub key: Vec<u8>,
    pub value: Option<sled::IVec>,
    /// Position in the queue (1, 2, 3, …): the forwarder reports how far it got.
    pub seq: u64,
}

/// Where shared writes go once a cluster is attached.
#[derive(Default)]
pub struct Replication {
    queue: OnceLock<UnboundedSender<SharedWrite>>,
    queued: AtomicU64,
}

impl Replication {
    /// Attaches the cluster's forwarder (once; later writes are queued to it).
    pub fn attach(&self, queue: UnboundedSender<SharedWrite>) {
        let _ = self.queue.set(queue);
    }

    /// How many writes were queued so far: a barrier waits until the forwarder got that far.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Acquire)
    }

    fn push(&self, tree: &'static str, key: &[u8], value: Option<sled::IVec>) {
        let Some(queue) = self.queue.get() else {
            return;
        };
        let seq = self.queued.fetch_add(1, Ordering::AcqRel) + 1;
        let _ = queue.send(SharedWrite {
            tree,
            key: key.to_vec(),
            value,
            seq,
        });
    }
}

/// A sled tree whose writes are also queued for the cluster. Reads go straight to the tree.
#[derive(Clone)]
pub struct SharedTree {
    name: &'static str,
    tree: sled::Tree,
    replication: Arc<Replication>,
}

impl std::ops::Deref for SharedTree {
    type Target = sled::Tree;

    fn deref(&self) -> &sled::Tree {
        &self.tree
    }
}

impl SharedTree {
    pub fn open(
        db: &sled::Db,
        name: &'static str,
        replication: &Arc<Replication>,
    ) -> sled::Result<SharedTree> {
        Ok(SharedTree {
            name,
            tree: db.open_tree(name)?,
            replication: replication.clone(),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The tree without the queue: for writes that came from another node.
    pub fn raw(&self) -> &sled::Tree {
        &self.tree
    }

    pub fn insert<K: AsRef<[u8]>, V: Into<sled::IVec>>(
        &self,
        key: K,
        value: V,
    ) -> sled::Result<Option<sled::IVec>> {
        let value = value.into();
        let previous = self.tree.insert(key.as_ref(), value.clone())?;
        self.replication.push(self.name, key.as_ref(), Some(value));
        Ok(previous)
    }

    pub fn remove<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<sled::IVec>> {
        let previous = self.tree.remove(key.as_ref())?;
        if previous.is_some() {
            self.replication.push(self.name, key.as_ref(), None);
        }
        Ok(previous)
    }

    pub fn compare_and_swap<K, OV, NV>(
        &self,
        key: K,
        old: Option<OV>,
        new: Option<NV>,
    ) -> sled::Result<Result<(), sled::CompareAndSwapError>>
    where
        K: AsRef<[u8]>,
        OV: AsRef<[u8]>,
        NV: Into<sled::IVec>,
    {
        let new = new.map(Into::into);
        let result = self.tree.compare_and_swap(key.as_ref(), old, new.clone())?;
        if result.is_ok() {
            self.replication.push(self.name, key.as_ref(), new);
        }
        Ok(result)
    }
}
