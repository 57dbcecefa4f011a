//! The node's cluster id, kept in the data folder.
//!
//! A node normally starts as a new member with a new id ([`create`]): its data of the previous
//! run was set aside (see `store::set_aside`), so to the cluster it is a new node, and the
//! sessions it held before are taken over by their backups whatever the timing of its restart.
//! Started with `--recovery`, it keeps its data and so its id ([`load_or_create`]).

use std::fs;
use std::io::Write;
use std::path::Path;

use super::NodeId;

/// The file in the data folder that holds the id.
pub const FILE: &str = "cluster-id";
const LEN: usize = 10;

/// Reads the id from `data_dir/cluster-id`, or makes and saves a new one.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<NodeId> {
    let path = data_dir.join(FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            anyhow::ensure!(
                valid(id),
                "{} holds an invalid cluster id {id:?} (expected {LEN} letters and digits)",
                path.display()
            );
            Ok(NodeId::from(id))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(data_dir),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Makes a new id and saves it in `data_dir/cluster-id`, replacing the one there.
pub fn create(data_dir: &Path) -> anyhow::Result<NodeId> {
    let path = data_dir.join(FILE);
    let write = || -> std::io::Result<String> {
        fs::create_dir_all(data_dir)?;
        let id = generate();
        let mut file = fs::File::create(&path)?;
        file.write_all(id.as_bytes())?;
        file.sync_all()?;
        Ok(id)
    };
    let id = write().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(NodeId::from(id.as_str()))
}

fn generate() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..LEN)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= super::wire::MAX_NODE_ID && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_restart_and_rejects_junk() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), LEN);
        assert_eq!(load_or_create(dir.path()).unwrap(), first);
        fs::write(dir.path().join(FILE), "not valid!").unwrap();
        assert!(load_or_create(dir.path()).is_err());
    }

    #[test]
    fn create_always_makes_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = create(dir.path()).unwrap();
        let second = create(dir.path()).unwrap();
        assert_ne!(first, second);
        assert_eq!(load_or_create(dir.path()).unwrap(), second);
    }
}
