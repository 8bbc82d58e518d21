//! Layered configuration of a service: defaults → TOML file → `ELK_*` environment → flags, then
//! validation.
//!
//! A service config has two tables: `[service]` (the [`ServiceCommon`](crate::ServiceCommon)
//! fields every service shares, with `[service.nats]`) and the service's own section
//! (`[election]`, `[assigner]`, `[scaler]`, named by [`ServiceConfig::SECTION`]). Every table
//! refuses unknown keys, so a misspelled key is an error naming it.
//!
//! Environment variables (prefix `ELK_`, the rest case-insensitive, `__` separating levels):
//!
//! | variable | key |
//! |---|---|
//! | `ELK_NATS_URL`, `ELK_NAMESPACE`, `ELK_MEMBER_ID`, `ELK_MEMBER_TTL`, `ELK_LOG_FORMAT`, `ELK_METRICS_LISTEN`, `ELK_REPLICAS` | short forms of `service.nats.url`, `service.namespace`, `service.member_id`, `service.member_ttl`, `service.log_format`, `service.metrics_listen`, `service.replicas` |
//! | `ELK_SERVICE__<KEY>` (e.g. `ELK_SERVICE__NATS__URL`) | `service.<key>` |
//! | `ELK_NATS__<KEY>` (e.g. `ELK_NATS__CREDENTIALS_FILE`) | `service.nats.<key>` |
//! | `ELK_<SECTION>__<KEY>` (e.g. `ELK_ASSIGNER__TICK`) | `<section>.<key>` of that service only |
//!
//! Other `ELK_*` variables are not this service's: another service's section
//! (`ELK_SCALER__MIN_WORKERS` seen by the assigner) or an operator's own variable. They are
//! ignored, so one environment can serve every service.

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Serialize, de::DeserializeOwned};
use std::path::{Path, PathBuf};

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist", path.display())]
    MissingFile { path: PathBuf },
    /// A value has the wrong type, a key is unknown or missing (the message names the key and
    /// where it came from).
    #[error("invalid configuration: {0}")]
    Load(#[source] Box<figment::Error>),
    /// Every value parsed, but together they cannot work.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ConfigError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ConfigError::Invalid(message.into())
    }
}

/// A configuration does not fix itself: never worth retrying unchanged.
impl elk_nats::Retryable for ConfigError {
    fn is_retryable(&self) -> bool {
        false
    }
}

/// Checks a loaded configuration as a whole: values each service cannot run with are refused
/// here, before anything starts, never clamped silently.
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// A service's configuration: `[service]` plus the service's own section.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default + Validate {
    /// The name of the service's own table, also its environment prefix (`assigner` →
    /// `ELK_ASSIGNER__<KEY>`).
    const SECTION: &'static str;

    /// The `[service]` table (member id, log format, tracing), if the config has one.
    fn common(&self) -> Option<&crate::ServiceCommon> {
        None
    }
}

