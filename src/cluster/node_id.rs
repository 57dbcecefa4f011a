//! The node's cluster id: made once, kept in the data folder, so a node that restarts (even
//! with another IP) comes back as itself.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::NodeId;

const FILE: &str = "cluster-id";
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(data_dir)?;
            let id = generate();
            let mut file = fs::File::create(&path)?;
            file.write_all(id.as_bytes())?;
            file.sync_all()?;
            Ok(NodeId::from(id.as_str()))
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
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
}
