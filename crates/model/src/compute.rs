//! Compute resources: the CPU and memory an instance may use (`resources: {cpu: 0.5, memory:
//! 256Mi}`), and what a node offers (`--capacity cpu=4,memory=8Gi`). Agents enforce them with
//! cgroups; placement counts them against nodes' capacity.
//!
//! CPU is a number of cores, 0.01 to 1024, with at most three decimals (`0.5`, `2`, or
//! Kubernetes' `500m`); memory a Kubernetes-like quantity: bytes (`1048576`), or a number with
//! a binary (`Ki`, `Mi`, `Gi`, `Ti`) or decimal (`k`, `M`, `G`, `T`) suffix.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The resources an instance may use; a field not set is not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    /// CPU time, in cores (`0.5` is half of one core's time); 0.01–1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory, a quantity (`256Mi`, `1Gi`, `512M`, bytes); 4Mi–4Ti. An instance that uses more
    /// is killed (`oom_killed`) and restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
}

impl Resources {
    /// Whether nothing is limited (then `resources` is left out of documents).
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
    }

    /// `self` with the fields `other` sets replaced by its own.
    pub fn with_override(&self, other: &Resources) -> Resources {
        Resources {
            cpu: other.cpu.or(self.cpu),
            memory: other.memory.or(self.memory),
        }
    }
}

/// An amount of CPU time, in thousandths of a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = f64, example = 0.5)
)]
pub struct Cpu(u32);

/// An amount of memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, example = "256Mi")
)]
pub struct Memory(u64);

impl Cpu {
    /// Fewest millicores an instance may ask for (0.01 cores).
    pub const MIN_MILLIS: u32 = 10;
    /// Most millicores an instance may ask for (1024 cores).
    pub const MAX_MILLIS: u32 = 1_024_000;

    /// `millis` thousandths of a core (any amount: a node's capacity may be larger than an
    /// instance's limit).
    pub const fn from_millis(millis: u32) -> Cpu {
        Cpu(millis)
    }

    /// Thousandths of a core.
    pub const fn millis(self) -> u32 {
        self.0
    }

    /// Parses `0.5`, `2` or `500m`; any amount (bounds are checked by [`Cpu::limit`]).
    pub fn parse(text: &str) -> Result<Cpu, String> {
        let text = text.trim();
        if let Some(millis) = text.strip_suffix('m') {
            return millis
                .parse::<u32>()
                .map(Cpu)
                .map_err(|_| format!("`{text}` is not a number of millicores (e.g. `500m`)"));
        }
        Cpu::from_cores(decimal(text).ok_or_else(|| {
            format!("`{text}` is not a number of cores (e.g. `0.5`, `2` or `500m`)")
        })?)
    }

    /// A number of cores with at most three decimals.
    fn from_cores(cores: f64) -> Result<Cpu, String> {
        let millis = cores * 1000.0;
        if !millis.is_finite() || millis < 0.0 || millis > f64::from(u32::MAX) {
            return Err(format!("{cores} is not a number of cores"));
        }
        if (millis - millis.round()).abs() > 1e-6 {
            return Err(format!(
                "{cores} has more than three decimals (the smallest step is 0.001 cores)"
            ));
        }
        // In range and whole, checked above.
        Ok(Cpu(millis.round() as u32))
    }

    /// `self` as an instance's limit: 0.01 to 1024 cores.
    pub fn limit(self) -> Result<Cpu, String> {
        if (Cpu::MIN_MILLIS..=Cpu::MAX_MILLIS).contains(&self.0) {
            Ok(self)
        } else {
            Err(format!("must be between 0.01 and 1024 cores (got {self})"))
        }
    }
}

/// `text` as a non-negative decimal number (digits, at most one point), not `inf`, `1e3`, …
fn decimal(text: &str) -> Option<f64> {
    let well_formed = !text.is_empty()
        && text.chars().all(|c| c.is_ascii_digit() || c == '.')
        && text.chars().filter(|c| *c == '.').count() <= 1
        && text.chars().any(|c| c.is_ascii_digit());
    well_formed.then(|| text.parse().ok()).flatten()
}

impl fmt::Display for Cpu {
    /// Cores, without trailing zeros: `0.5`, `2`, `0.125`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, part) = (self.0 / 1000, self.0 % 1000);
        if part == 0 {
            write!(f, "{whole}")
        } else {
            let decimals = format!("{part:03}");
            write!(f, "{whole}.{}", decimals.trim_end_matches('0'))
        }
    }
}