/// Declares a service's configuration: a struct with the `[service]` table ([`ServiceCommon`])
/// and the service's own table, which also names its environment prefix; with `Default` (the
/// settings' defaults and [`ServiceCommon::defaults`]), `new(service)` and [`ServiceConfig`].
/// The service implements [`Validate`] itself.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
/// #[serde(default, deny_unknown_fields)]
/// pub struct EchoSettings {
///     pub volume: u32,
/// }
///
/// elk_runtime::service_config! {
///     /// Everything an echo replica needs.
///     pub struct EchoConfig { echo: EchoSettings }
/// }
///
/// impl elk_runtime::Validate for EchoConfig {
///     fn validate(&self) -> Result<(), elk_runtime::ConfigError> {
///         self.service.validate()
///     }
/// }
///
/// use elk_runtime::ServiceConfig;
/// assert_eq!(EchoConfig::SECTION, "echo");
/// assert!(EchoConfig::default().service.member_id.as_str().starts_with("echo-"));
/// ```
///
/// [`ServiceCommon`]: crate::ServiceCommon
/// [`ServiceCommon::defaults`]: crate::ServiceCommon::defaults
#[macro_export]
macro_rules! service_config {
    ($(#[$doc:meta])* pub struct $name:ident { $section:ident : $settings:ty }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Namespace, member id, member TTL and NATS connection (`[service]`).
            pub service: $crate::ServiceCommon,
            /// This service's own settings.
            pub $section: $settings,
        }

        impl $name {
            /// The config of replica `service` with this service's default settings.
            pub fn new(service: $crate::ServiceCommon) -> Self {
                Self {
                    service,
                    $section: <$settings>::default(),
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new($crate::ServiceCommon::defaults(stringify!($section)))
            }
        }

        impl $crate::ServiceConfig for $name {
            const SECTION: &'static str = stringify!($section);

            fn common(&self) -> Option<&$crate::ServiceCommon> {
                Some(&self.service)
            }
        }
    };
}

/// Environment short forms: `ELK_<SHORT>` sets the key.
pub const ENV_SHORT_FORMS: &[(&str, &str)] = &[
    ("nats_url", "service.nats.url"),
    ("namespace", "service.namespace"),
    ("member_id", "service.member_id"),
    ("member_ttl", "service.member_ttl"),
    ("log_format", "service.log_format"),
    ("metrics_listen", "service.metrics_listen"),
    ("replicas", "service.replicas"),
];

/// Prefix of every variable the loader reads.
pub const ENV_PREFIX: &str = "ELK_";

/// The config key an environment variable sets for the service with `section`, or `None` if
/// the variable is not for it. `variable` is without the `ELK_` prefix.
pub fn env_key(variable: &str, section: &str) -> Option<String> {
    let variable = variable.trim().to_ascii_lowercase();
    if let Some((_, key)) = ENV_SHORT_FORMS.iter().find(|(short, _)| *short == variable) {
        return Some((*key).to_owned());
    }
    let (first, rest) = variable.split_once("__")?;
    let table = match first {
        "service" => "service",
        "nats" => "service.nats",
        own if own == section => section,
        _ => return None,
    };
    let levels: Vec<&str> = rest.split("__").collect();
    if levels.iter().any(|level| level.is_empty()) {
        return None;
    }
    Some(format!("{table}.{}", levels.join(".")))
}

/// The `ELK_*` variables of `variables` that are for the service with `section`, as a figment
/// provider whose errors name the variable.
struct Environment {
    /// (config key, raw value)
    settings: Vec<(String, String)>,
}

impl Environment {
    fn new(variables: impl IntoIterator<Item = (String, String)>, section: &str) -> Self {
        let settings = variables
            .into_iter()
            .filter_map(|(variable, value)| {
                let unprefixed = variable.strip_prefix(ENV_PREFIX)?;
                Some((env_key(unprefixed, section)?, value))
            })
            .collect();
        Self { settings }
    }
}

impl Provider for Environment {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable").interpolater(|_profile, keys| {
            let key = keys.join(".");
            match ENV_SHORT_FORMS.iter().find(|(_, long)| *long == key) {
                Some((short, _)) => format!("{ENV_PREFIX}{}", short.to_ascii_uppercase()),
                None => format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase()),
            }
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut settings = Dict::new();
        for (key, raw) in &self.settings {
            // The same parsing figment applies to environment values ("3s" a string, "2" a
            // number, "true" a boolean).
            let value: Value = raw.parse().expect("parsing a value from text cannot fail");
            let path: Vec<&str> = key.split('.').collect();
            insert_at(&mut settings, &path, value);
        }
        Ok(Profile::Default.collect(settings))
    }
}

/// Sets `path` (`["service", "nats", "url"]`) in `dict` to `value`, creating the tables on the
/// way.
fn insert_at(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_at(inner, rest, value);
            }
        }
    }
}

