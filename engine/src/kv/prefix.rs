//! Chained block hashes: the key under which a block of KV is stored and shared.
//!
//! A block's KV depends on the model (weights, how they are held, rope settings…) and on every
//! token before and inside the block. So block `i`'s key is
//! `H(parent key, block size, block tokens)` and block 0's parent is the model's identity
//! digest. Two prompts share block `i` exactly when they share the model and all tokens up to
//! the end of block `i`; one model's blocks can never answer another model's lookup.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Bump when the meaning of a block's bytes changes: old keys then never match.
pub const HASH_SCHEME_VERSION: u32 = 1;

/// Key of one full block (128 bits of SHA-256: collisions are not a practical concern).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; 16]);

impl BlockHash {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({})", &self.to_hex()[..12])
    }
}

/// What makes one model's KV different from another's: a digest of the model's files and of
/// everything that changes the numbers (weights mode, a probe of the loaded model's output).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelIdentity(pub [u8; 32]);

impl ModelIdentity {
    /// Digest of arbitrary identity parts, in order.
    pub fn from_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut h = Sha256::new();
        h.update(b"wuwei-model-identity");
        h.update(HASH_SCHEME_VERSION.to_le_bytes());
        for p in parts {
            // Length-prefixed so that part boundaries cannot shift.
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        Self(h.finalize().into())
    }

    /// The files of a model (a GGUF file, or the files of an MLX folder) by name, size and
    /// modification time, plus `extra` (e.g. the weights mode and a probe of the model's
    /// output). Rewriting the weights in place changes the mtime, hence the identity.
    pub fn of_model(path: &Path, extra: &[&[u8]]) -> Self {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        parts.push(canonical.to_string_lossy().as_bytes().to_vec());
        let mut files: Vec<std::path::PathBuf> = if path.is_dir() {
            std::fs::read_dir(path)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        } else {
            vec![path.to_path_buf()]
        };
        files.sort();
        for f in files {
            let meta = std::fs::metadata(&f).ok();
            let size = meta.as_ref().map_or(0, |m| m.len());
            let mtime = meta
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
            parts.push(format!("{}:{size}:{mtime}", name.unwrap_or_default()).into_bytes());
        }
        parts.extend(extra.iter().map(|e| e.to_vec()));
        Self::from_parts(parts.iter().map(|p| p.as_slice()))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The parent of a sequence's first block.
    fn root(&self) -> BlockHash {
        let mut out = [0u8; 16];
        out.copy_from_slice(&self.0[..16]);
        BlockHash(out)
    }
}

/// Key of the block holding `tokens` after the block keyed `parent`.
pub fn block_hash(parent: BlockHash, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    h.update(b"wuwei-kv-block");
    h.update(parent.0);
    h.update((tokens.len() as u32).to_le_bytes());
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    BlockHash(out)
}

/// Key of the snapshot of recurrent state taken at the end of the block keyed `block`: its
/// own key (the SSD tier indexes blocks and snapshots together), derived from the block's so
/// that it carries the same model and prefix.
pub fn snapshot_key(block: BlockHash) -> BlockHash {
    let mut h = Sha256::new();
    h.update(b"wuwei-state-snapshot");
    h.update(block.0);
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    BlockHash(out)
}

/// Keys of the full blocks of `tokens` (a trailing partial block has none: it is never shared).
pub fn chain_hashes(model: &ModelIdentity, tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    chain_hashes_from(model.root(), tokens, block_size)
}

/// Like [`chain_hashes`], continuing after the block keyed `parent` (or from the model root).
pub fn chain_hashes_from(parent: BlockHash, tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    assert!(block_size > 0, "block size is validated by the config");
    let mut parent = parent;
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            parent = block_hash(parent, block);
            parent
        })
        .collect()
}

/// The model root, for continuing a chain with [`chain_hashes_from`].
pub fn chain_root(model: &ModelIdentity) -> BlockHash {
    model.root()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> ModelIdentity {
        ModelIdentity::from_parts([name.as_bytes()])
    }

    #[test]
    fn only_full_blocks_get_keys() {
        let m = model("a");
        assert_eq!(chain_hashes(&m, &[1, 2, 3, 4, 5], 2).len(), 2);
        assert!(chain_hashes(&m, &[1], 2).is_empty());
    }

    #[test]
    fn shared_prefix_shares_keys_until_the_first_difference() {
        let m = model("a");
        let a = chain_hashes(&m, &[1, 2, 3, 4, 5, 6], 2);
        let b = chain_hashes(&m, &[1, 2, 3, 9, 5, 6], 2);
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        // Same tokens after a difference still differ: the chain carries the whole prefix.
        assert_ne!(a[2], b[2]);
    }

    #[test]
    fn model_identity_separates_chains() {
        let a = chain_hashes(&model("a"), &[1, 2], 2);
        let b = chain_hashes(&model("b"), &[1, 2], 2);
        assert_ne!(a, b);
        // Identity parts are length-prefixed: ("ab","c") differs from ("a","bc").
        let x = ModelIdentity::from_parts([&b"ab"[..], b"c"]);
        let y = ModelIdentity::from_parts([&b"a"[..], b"bc"]);
        assert!(x != y);
    }

    #[test]
    fn block_size_is_part_of_the_key() {
        let m = model("a");
        let two = chain_hashes(&m, &[1, 2, 3, 4], 2);
        let four = chain_hashes(&m, &[1, 2, 3, 4], 4);
        assert!(!two.contains(&four[0]));
    }

    #[test]
    fn continuing_a_chain_matches_hashing_at_once() {
        let m = model("a");
        let all = chain_hashes(&m, &[1, 2, 3, 4, 5, 6], 2);
        let tail = chain_hashes_from(all[0], &[3, 4, 5, 6], 2);
        assert_eq!(&all[1..], &tail[..]);
        assert_eq!(chain_hashes_from(chain_root(&m), &[1, 2], 2)[0], all[0]);
    }

    #[test]
    fn hex_round_trips() {
        let h = chain_hashes(&model("a"), &[7, 8], 2)[0];
        assert_eq!(BlockHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(BlockHash::from_hex("zz"), None);
    }
}