impl Serialize for Cpu {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(1000) {
            serializer.serialize_u32(self.0 / 1000)
        } else {
            serializer.serialize_f64(f64::from(self.0) / 1000.0)
        }
    }
}

/// A number or a string, as written.
#[derive(Deserialize)]
#[serde(untagged)]
enum Written {
    Whole(u64),
    Number(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let cpu = match Written::deserialize(deserializer)? {
            Written::Whole(cores) => u32::try_from(cores)
                .ok()
                .and_then(|c| c.checked_mul(1000))
                .map(Cpu)
                .ok_or_else(|| format!("must be between 0.01 and 1024 cores (got {cores})")),
            Written::Number(cores) => Cpu::from_cores(cores),
            Written::Text(text) => Cpu::parse(&text),
        };
        cpu.and_then(Cpu::limit).map_err(serde::de::Error::custom)
    }
}

/// The suffixes of memory quantities and their factors, largest first.
const UNITS: [(&str, u64); 8] = [
    ("Ti", 1 << 40),
    ("T", 1_000_000_000_000),
    ("Gi", 1 << 30),
    ("G", 1_000_000_000),
    ("Mi", 1 << 20),
    ("M", 1_000_000),
    ("Ki", 1 << 10),
    ("k", 1_000),
];

impl Memory {
    /// Least memory an instance may ask for: 4 MiB.
    pub const MIN: u64 = 4 << 20;
    /// Most memory an instance may ask for: 4 TiB.
    pub const MAX: u64 = 4 << 40;

    /// `bytes` bytes (any amount; see [`Memory::limit`]).
    pub const fn from_bytes(bytes: u64) -> Memory {
        Memory(bytes)
    }

    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `256Mi`, `1Gi`, `512M`, `1.5Gi`, `64k` (or `64K`) or plain bytes; any amount
    /// (bounds are checked by [`Memory::limit`]).
    pub fn parse(text: &str) -> Result<Memory, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(split);
        let factor = match suffix {
            "" => 1,
            "K" => 1_000,
            _ => UNITS
                .iter()
                .find(|(unit, _)| *unit == suffix)
                .map(|(_, factor)| *factor)
                .ok_or_else(|| {
                    format!(
                        "`{text}` has an unknown unit `{suffix}` (use bytes, or Ki, Mi, Gi, Ti, \
                         k, M, G, T: e.g. `256Mi`)"
                    )
                })?,
        };
        let bad = || format!("`{text}` is not a memory quantity (e.g. `256Mi`, `1Gi`, `512M`)");
        if let Ok(whole) = number.parse::<u64>() {
            return whole
                .checked_mul(factor)
                .map(Memory)
                .ok_or_else(|| format!("`{text}` is too large"));
        }
        let value = decimal(number).ok_or_else(bad)? * factor as f64;
        if value > u64::MAX as f64 {
            return Err(format!("`{text}` is too large"));
        }
        if value.fract() != 0.0 {
            return Err(format!("`{text}` is not a whole number of bytes"));
        }
        // Whole and in range, checked above.
        Ok(Memory(value as u64))
    }

    /// `self` as an instance's limit: 4Mi to 4Ti.
    pub fn limit(self) -> Result<Memory, String> {
        if (Memory::MIN..=Memory::MAX).contains(&self.0) {
            Ok(self)
        } else {
            Err(format!("must be between 4Mi and 4Ti (got {self})"))
        }
    }
}

