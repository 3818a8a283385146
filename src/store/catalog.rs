//! `catalog` (kind ‖ 0 ‖ project ‖ 0 ‖ name ‖ 0 ‖ version → entry): named, versioned
//! definitions — structures (JSON Schemas) and workflows. A new version never replaces an old
//! one, so an execution that started on version 3 can always be explained by version 3. Entries
//! from the config file live under the empty project and are visible to every project; a
//! project's own entry of the same name shadows them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Store;

/// What is kept in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogKind {
    Structure,
    Workflow,
}

impl CatalogKind {
    fn prefix(self) -> &'static str {
        match self {
            CatalogKind::Structure => "structure",
            CatalogKind::Workflow => "workflow",
        }
    }
}

/// One version of one definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub name: String,
    pub version: u32,
    /// The owning project; empty for definitions from the config file.
    pub project_id: String,
    /// The definition itself: a JSON Schema, or a workflow's JSON.
    pub body: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at_ms: u64,
}

impl CatalogEntry {
    pub fn from_config(&self) -> bool {
        self.project_id.is_empty()
    }
}

fn name_prefix(kind: CatalogKind, project: &str, name: &str) -> Vec<u8> {
    let mut key = Vec::new();
    for part in [kind.prefix(), project, name] {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    key
}

fn decode(value: &[u8]) -> sled::Result<CatalogEntry> {
    serde_json::from_slice(value)
        .map_err(|e| sled::Error::Unsupported(format!("corrupt catalog entry: {e}")))
}

impl Store {
    /// The newest version of `name` in `project` only.
    fn catalog_own(
        &self,
        kind: CatalogKind,
        project: &str,
        name: &str,
    ) -> sled::Result<Option<CatalogEntry>> {
        match self
            .catalog
            .scan_prefix(name_prefix(kind, project, name))
            .next_back()
        {
            Some(item) => Ok(Some(decode(&item?.1)?)),
            None => Ok(None),
        }
    }

    /// The definition a project means by `name`: its own newest version, else the config's;
    /// with `version`, exactly that version (of whichever owns the name).
    pub fn catalog_get(
        &self,
        kind: CatalogKind,
        project: &str,
        name: &str,
        version: Option<u32>,
    ) -> sled::Result<Option<CatalogEntry>> {
        let owner = match self.catalog_own(kind, project, name)? {
            Some(own) if version.is_none() => return Ok(Some(own)),
            Some(_) => project,
            None if version.is_none() => return self.catalog_own(kind, "", name),
            None => "",
        };
        let mut key = name_prefix(kind, owner, name);
        key.extend_from_slice(&version.unwrap_or_default().to_be_bytes());
        self.catalog.get(key)?.map(|v| decode(&v)).transpose()
    }

    /// The newest version of every definition a project sees (its own shadow the config's),
    /// by name.
    pub fn catalog_list(
        &self,
        kind: CatalogKind,
        project: &str,
    ) -> sled::Result<Vec<CatalogEntry>> {
        let mut by_name = std::collections::BTreeMap::new();
        for owner in ["", project] {
            let mut prefix = kind.prefix().as_bytes().to_vec();
            prefix.push(0);
            prefix.extend_from_slice(owner.as_bytes());
            prefix.push(0);
            for item in self.catalog.scan_prefix(prefix) {
                let entry = decode(&item?.1)?;
                if entry.project_id == owner {
                    // Versions come in order: the last one seen is the newest.
                    by_name.insert(entry.name.clone(), entry);
                }
            }
        }
        Ok(by_name.into_values().collect())
    }

    /// Stores `body` as the next version of `name` in `project` (`""` for the config) — or
    /// returns the newest version unchanged when it already says exactly that, so loading the
    /// same config twice creates nothing.
    pub fn catalog_put(
        &self,
        kind: CatalogKind,
        project: &str,
        name: &str,
        body: Value,
        description: Option<String>,
    ) -> sled::Result<CatalogEntry> {
        let latest = self.catalog_own(kind, project, name)?;
        if let Some(latest) = &latest {
            if latest.body == body && latest.description == description {
                return Ok(latest.clone());
            }
        }
        let entry = CatalogEntry {
            name: name.to_string(),
            version: latest.map_or(1, |l| l.version + 1),
            project_id: project.to_string(),
            body,
            description,
            created_at_ms: crate::domain::now_ms(),
        };
        let mut key = name_prefix(kind, project, name);
        key.extend_from_slice(&entry.version.to_be_bytes());
        let value = serde_json::to_vec(&entry).expect("catalog entries serialize");
        self.catalog.insert(key, value)?;
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn versions_grow_and_projects_shadow_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let k = CatalogKind::Structure;
        let v1 = store
            .catalog_put(k, "", "todo", json!({"type": "object"}), None)
            .unwrap();
        assert_eq!(v1.version, 1);
        let same = store
            .catalog_put(k, "", "todo", json!({"type": "object"}), None)
            .unwrap();
        assert_eq!(
            same.version, 1,
            "an unchanged definition is not a new version"
        );
        let v2 = store
            .catalog_put(k, "", "todo", json!({"type": "array"}), None)
            .unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(
            store
                .catalog_get(k, "p1", "todo", None)
                .unwrap()
                .unwrap()
                .version,
            2
        );
        let old = store
            .catalog_get(k, "p1", "todo", Some(1))
            .unwrap()
            .unwrap();
        assert_eq!(old.body, json!({"type": "object"}));
        let own = store
            .catalog_put(k, "p1", "todo", json!({"type": "string"}), None)
            .unwrap();
        assert_eq!(own.version, 1);
        let seen = store.catalog_get(k, "p1", "todo", None).unwrap().unwrap();
        assert_eq!(seen.project_id, "p1");
        assert_eq!(
            store
                .catalog_get(k, "p2", "todo", None)
                .unwrap()
                .unwrap()
                .version,
            2
        );
        store
            .catalog_put(k, "p2", "other", json!(true), None)
            .unwrap();
        let names: Vec<_> = store
            .catalog_list(k, "p1")
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.project_id, e.version))
            .collect();
        assert_eq!(names, vec![("todo".to_string(), "p1".to_string(), 1)]);
        assert!(store
            .catalog_get(CatalogKind::Workflow, "p1", "todo", None)
            .unwrap()
            .is_none());
        assert!(store
            .catalog_get(k, "p1", "missing", None)
            .unwrap()
            .is_none());
    }
}
