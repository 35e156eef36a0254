//! Memory the models may use: the budget (absolute or a share of RAM), the system's memory as
//! the OS reports it, MLX's own counters, and MLX's limits derived from the budget.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An amount of memory: bytes, or a percentage of total RAM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Bytes(u64),
    Percent(f64),
}

impl Amount {
    /// Bytes this amount means on a machine with `total` bytes of RAM.
    pub fn of(&self, total: u64) -> u64 {
        match *self {
            Amount::Bytes(b) => b,
            Amount::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

impl FromStr for Amount {
    type Err = String;

    /// `"20%"`, `"8GiB"`, `"8 GB"`, `"512MiB"`, `"1048576"` (bytes). Units are powers of 1024
    /// whether written `GB` or `GiB` (memory sizes are, in practice).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{s:?}: a percentage must be between 0 and 100"));
            }
            return Ok(Amount::Percent(v));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{s:?} is not an amount of memory (e.g. 8GiB, 512MB, 20%)"))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB or %)"
                ))
            }
        };
        Ok(Amount::Bytes((value * scale as f64) as u64))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Bytes(b) => write!(f, "{b}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Bytes(b) => s.serialize_u64(*b),
            Amount::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(b) => Ok(Amount::Bytes(b)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The machine's memory as the OS reports it, in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SystemMemory {
    pub total: u64,
    pub used: u64,
    pub available: u64,
}

pub fn system_memory() -> SystemMemory {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    SystemMemory {
        total: sys.total_memory(),
        used: sys.used_memory(),
        available: sys.available_memory(),
    }
}

/// The memory the models' budget is taken from: the device's where MLX reports it (Metal's
/// recommended working set, CUDA's device memory), else host RAM (the CPU backend).
pub fn models_memory_total() -> u64 {
    crate::device::info()
        .memory_bytes
        .unwrap_or_else(|| system_memory().total)
}

/// MLX's allocator counters (process-wide: every model's arrays together).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MlxMemory {
    pub active: u64,
    pub cache: u64,
    pub peak: u64,
}

pub fn mlx_memory() -> MlxMemory {
    use mlx_rs::memory;
    MlxMemory {
        active: memory::active_memory().unwrap_or(0) as u64,
        cache: memory::cache_memory().unwrap_or(0) as u64,
        peak: memory::peak_memory().unwrap_or(0) as u64,
    }
}

/// The models' budget: `budget` when set, else total RAM minus `reserve`.
pub fn budget_bytes(budget: Option<Amount>, reserve: Amount, total: u64) -> u64 {
    match budget {
        Some(b) => b.of(total),
        None => total.saturating_sub(reserve.of(total)),
    }
}

/// Tells MLX the budget: allocations past the limit (plus a margin for the estimates' error)
/// fail in MLX rather than pushing the machine into swap or the OOM killer, and freed buffers
/// MLX keeps for reuse are capped to a tenth of the budget. On Metal the budget is also the
/// wired limit (as mlx-lm sets it for large models): the weights stay resident instead of
/// being paged out between steps, within what macOS recommends for the GPU.
pub fn apply_mlx_limits(budget: u64) {
    let device = crate::device::info();
    if device.backend == crate::device::Backend::Metal {
        let wired = device.memory_bytes.map_or(budget, |m| m.min(budget));
        if let Err(e) = mlx_rs::memory::set_wired_limit(wired as usize) {
            tracing::warn!(error = %e, "cannot set MLX's wired limit");
        }
    }
    let limit = budget.saturating_add(budget / 10) as usize;
    if let Err(e) = mlx_rs::memory::set_memory_limit(limit) {
        tracing::warn!(error = %e, "cannot set MLX's memory limit");
    }
    if let Err(e) = mlx_rs::memory::set_cache_limit((budget / 10) as usize) {
        tracing::warn!(error = %e, "cannot set MLX's cache limit");
    }
}

/// `1.5 GiB`-style text for messages.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse() {
        assert_eq!("20%".parse::<Amount>().unwrap(), Amount::Percent(20.0));
        assert_eq!("8GiB".parse::<Amount>().unwrap(), Amount::Bytes(8 << 30));
        assert_eq!("8 GB".parse::<Amount>().unwrap(), Amount::Bytes(8 << 30));
        assert_eq!("1.5g".parse::<Amount>().unwrap(), Amount::Bytes(3 << 29));
        assert_eq!("4096".parse::<Amount>().unwrap(), Amount::Bytes(4096));
        assert!("lots".parse::<Amount>().is_err());
        assert!("120%".parse::<Amount>().is_err());
        assert!("5 parsecs".parse::<Amount>().unwrap_err().contains("unit"));
        assert_eq!(Amount::Percent(25.0).of(1000), 250);
    }

    #[test]
    fn budget_defaults_to_total_minus_reserve() {
        assert_eq!(budget_bytes(None, Amount::Percent(20.0), 1000), 800);
        assert_eq!(budget_bytes(None, Amount::Bytes(300), 1000), 700);
        assert_eq!(
            budget_bytes(Some(Amount::Bytes(123)), Amount::Bytes(300), 1000),
            123
        );
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
    }
}