/// Loads `T` from its defaults, then the TOML file (if given), then the process's `ELK_*`
/// environment (see the module docs), then `overrides` (the command-line flags that were set),
/// and validates it.
pub fn load_config<T: ServiceConfig>(
    file: Option<&Path>,
    overrides: impl Serialize,
) -> Result<T, ConfigError> {
    let variables = std::env::vars_os().filter_map(|(variable, value)| {
        Some((variable.into_string().ok()?, value.into_string().ok()?))
    });
    load_config_from(file, variables, overrides)
}

/// [`load_config`] with the environment given as `variables` (for tests).
pub fn load_config_from<T: ServiceConfig>(
    file: Option<&Path>,
    variables: impl IntoIterator<Item = (String, String)>,
    overrides: impl Serialize,
) -> Result<T, ConfigError> {
    use figment::providers::{Format, Serialized, Toml};
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile {
                path: path.to_path_buf(),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    extract_validated(figment, variables, overrides)
}

/// [`load_config_from`] with the TOML document itself instead of a file: what a config file's
/// text turns into (the fuzz targets feed it arbitrary text).
pub fn load_config_toml<T: ServiceConfig>(
    toml: &str,
    variables: impl IntoIterator<Item = (String, String)>,
    overrides: impl Serialize,
) -> Result<T, ConfigError> {
    use figment::providers::{Format, Serialized, Toml};
    let figment = Figment::from(Serialized::defaults(T::default())).merge(Toml::string(toml));
    extract_validated(figment, variables, overrides)
}

/// The last layers (environment, then flags) over `figment`, extracted and validated.
fn extract_validated<T: ServiceConfig>(
    figment: Figment,
    variables: impl IntoIterator<Item = (String, String)>,
    overrides: impl Serialize,
) -> Result<T, ConfigError> {
    use figment::providers::Serialized;
    let config: T = figment
        .merge(Environment::new(variables, T::SECTION))
        .merge(Serialized::defaults(overrides))
        .extract()
        .map_err(|error| ConfigError::Load(Box::new(error)))?;
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        service: Common,
        sample: Own,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Common {
        namespace: String,
        #[serde(with = "humantime_serde")]
        member_ttl: Duration,
        nats: elk_nats::NatsConfig,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Own {
        rounds: u32,
        label: Option<String>,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                service: Common {
                    namespace: "default".to_owned(),
                    member_ttl: Duration::from_secs(3),
                    nats: elk_nats::NatsConfig::default(),
                },
                sample: Own {
                    rounds: 1,
                    label: None,
                },
            }
        }
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.sample.rounds == 0 {
                return Err(ConfigError::invalid("sample.rounds must be at least 1"));
            }
            Ok(())
        }
    }

    impl ServiceConfig for Sample {
        const SECTION: &'static str = "sample";
    }

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        service: Option<FlagCommon>,
    }

    #[derive(Serialize)]
    struct FlagCommon {
        namespace: String,
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(file: Option<&Path>, env: &[(&str, &str)], flags: Flags) -> Result<Sample, String> {
        load_config_from(file, vars(env), flags).map_err(|error| error.to_string())
    }

    #[test]
    fn toml_text_loads_through_the_same_layers_as_a_file() {
        let text = "[service]\nnamespace = \"text\"\nmember_ttl = \"5s\"\n[sample]\nrounds = 4\n";
        let loaded: Sample = load_config_toml(
            text,
            vars(&[("ELK_SAMPLE__LABEL", "env")]),
            Flags::default(),
        )
        .unwrap();
        assert_eq!(loaded.service.namespace, "text");
        assert_eq!(loaded.service.member_ttl, Duration::from_secs(5));
        assert_eq!(loaded.sample.label.as_deref(), Some("env"));
        let invalid =
            load_config_toml::<Sample>("[sample]\nrounds = 0\n", vars(&[]), Flags::default());
        assert!(matches!(invalid, Err(ConfigError::Invalid(_))), "validated");
        let unknown =
            load_config_toml::<Sample>("[sample]\nround = 1\n", vars(&[]), Flags::default());
        assert!(
            matches!(unknown, Err(ConfigError::Load(_))),
            "unknown keys refused"
        );
        let broken = load_config_toml::<Sample>("[sample\n", vars(&[]), Flags::default());
        assert!(
            matches!(broken, Err(ConfigError::Load(_))),
            "TOML syntax errors refused"
        );
    }

    #[test]
    fn environment_keys_map_to_nested_config_keys() {
        let key = |variable: &str| env_key(variable, "assigner");
        assert_eq!(key("NATS_URL").unwrap(), "service.nats.url");
        assert_eq!(key("MEMBER_TTL").unwrap(), "service.member_ttl");
        assert_eq!(key("METRICS_LISTEN").unwrap(), "service.metrics_listen");
        assert_eq!(key("REPLICAS").unwrap(), "service.replicas");
        assert_eq!(key("SERVICE__NATS__URL").unwrap(), "service.nats.url");
        assert_eq!(
            key("NATS__CREDENTIALS_FILE").unwrap(),
            "service.nats.credentials_file"
        );
        assert_eq!(
            key("ASSIGNER__HTTP_LISTEN").unwrap(),
            "assigner.http_listen"
        );
        assert_eq!(key("SCALER__MIN_WORKERS"), None, "another service's key");
        assert_eq!(key("HTTP"), None, "not a config variable");
        assert_eq!(key("ASSIGNER__"), None);
    }

    #[test]
    fn layers_defaults_file_environment_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("elk.toml");
        std::fs::write(
            &path,
            "[service]\nnamespace = \"file\"\nmember_ttl = \"5s\"\n[service.nats]\n\
             url = \"nats://file:1\"\n[sample]\nrounds = 4\n",
        )
        .unwrap();
        let loaded = load(
            Some(&path),
            &[
                ("ELK_NATS_URL", "nats://env:2"),
                ("ELK_SAMPLE__LABEL", "from-env"),
                ("ELK_OTHER__ROUNDS", "9"),
                ("ELK_HTTP", "http://not-for-us"),
                ("PATH", "/bin"),
            ],
            Flags {
                service: Some(FlagCommon {
                    namespace: "flag".to_owned(),
                }),
            },
        )
        .unwrap();
        assert_eq!(loaded.service.namespace, "flag", "flags win");
        assert_eq!(
            loaded.service.nats.url, "nats://env:2",
            "environment beats file"
        );
        assert_eq!(loaded.service.member_ttl, Duration::from_secs(5), "file");
        assert_eq!(loaded.sample.rounds, 4, "file");
        assert_eq!(loaded.sample.label.as_deref(), Some("from-env"));
        assert_eq!(
            load(None, &[], Flags::default()).unwrap(),
            Sample::default()
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typo.toml");
        std::fs::write(&path, "[sample]\nrouns = 4\n").unwrap();
        let error = load(Some(&path), &[], Flags::default()).unwrap_err();
        assert!(error.contains("rouns"), "{error}");
        let error = load(None, &[("ELK_SAMPLE__ROUNS", "4")], Flags::default()).unwrap_err();
        assert!(error.contains("rouns"), "{error}");
        assert!(error.contains("ELK_SAMPLE__ROUNS"), "{error}");
        std::fs::write(&path, "[service.nats]\nurl = \"x\"\ncreds = \"y\"\n").unwrap();
        let error = load(Some(&path), &[], Flags::default()).unwrap_err();
        assert!(error.contains("creds"), "{error}");
    }

    #[test]
    fn missing_file_bad_values_and_failed_validation_are_errors() {
        let missing = load(
            Some(Path::new("/nonexistent/elk.toml")),
            &[],
            Flags::default(),
        );
        assert!(missing.unwrap_err().contains("does not exist"));
        let error = load(None, &[("ELK_MEMBER_TTL", "soon")], Flags::default()).unwrap_err();
        assert!(error.contains("ELK_MEMBER_TTL"), "{error}");
        let error = load(None, &[("ELK_SAMPLE__ROUNDS", "0")], Flags::default()).unwrap_err();
        assert!(
            error.contains("sample.rounds must be at least 1"),
            "{error}"
        );
    }
}
