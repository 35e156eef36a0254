//! The tier's files: where a block or a snapshot lives, their bytes (header, payload, CRC32),
//! how a file is written (temp name, fsync, rename) and how a stray temp file is recognised.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::paged::{KvBlock, KvDtype, KvLayout};
use super::super::prefix::{BlockHash, ModelIdentity};
use super::super::quant::KvQuant;
use super::super::snapshot::{StateLayout, StateShape, StateSnapshot};

pub(super) const MAGIC: &[u8; 8] = b"WUWEIKV\0";
pub(super) const FORMAT_VERSION: u32 = 1;
/// magic, version, identity, hash, dtype + KV bits + KV group size + 1 pad (both 0: float KV,
/// as every file before quantized blocks), 4 × u32 layout, payload length.
pub(super) const HEADER_BYTES: usize = 8 + 4 + 32 + 16 + 4 + 16 + 8;
pub(super) const CRC_BYTES: usize = 4;
pub(super) const EXTENSION: &str = "kv";

/// Snapshot files: their own magic and extension, the same folder as the blocks.
pub(super) const SNAPSHOT_MAGIC: &[u8; 8] = b"WUWEISN\0";
pub(super) const SNAPSHOT_VERSION: u32 = 1;
pub(super) const SNAPSHOT_EXTENSION: &str = "snap";
/// magic, version, identity, key, state array count.
pub(super) const SNAPSHOT_HEADER_BYTES: usize = 8 + 4 + 32 + 16 + 4;
/// Most state arrays a snapshot may declare (a bad count must not allocate without bound).
const MAX_STATE_ARRAYS: usize = 4096;
const MAX_STATE_AXES: usize = 8;

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Block,
    Snapshot,
}

impl Kind {
    pub(super) fn extension(self) -> &'static str {
        match self {
            Kind::Block => EXTENSION,
            Kind::Snapshot => SNAPSHOT_EXTENSION,
        }
    }
}

#[cfg(test)]
pub(super) fn file_path(root: &Path, model: &ModelIdentity, hash: &BlockHash) -> PathBuf {
    kind_path(root, model, hash, Kind::Block)
}

pub(super) fn kind_path(
    root: &Path,
    model: &ModelIdentity,
    hash: &BlockHash,
    kind: Kind,
) -> PathBuf {
    let h = hash.to_hex();
    root.join(&model.to_hex()[..16])
        .join(&h[..2])
        .join(format!("{h}.{}", kind.extension()))
}

/// A snapshot's file: header, the shape of every state array (layer, dtype, axes), payload
/// length, payload, CRC32 of all of it.
pub(super) fn encode_snapshot(
    model: &ModelIdentity,
    key: &BlockHash,
    snap: &StateSnapshot,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + 64 + snap.data.len() + CRC_BYTES);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&model.0);
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&(snap.layout.len() as u32).to_le_bytes());
    for s in &snap.layout {
        out.extend_from_slice(&(s.layer as u32).to_le_bytes());
        out.extend_from_slice(&[s.dtype as u8, 0, 0, 0]);
        out.extend_from_slice(&(s.shape.len() as u32).to_le_bytes());
        for d in &s.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
    }
    out.extend_from_slice(&(snap.data.len() as u64).to_le_bytes());
    out.extend_from_slice(&snap.data);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads a snapshot file back; `expected` is the model's state layout, which the file's must
/// equal exactly.
pub(super) fn decode_snapshot(
    bytes: &[u8],
    model: &ModelIdentity,
    key: &BlockHash,
    expected: &StateLayout,
) -> Result<StateSnapshot, Reject> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES + 8 + CRC_BYTES {
        return Err(Reject::Corrupt("truncated"));
    }
    if &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(Reject::Corrupt("bad magic"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(8) != SNAPSHOT_VERSION {
        return Err(Reject::Corrupt("foreign format version"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(Reject::Corrupt("checksum mismatch"));
    }
    if bytes[12..44] != model.0 || bytes[44..60] != key.0 {
        return Err(Reject::Corrupt("written for another model or block"));
    }
    let count = u32_at(60) as usize;
    if count > MAX_STATE_ARRAYS {
        return Err(Reject::Corrupt("too many state arrays"));
    }
    // The body is checksummed, so a bound failing here is a writer's bug, not a bad disk.
    let mut at = SNAPSHOT_HEADER_BYTES;
    let need = |at: usize, n: usize| {
        if at + n <= body.len() {
            Ok(())
        } else {
            Err(Reject::Corrupt("truncated state layout"))
        }
    };
    let mut layout = Vec::with_capacity(count);
    for _ in 0..count {
        need(at, 12)?;
        let layer = u32_at(at) as usize;
        let dtype = KvDtype::from_code(bytes[at + 4]).ok_or(Reject::Corrupt("unknown dtype"))?;
        let axes = u32_at(at + 8) as usize;
        if axes > MAX_STATE_AXES {
            return Err(Reject::Corrupt("too many axes"));
        }
        at += 12;
        need(at, 4 * axes)?;
        let shape = (0..axes)
            .map(|i| u32_at(at + 4 * i) as i32)
            .collect::<Vec<_>>();
        at += 4 * axes;
        layout.push(StateShape {
            layer,
            dtype,
            shape,
        });
    }
    need(at, 8)?;
    let len = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes")) as usize;
    at += 8;
    if at + len != body.len() {
        return Err(Reject::Corrupt("payload length"));
    }
    let snap = StateSnapshot {
        layout,
        data: body[at..].to_vec(),
    };
    if &snap.layout != expected || !snap.consistent() {
        return Err(Reject::Corrupt("state layout differs from the model's"));
    }
    Ok(snap)
}

pub(super) fn encode(model: &ModelIdentity, hash: &BlockHash, block: &KvBlock) -> Vec<u8> {
    let l = &block.layout;
    let mut out = Vec::with_capacity(HEADER_BYTES + block.data.len() + CRC_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&model.0);
    out.extend_from_slice(&hash.0);
    let (bits, group) = l
        .quant
        .map_or((0, 0), |q| (q.bits as u8, q.group_size as u8));
    out.extend_from_slice(&[l.dtype as u8, bits, group, 0]);
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
    let quant = match (bytes[61], bytes[62]) {
        (0, _) => None,
        (bits, group) => Some(
            KvQuant::new(bits as i32, group as i32)
                .map_err(|_| Reject::Corrupt("unknown KV quantization"))?,
        ),
    };
    let stored = KvLayout {
        dtype,
        quant,
        layers: u32_at(64) as usize,
        kv_heads: u32_at(68) as usize,
        head_dim: u32_at(72) as usize,
        block_size: u32_at(76) as usize,
        // Which layers are linear or windowed, and which have the second head shape, is in
        // the model identity (and the expected layout); the file holds the block layers only,
        // which the length check below covers.
        linear: layout.linear,
        wide: layout.wide,
        wide_shape: layout.wide_shape,
        windowed: layout.windowed,
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
