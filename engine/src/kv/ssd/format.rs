//! The tier's files: where a block lives, its bytes (header, payload, CRC32), how a file is
//! written (temp name, fsync, rename) and how a stray temp file is recognised.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::paged::{KvBlock, KvDtype, KvLayout};
use super::super::prefix::{BlockHash, ModelIdentity};

pub(super) const MAGIC: &[u8; 8] = b"WUWEIKV\0";
pub(super) const FORMAT_VERSION: u32 = 1;
/// magic, version, identity, hash, dtype + 3 pad, 4 × u32 layout, payload length.
pub(super) const HEADER_BYTES: usize = 8 + 4 + 32 + 16 + 4 + 16 + 8;
pub(super) const CRC_BYTES: usize = 4;
pub(super) const EXTENSION: &str = "kv";

pub(super) fn file_path(root: &Path, model: &ModelIdentity, hash: &BlockHash) -> PathBuf {
    let h = hash.to_hex();
    root.join(&model.to_hex()[..16])
        .join(&h[..2])
        .join(format!("{h}.{EXTENSION}"))
}

pub(super) fn encode(model: &ModelIdentity, hash: &BlockHash, block: &KvBlock) -> Vec<u8> {
    let l = &block.layout;
    let mut out = Vec::with_capacity(HEADER_BYTES + block.data.len() + CRC_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&model.0);
    out.extend_from_slice(&hash.0);
    out.extend_from_slice(&[l.dtype as u8, 0, 0, 0]);
    for v in [l.layers, l.kv_heads, l.head_dim, l.block_size] {
        out.extend_from_slice(&(v as u32).to_le_bytes());
    }
    out.extend_from_slice(&(block.data.len() as u64).to_le_bytes());
    out.extend_from_slice(&block.data);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Why a file was rejected.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reject {
    Corrupt(&'static str),
}

pub(super) fn decode(
    bytes: &[u8],
    model: &ModelIdentity,
    hash: &BlockHash,
    layout: &KvLayout,
) -> Result<KvBlock, Reject> {
    if bytes.len() < HEADER_BYTES + CRC_BYTES {
        return Err(Reject::Corrupt("truncated"));
    }
    if &bytes[..8] != MAGIC {
        return Err(Reject::Corrupt("bad magic"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(8) != FORMAT_VERSION {
        return Err(Reject::Corrupt("foreign format version"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(Reject::Corrupt("checksum mismatch"));
    }
    if bytes[12..44] != model.0 || bytes[44..60] != hash.0 {
        return Err(Reject::Corrupt("written for another model or block"));
    }
    let dtype = KvDtype::from_code(bytes[60]).ok_or(Reject::Corrupt("unknown dtype"))?;
    let stored = KvLayout {
        dtype,
        layers: u32_at(64) as usize,
        kv_heads: u32_at(68) as usize,
        head_dim: u32_at(72) as usize,
        block_size: u32_at(76) as usize,
        // Models with linear layers keep no blocks on disk (their snapshots are RAM-only).
        linear: 0,
    };
    let len = u64::from_le_bytes(bytes[80..88].try_into().expect("8 bytes")) as usize;
    if stored != *layout || len != layout.block_bytes() || HEADER_BYTES + len != body.len() {
        return Err(Reject::Corrupt("layout differs from the model's"));
    }
    Ok(KvBlock {
        layout: stored,
        data: body[HEADER_BYTES..].to_vec(),
    })
}

pub(super) fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("block files live in a folder");
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether a temp file (`.<name>.<pid>.tmp`) was left by a writer that is gone (a crash
/// mid-write). Our own writer's temp files are in progress (the scan runs beside the writer),
/// and so are those of another live daemon sharing the folder, unless they are old.
pub(super) fn is_stray_temp(name: &str, entry: &fs::DirEntry) -> bool {
    let pid = name
        .strip_suffix(".tmp")
        .and_then(|s| s.rsplit('.').next())
        .and_then(|p| p.parse::<i32>().ok());
    let Some(pid) = pid else {
        return true;
    };
    if pid as u32 == std::process::id() {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
    let old = entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > Duration::from_secs(600));
    !alive || old
}
