//! Configuration layering shared by both programs: clap reads flags and `CARRY_*` environment
//! variables into `Option` fields, [`load_toml`] reads the `--config` file into the same struct,
//! and [`fill_from!`](crate::fill_from) takes from the file only what flags and environment left
//! unset; defaults are applied last, when the options are resolved.

use std::path::Path;

use serde::de::DeserializeOwned;

/// A configuration value out of range, or a file that cannot be read; names the field (the TOML
/// key; the flag is the same with `-`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {msg}")]
pub struct ConfigError {
    /// The field.
    pub field: String,
    /// Expected vs given.
    pub msg: String,
}

impl ConfigError {
    /// An error for `field`.
    pub fn new(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

/// Reads a TOML file of options; unknown keys and bad values are errors naming the file.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("config", format!("{}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        ConfigError::new(
            "config",
            format!("{}: {}", path.display(), e.to_string().trim()),
        )
    })
}

/// Fills every listed `Option` field of `$dst` that is `None` from `$src` (flags and environment
/// win over the file).
#[macro_export]
macro_rules! fill_from {
    ($dst:ident, $src:ident; $($f:ident),* $(,)?) => {
        $( if $dst.$f.is_none() { $dst.$f = $src.$f.take(); } )*
    };
}

/// A clap value parser for types parsed with `FromStr<Err = String>` whose errors name the
/// option the way configuration errors do (`invalid `reset_states`: expected ...`).
pub fn parse_named<T>(
    field: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr<Err = String>,
{
    move |s: &str| {
        s.parse::<T>()
            .map_err(|m| ConfigError::new(field, m).to_string())
    }
}

/// A duration written `500ms`, `30s`, `10m`, `2h` or `1d`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let err = || format!("expected a duration such as 500ms, 30s, 10m, 2h or 1d, got `{s}`");
    let v: f64 = num.parse().map_err(|_| err())?;
    let secs = match unit.trim() {
        "ms" => v / 1e3,
        "" | "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        "d" => v * 86_400.0,
        _ => return Err(err()),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(err());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        use std::time::Duration;
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        let e = parse_duration("soon").unwrap_err();
        assert!(e.contains("10m") && e.contains("soon"), "{e}");
        assert!(parse_duration("-1s").is_err());
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Opts {
        a: Option<u32>,
        b: Option<String>,
    }

    #[test]
    fn file_fills_only_what_is_unset_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("carry-runtime-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("job.toml");
        std::fs::write(&p, "a = 1\nb = \"file\"\n").unwrap();
        let mut given = Opts {
            a: Some(7),
            b: None,
        };
        let mut file: Opts = load_toml(&p).unwrap();
        fill_from!(given, file; a, b);
        assert_eq!((given.a, given.b.as_deref()), (Some(7), Some("file")));
        std::fs::write(&p, "c = 1\n").unwrap();
        let e = load_toml::<Opts>(&p).unwrap_err().to_string();
        assert!(e.contains("job.toml") && e.contains('c'), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
