//! Reading an MLX-format model folder's tensors: the safetensors files (single or sharded
//! with an index), checked before MLX touches them, so that a missing or truncated file is a
//! clear error naming it rather than a crash.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};

use super::ModelError;

/// Safetensors files of the folder, in load order.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::parse(&index, e))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Invalid {
                path: index.clone(),
                reason: "no \"weight_map\" object".into(),
            })?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        let mut files = Vec::new();
        for shard in shards {
            if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
                return Err(ModelError::Invalid {
                    path: index.clone(),
                    reason: format!("shard name '{shard}' leaves the model folder"),
                });
            }
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(ModelError::MissingFile {
                    path,
                    reason: format!("listed in {}", index.display()),
                });
            }
            files.push(path);
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::MissingFile {
            path: single,
            reason: "no safetensors weights in the folder".into(),
        });
    }
    Ok(files)
}

/// Checks that a safetensors file's header parses and that the file holds every byte the
/// header promises (a truncated download fails here, not inside MLX).
pub fn check_safetensors(path: &Path) -> Result<(), ModelError> {
    use std::io::Read;
    let mut f = fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let size = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| ModelError::Invalid {
        path: path.into(),
        reason: "file is shorter than a safetensors header".into(),
    })?;
    let header_len = u64::from_le_bytes(len);
    if header_len > 100 << 20 || 8 + header_len > size {
        return Err(ModelError::Invalid {
            path: path.into(),
            reason: format!("header length {header_len} does not fit a {size}-byte file"),
        });
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header)
        .map_err(|e| ModelError::io(path, e))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| ModelError::Invalid {
            path: path.into(),
            reason: format!("bad safetensors header: {e}"),
        })?;
    let mut data_end = 0u64;
    for (name, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let end = info
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| ModelError::Invalid {
                path: path.into(),
                reason: format!("bad safetensors header: tensor '{name}' has no data_offsets"),
            })?;
        data_end = data_end.max(end);
    }
    if 8 + header_len + data_end > size {
        return Err(ModelError::Invalid {
            path: path.into(),
            reason: format!(
                "truncated: header describes {} bytes, file has {size}",
                8 + header_len + data_end
            ),
        });
    }
    Ok(())
}

/// Loads every tensor of the folder. Floating-point tensors are cast to `float_dtype`
/// (float32 on CPU, where half-precision activations are far slower).
pub fn load_safetensors_dir(
    dir: &Path,
    float_dtype: Option<Dtype>,
) -> Result<HashMap<String, Array>, ModelError> {
    let mut all = HashMap::new();
    for file in safetensors_files(dir)? {
        check_safetensors(&file)?;
        let tensors = Array::load_safetensors(&file).map_err(|e| ModelError::Invalid {
            path: file.clone(),
            reason: format!("MLX could not load it: {e}"),
        })?;
        all.extend(tensors);
    }
    if let Some(dtype) = float_dtype {
        cast_floats(&mut all, dtype)?;
    }
    Ok(all)
}

pub fn cast_floats(tensors: &mut HashMap<String, Array>, dtype: Dtype) -> Result<(), ModelError> {
    for value in tensors.values_mut() {
        let is_float = matches!(
            value.dtype(),
            Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float32
        );
        if is_float && value.dtype() != dtype {
            *value = value.as_dtype(dtype).map_err(ModelError::mlx)?;
        }
    }
    Ok(())
}