impl fmt::Display for Memory {
    /// With the largest unit that divides it (`256Mi`, `512M`), else in bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match UNITS
            .iter()
            .find(|(_, factor)| self.0 != 0 && self.0.is_multiple_of(*factor))
        {
            Some((unit, factor)) => write!(f, "{}{unit}", self.0 / factor),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let memory = match Written::deserialize(deserializer)? {
            Written::Whole(bytes) => Ok(Memory(bytes)),
            Written::Number(number) => Err(format!(
                "{number} is not a whole number of bytes (write e.g. \"256Mi\")"
            )),
            Written::Text(text) => Memory::parse(&text),
        };
        memory
            .and_then(Memory::limit)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(json: &str) -> Result<u64, String> {
        serde_json::from_str::<Memory>(json)
            .map(Memory::bytes)
            .map_err(|e| e.to_string())
    }

    fn cpu(json: &str) -> Result<u32, String> {
        serde_json::from_str::<Cpu>(json)
            .map(Cpu::millis)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn memory_quantities_read_as_kubernetes_writes_them() {
        assert_eq!(memory("\"256Mi\""), Ok(256 << 20));
        assert_eq!(memory("\"1Gi\""), Ok(1 << 30));
        assert_eq!(memory("\"512M\""), Ok(512_000_000));
        assert_eq!(memory("\"1.5Gi\""), Ok(3 << 29));
        assert_eq!(memory("\"8192k\""), Ok(8_192_000));
        assert_eq!(memory("\"8192K\""), Ok(8_192_000));
        assert_eq!(memory("67108864"), Ok(64 << 20));
        assert_eq!(memory("\"67108864\""), Ok(64 << 20));
    }

    #[test]
    fn bad_memory_quantities_say_why() {
        for (json, says) in [
            ("\"256MB\"", "unknown unit `MB`"),
            ("\"lots\"", "unknown unit"),
            ("\"Mi\"", "not a memory quantity"),
            ("\"1.2.3Mi\"", "not a memory quantity"),
            ("\"1Ki\"", "between 4Mi and 4Ti"),
            ("\"5Ti\"", "between 4Mi and 4Ti"),
            ("\"0.3\"", "not a whole number of bytes"),
            ("2.5", "not a whole number of bytes"),
            ("\"99999999999999999999Ti\"", "too large"),
            ("\"-1Mi\"", "unknown unit"),
        ] {
            let err = memory(json).unwrap_err();
            assert!(err.contains(says), "{json}: {err}");
        }
    }

    #[test]
    fn memory_is_written_with_the_largest_unit_that_divides_it() {
        for (bytes, text) in [
            (256 << 20, "256Mi"),
            (512_000_000, "512M"),
            (3 << 29, "1536Mi"),
            (2 << 40, "2Ti"),
            (5_000_001, "5000001"),
            (0, "0"),
        ] {
            assert_eq!(Memory::from_bytes(bytes).to_string(), text);
            assert_eq!(Memory::parse(text), Ok(Memory::from_bytes(bytes)));
        }
    }

    #[test]
    fn cpu_reads_cores_and_millicores_within_bounds() {
        assert_eq!(cpu("0.5"), Ok(500));
        assert_eq!(cpu("2"), Ok(2000));
        assert_eq!(cpu("\"250m\""), Ok(250));
        assert_eq!(cpu("\"1.25\""), Ok(1250));
        assert_eq!(cpu("0.01"), Ok(10));
        assert_eq!(cpu("1024"), Ok(1_024_000));
        for (json, says) in [
            ("0.001", "between 0.01 and 1024"),
            ("0", "between 0.01 and 1024"),
            ("1025", "between 0.01 and 1024"),
            ("99999999999", "between 0.01 and 1024"),
            ("0.0005", "more than three decimals"),
            ("-1", "not a number of cores"),
            ("\"half\"", "not a number of cores"),
            ("\"1e3\"", "not a number of cores"),
            ("\"xm\"", "not a number of millicores"),
        ] {
            let err = cpu(json).unwrap_err();
            assert!(err.contains(says), "{json}: {err}");
        }
    }

    #[test]
    fn cpu_round_trips_as_a_number_of_cores() {
        for (millis, json) in [(500, "0.5"), (2000, "2"), (125, "0.125"), (10, "0.01")] {
            let cpu = Cpu::from_millis(millis);
            assert_eq!(serde_json::to_string(&cpu).unwrap(), json);
            assert_eq!(serde_json::from_str::<Cpu>(json).unwrap(), cpu);
            assert_eq!(cpu.to_string(), json);
        }
    }

    #[test]
    fn an_override_replaces_the_fields_it_sets() {
        let base: Resources = serde_json::from_str(r#"{"cpu": 1, "memory": "1Gi"}"#).unwrap();
        let more_memory: Resources = serde_json::from_str(r#"{"memory": "2Gi"}"#).unwrap();
        let merged = base.with_override(&more_memory);
        assert_eq!(merged.cpu, Some(Cpu::from_millis(1000)));
        assert_eq!(merged.memory, Some(Memory::from_bytes(2 << 30)));
        assert!(Resources::default().is_empty());
        assert_eq!(
            serde_json::to_string(&merged).unwrap(),
            r#"{"cpu":1,"memory":"2Gi"}"#
        );
    }
}
