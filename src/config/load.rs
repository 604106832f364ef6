//! Reading a configuration: TOML, then environment overrides, then key by
//! key deserialisation with messages in the operator's terms.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{
    AccessConfig, AppConfig, AssertionConfig, Config, HeadersConfig, LimitsConfig, LoginConfig, LogoutConfig,
    PhoneConfig, RedisConfig, ServerConfig, SessionConfig, UpstreamConfig, WeixinConfig,
};

/// Everything wrong with a configuration, one line per problem, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    /// The problems, each a line that names its key.
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(p: impl Into<String>) -> Self {
        Self {
            problems: vec![p.into()],
        }
    }
}

const ENV_PREFIX: &str = "WXGATE_";

/// `WXGATE_` variables that are not configuration keys (read by other
/// subcommands), so never reported as unknown.
const OTHER_ENV: [&str; 2] = ["WXGATE_FAKE_SECRET", "WXGATE_BUILD_COMMIT"];

/// Keys whose values `wxgate config` never prints.
pub(super) const SECRET_KEYS: &[(&str, &str)] = &[
    ("weixin", "secret"),
    ("redis", "password"),
    ("redis", "sentinel_password"),
    ("redis", "secret"),
];

/// The sections, in the order `check` reports them.
const SECTIONS: [&str; 13] = [
    "server",
    "upstream",
    "weixin",
    "session",
    "login",
    "phone",
    "logout",
    "limits",
    "access",
    "headers",
    "redis",
    "assertion",
    "apps",
];

impl Config {
    /// Reads `path` (which must exist) and applies the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(format!("cannot read config file {}: {e}", path.display())))?;
        Self::from_toml_with_env(&text, std::env::vars())
    }

    /// Parses TOML text, applies `WXGATE_<SECTION>__<KEY>` overrides from
    /// `env`, checks every key and validates the result.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::one(format!("config is not valid TOML: {e}")))?;
        let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
        let (mut problems, from_env) = apply_env(&mut table, &defaults, env);
        // Report every bad key, then validate what remains, so one run names
        // every problem.
        problems.extend(check_keys(&mut table, &defaults));
        // Every key was checked on its own above, and bad ones removed: what
        // is left deserialises (a failure here would name the section).
        let config = match Config::deserialize(toml::Value::Table(table)) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("configuration: {e}"));
                return Err(ConfigError {
                    problems: name_env(problems, &from_env),
                });
            }
        };
        if let Err(e) = config.validate() {
            problems.extend(e.problems);
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                problems: name_env(problems, &from_env),
            })
        }
    }
}

/// Appends "(from WXGATE_...)" to each problem about a key an environment
/// variable set, so the operator looks in the right place.
fn name_env(problems: Vec<String>, from_env: &BTreeMap<String, String>) -> Vec<String> {
    problems
        .into_iter()
        .map(|p| {
            let key = p.split(':').next().unwrap_or_default();
            match from_env.get(key) {
                Some(var) if !p.contains(var.as_str()) => format!("{p} (set by {var})"),
                _ => p,
            }
        })
        .collect()
}

/// Writes `WXGATE_<SECTION>__<KEY>` variables into the table. The value's
/// type follows the key's default: integers and booleans are parsed, lists
/// split on commas (or read as a TOML array), the rest stay strings (so a
/// numeric secret is not turned into a number). Returns the problems and the
/// keys set, with the variable that set each.
fn apply_env(
    table: &mut toml::Table,
    defaults: &toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> (Vec<String>, BTreeMap<String, String>) {
    let mut problems = Vec::new();
    let mut from_env = BTreeMap::new();
    let mut vars: Vec<(String, String)> = env.into_iter().filter(|(n, _)| n.starts_with(ENV_PREFIX)).collect();
    vars.sort();
    for (name, value) in vars {
        if OTHER_ENV.contains(&name.as_str()) {
            continue;
        }
        let rest = &name[ENV_PREFIX.len()..];
        if let Some(app) = rest.strip_prefix("APPS__") {
            match apply_app_env(table, app, &value) {
                Ok(full) => {
                    from_env.insert(full, name);
                }
                Err(problem) => problems.push(format!("{problem} (set by {name})")),
            }
            continue;
        }
        let default = rest
            .split_once("__")
            .map(|(s, k)| (s.to_ascii_lowercase(), k.to_ascii_lowercase()))
            .and_then(|(s, k)| {
                let d = defaults.get(&s)?.as_table()?.get(&k)?.clone();
                Some((s, k, d))
            });
        let Some((section, key, default)) = default else {
            problems.push(unknown_env(&name, defaults));
            continue;
        };
        let full = format!("{section}.{key}");
        let typed = match typed_env_value(&key, &default, &value) {
            Ok(v) => v,
            Err(what) => {
                problems.push(format!("{full}: {value:?} is not {what} (set by {name})"));
                continue;
            }
        };
        match table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()))
        {
            toml::Value::Table(t) => {
                t.insert(key, typed);
                from_env.insert(full, name);
            }
            _ => problems.push(format!("{section}: must be a section ([{section}]) (set by {name})")),
        }
    }
    (problems, from_env)
}

/// `WXGATE_APPS__<NAME>__<KEY>`: a key of `[apps.<name>]`. Returns the key
/// set (`apps.<name>.<key>`).
fn apply_app_env(table: &mut toml::Table, rest: &str, value: &str) -> Result<String, String> {
    let defaults = toml::Table::try_from(AppConfig::default()).unwrap_or_default();
    let Some((app, key)) = rest.split_once("__") else {
        return Err("names no configuration key (apps take WXGATE_APPS__<NAME>__<KEY>)".into());
    };
    let (app, key) = (app.to_ascii_lowercase(), key.to_ascii_lowercase());
    let Some(default) = defaults.get(&key) else {
        return Err(format!(
            "apps.{app}.{key}: names no key of an app (they are {})",
            defaults.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    };
    let typed =
        typed_env_value(&key, default, value).map_err(|what| format!("apps.{app}.{key}: {value:?} is not {what}"))?;
    let apps = table
        .entry("apps")
        .or_insert_with(|| toml::Value::Table(Default::default()));
    let toml::Value::Table(apps) = apps else {
        return Err("apps: must be a section ([apps.<name>])".into());
    };
    match apps
        .entry(app.clone())
        .or_insert_with(|| toml::Value::Table(Default::default()))
    {
        toml::Value::Table(t) => {
            t.insert(key.clone(), typed);
            Ok(format!("apps.{app}.{key}"))
        }
        _ => Err(format!("apps.{app}: must be a section ([apps.{app}])")),
    }
}

/// An environment variable's text as a TOML value of the default's type.
fn typed_env_value(key: &str, default: &toml::Value, value: &str) -> Result<toml::Value, &'static str> {
    let number = if key.ends_with("_bytes") {
        "a number of bytes"
    } else {
        "a whole number"
    };
    Ok(match default {
        toml::Value::Integer(_) => toml::Value::Integer(value.trim().parse().map_err(|_| number)?),
        toml::Value::Boolean(_) => match value.trim() {
            "true" | "1" => toml::Value::Boolean(true),
            "false" | "0" => toml::Value::Boolean(false),
            _ => return Err("true or false"),
        },
        toml::Value::Array(_) => {
            let trimmed = value.trim();
            if trimmed.starts_with('[') {
                let parsed: toml::Table =
                    toml::from_str(&format!("v = {trimmed}")).map_err(|_| "a list like [\"a\", \"b\"]")?;
                parsed.get("v").cloned().ok_or("a list like [\"a\", \"b\"]")?
            } else {
                toml::Value::Array(
                    trimmed
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_owned()))
                        .collect(),
                )
            }
        }
        _ => toml::Value::String(value.to_owned()),
    })
}

/// The message for a `WXGATE_` variable that names no key, with the nearest
/// variable that would.
fn unknown_env(name: &str, defaults: &toml::Table) -> String {
    let mut known = Vec::new();
    for (section, keys) in defaults {
        if let Some(keys) = keys.as_table() {
            for key in keys.keys() {
                known.push(format!(
                    "{ENV_PREFIX}{}__{}",
                    section.to_ascii_uppercase(),
                    key.to_ascii_uppercase()
                ));
            }
        }
    }
    let upper = name.to_ascii_uppercase();
    let nearest = known.iter().min_by_key(|k| edit_distance(&upper, k));
    match nearest {
        Some(k) if edit_distance(&upper, k) <= 4 => {
            format!(
                "{name}: names no configuration key (did you mean {k}? keys are WXGATE_<SECTION>__<KEY>, with two underscores)"
            )
        }
        _ => {
            format!("{name}: names no configuration key (keys are WXGATE_<SECTION>__<KEY>, e.g. WXGATE_UPSTREAM__URL)")
        }
    }
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Deserialises each key on its own against its section's defaults, so that
/// every bad or unknown key is reported, not only the first. Bad keys and
/// sections are removed from the table, so the rest can still be validated.
fn check_keys(table: &mut toml::Table, defaults: &toml::Table) -> Vec<String> {
    fn each<T: DeserializeOwned>(
        section: &str,
        value: &mut toml::Value,
        defaults: Option<&toml::Value>,
        out: &mut Vec<String>,
    ) -> bool {
        let toml::Value::Table(t) = value else {
            out.push(format!("{section}: must be a section ([{section}])"));
            return false;
        };
        t.retain(|key, v| {
            let mut single = toml::Table::new();
            single.insert(key.to_string(), v.clone());
            match T::deserialize(toml::Value::Table(single)) {
                Ok(_) => true,
                Err(e) => {
                    out.push(key_problem(section, key, v, defaults, &e.to_string()));
                    false
                }
            }
        });
        true
    }
    let mut out = Vec::new();
    table.retain(|section, value| {
        let d = defaults.get(section);
        match section {
            "server" => each::<ServerConfig>(section, value, d, &mut out),
            "upstream" => each::<UpstreamConfig>(section, value, d, &mut out),
            "weixin" => each::<WeixinConfig>(section, value, d, &mut out),
            "session" => each::<SessionConfig>(section, value, d, &mut out),
            "login" => each::<LoginConfig>(section, value, d, &mut out),
            "phone" => each::<PhoneConfig>(section, value, d, &mut out),
            "logout" => each::<LogoutConfig>(section, value, d, &mut out),
            "limits" => each::<LimitsConfig>(section, value, d, &mut out),
            "access" => each::<AccessConfig>(section, value, d, &mut out),
            "redis" => each::<RedisConfig>(section, value, d, &mut out),
            "assertion" => each::<AssertionConfig>(section, value, d, &mut out),
            "apps" => {
                let toml::Value::Table(apps) = value else {
                    out.push("apps: must hold one section per app ([apps.<name>])".into());
                    return false;
                };
                let app_defaults = toml::Value::Table(toml::Table::try_from(AppConfig::default()).unwrap_or_default());
                apps.retain(|name, app| {
                    if name.is_empty()
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
                    {
                        out.push(format!(
                            "apps.{name}: an app's name is lower-case letters, digits, '_' and '-' (it is part of its environment variables)"
                        ));
                        return false;
                    }
                    each::<AppConfig>(&format!("apps.{name}"), app, Some(&app_defaults), &mut out)
                });
                true
            }
            "headers" => each::<HeadersConfig>(section, value, d, &mut out),
            other => {
                out.push(format!(
                    "{other}: unknown section (expected one of {})",
                    SECTIONS.join(", ")
                ));
                false
            }
        }
    });
    out
}

/// One bad key, in the operator's terms: what kind of value the key takes,
/// not the Rust type it is read into.
fn key_problem(section: &str, key: &str, value: &toml::Value, defaults: Option<&toml::Value>, serde: &str) -> String {
    // toml appends "\nin `key`": the key is named already, and each problem
    // stays on one line.
    let serde = serde.split("\nin `").next().unwrap_or_default().trim();
    let full = format!("{section}.{key}");
    let shown = display_value(value);
    let keys = defaults.and_then(toml::Value::as_table);
    let Some(default) = keys.and_then(|k| k.get(key)) else {
        let nearest = keys
            .into_iter()
            .flat_map(|k| k.keys())
            .min_by_key(|k| edit_distance(key, k))
            .filter(|k| edit_distance(key, k) <= 3);
        return match nearest {
            Some(k) => format!("{full}: unknown key (did you mean {section}.{k}?)"),
            None => format!("{full}: unknown key (config.toml lists every key of [{section}])"),
        };
    };
    match default {
        toml::Value::Integer(_) if key.ends_with("_bytes") => format!("{full}: {shown} is not a number of bytes"),
        toml::Value::Integer(_) => format!("{full}: {shown} is not a whole number of at least 0"),
        toml::Value::Boolean(_) => format!("{full}: {shown} is not true or false"),
        toml::Value::Array(_) => format!("{full}: {shown} is not a list of strings like [\"a\", \"b\"]"),
        _ if key.ends_with("listen") => {
            format!(
                "{full}: {shown} is not an address like 0.0.0.0:8080 (an IP address and a port; host names are not accepted)"
            )
        }
        _ => {
            let serde = serde.replace("unknown variant", "unknown value").replace('`', "\"");
            format!("{full}: {serde}")
        }
    }
}

fn display_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HumanDuration, LoginMode};
    use std::time::Duration;

    const MINIMAL: &str = r#"
        [upstream]
        url = "http://127.0.0.1:3000"
        [weixin]
        appid = "wx4f4bc4dec97d474b"
        secret = "s3cret"
    "#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9901");
        assert_eq!(c.server.max_body_bytes, 65536);
        assert_eq!(c.server.shutdown_grace.get(), Duration::from_secs(30));
        assert_eq!(c.upstream.connect_timeout.get(), Duration::from_secs(2));
        assert_eq!(c.upstream.timeout.get(), Duration::from_secs(60));
        assert_eq!(c.weixin.api_base, "https://api.weixin.qq.com");
        assert_eq!(c.weixin.timeout.get(), Duration::from_secs(5));
        assert_eq!(c.session.header, "x-wx-session");
        assert_eq!(c.session.code_ttl, HumanDuration::secs(60));
        assert_eq!(c.login.path, "/api/login");
        assert_eq!(c.login.mode, LoginMode::Forward);
        assert_eq!(c.phone.path, "/api/phone");
        assert_eq!(c.phone.max_age, HumanDuration::secs(600));
        assert_eq!(c.logout.path, "/api/logout");
        assert_eq!(c.headers.openid, "x-wx-openid");
        assert_eq!(c.headers.country_code, "x-wx-country-code");
        assert_eq!(c.headers.strip_prefixes, ["x-wx-"]);
        assert!(c.headers.strip_names.iter().any(|n| n == "x-original-forwarded-for"));
    }

    #[test]
    fn the_shipped_config_toml_names_every_key() {
        let text = include_str!("../../config.toml");
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in defaults {
            if section == "apps" {
                assert!(
                    text.contains("[apps.shop]"),
                    "config.toml lacks an [apps.<name>] example"
                );
                for key in toml::Table::try_from(AppConfig::default()).unwrap().keys() {
                    assert!(
                        text.contains(&format!("# {key} =")),
                        "config.toml lacks apps.<name>.{key}"
                    );
                }
                continue;
            }
            // The section's own lines, from its header to the next one.
            let header = format!("[{section}]");
            let start = text
                .lines()
                .position(|l| l.trim() == header)
                .unwrap_or_else(|| panic!("config.toml lacks [{section}]"));
            let lines: Vec<&str> = text
                .lines()
                .skip(start + 1)
                .take_while(|l| !l.starts_with('['))
                .collect();
            let shipped = text.parse::<toml::Table>().unwrap();
            for (key, default) in keys.as_table().unwrap() {
                let named = |l: &&str| {
                    let l = l.trim_start_matches("# ");
                    l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
                };
                assert!(
                    lines.iter().any(named),
                    "config.toml lacks {section}.{key} in [{section}]"
                );
                // A value it sets is the default, so the file documents what wxgate does.
                if let Some(value) = shipped.get(&section).and_then(|t| t.get(key)) {
                    let same = match (value, default) {
                        (toml::Value::String(a), toml::Value::String(b)) => {
                            a == b
                                || humantime::parse_duration(a)
                                    .is_ok_and(|d| humantime::parse_duration(b).ok() == Some(d))
                        }
                        (a, b) => a == b,
                    };
                    assert!(
                        same,
                        "config.toml sets {section}.{key} = {value}, the default is {default}"
                    );
                }
            }
        }
    }

    #[test]
    fn env_overrides_win_and_keep_their_type() {
        let c = load(
            MINIMAL,
            &[
                ("WXGATE_WEIXIN__SECRET", "123456"),
                ("WXGATE_SERVER__MAX_BODY_BYTES", "1024"),
                ("WXGATE_LOGIN__MODE", "respond"),
                ("WXGATE_PHONE__REMEMBER", "true"),
                ("WXGATE_SESSION__TTL", "2h"),
                ("WXGATE_SERVER__TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
                ("WXGATE_HEADERS__STRIP_NAMES", r#"["x-a", "x-b"]"#),
                ("WXGATE_FAKE_SECRET", "not a key, read by fake-weixin"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.weixin.secret.expose(), "123456");
        assert_eq!(c.server.max_body_bytes, 1024);
        assert_eq!(c.login.mode, LoginMode::Respond);
        assert!(c.phone.remember);
        assert_eq!(c.session.ttl.get(), Duration::from_secs(7200));
        assert_eq!(c.server.trusted_proxies, ["10.0.0.0/8", "192.0.2.1"]);
        assert_eq!(c.headers.strip_names, ["x-a", "x-b"]);
    }

    #[test]
    fn an_env_variable_that_names_no_key_is_an_error_with_a_suggestion() {
        let e = load(MINIMAL, &[("WXGATE_UPSTREAM_URL", "http://x:1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("WXGATE_UPSTREAM_URL"), "{e}");
        assert!(e.contains("did you mean WXGATE_UPSTREAM__URL"), "{e}");
        let e = load(MINIMAL, &[("WXGATE_NOTHING__LIKE_IT_AT_ALL", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("names no configuration key"), "{e}");
    }

    #[test]
    fn every_bad_key_is_named_in_the_operators_terms() {
        let text = r#"
            [server]
            lisen = "0.0.0.0:1"
            admin_listen = "localhost:9901"
            shutdown_grace = "soon"
            max_body_bytes = "big"
            workers = -1
            [upstream]
            url = "ftp://x"
            [weixin]
            appid = "wx1"
            secret = "s"
            [bogus]
            a = 1
        "#;
        let e = load(text, &[]).unwrap_err().to_string();
        for needle in [
            "server.lisen: unknown key (did you mean server.listen?)",
            "server.admin_listen: \"localhost:9901\" is not an address like 0.0.0.0:8080",
            "host names are not accepted",
            "server.shutdown_grace: \"soon\" is not a duration",
            "server.max_body_bytes: \"big\" is not a number of bytes",
            "server.workers: -1 is not a whole number",
            "bogus: unknown section",
        ] {
            assert!(e.contains(needle), "{needle:?} not in: {e}");
        }
        assert!(
            !e.contains("u64") && !e.contains("usize") && !e.contains("SocketAddr"),
            "{e}"
        );
        let fixed = text
            .replace("lisen", "listen")
            .replace("localhost", "127.0.0.1")
            .replace("\"soon\"", "\"1s\"")
            .replace("\"big\"", "1")
            .replace("-1", "1");
        let e = load(&fixed, &[]).unwrap_err().to_string();
        assert!(e.contains("upstream.url"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn problems_name_the_environment_variable_that_set_the_key() {
        let e = load(MINIMAL, &[("WXGATE_SERVER__WORKERS", "many")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.workers") && e.contains("WXGATE_SERVER__WORKERS"),
            "{e}"
        );
        let e = load(MINIMAL, &[("WXGATE_SESSION__TTL", "0s")]).unwrap_err().to_string();
        assert!(
            e.contains("session.ttl: must be longer than zero (set by WXGATE_SESSION__TTL)"),
            "{e}"
        );
        let e = load(MINIMAL, &[("WXGATE_SERVER__LISTEN", "example.com:80")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("host names are not accepted") && e.contains("WXGATE_SERVER__LISTEN"),
            "{e}"
        );
        let e = load(MINIMAL, &[("WXGATE_SERVER__MAX_REQUEST_HEADER_BYTES", "lots")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "server.max_request_header_bytes: \"lots\" is not a number of bytes (set by WXGATE_SERVER__MAX_REQUEST_HEADER_BYTES)"
            ),
            "{e}"
        );
    }

    #[test]
    fn validation_names_keys() {
        let e = load("", &[]).unwrap_err().to_string();
        for key in ["upstream.url", "weixin.appid", "weixin.secret"] {
            assert!(e.contains(key), "{key} not named in: {e}");
        }
        let bad = format!(
            "{MINIMAL}\n[headers]\nopenid = \"x wx\"\nunionid = \"X.WX.APPID\"\nstrip_prefixes = [\"--\"]\n[login]\npath = \"api\"\nmode = \"maybe\"\n[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n"
        );
        let e = load(&bad, &[]).unwrap_err().to_string();
        assert!(e.contains("login.mode: unknown value \"maybe\""), "{e}");
        let bad = bad.replace("mode = \"maybe\"", "");
        let e = load(&bad, &[]).unwrap_err().to_string();
        for key in [
            "headers.openid",
            "is the same header as headers.unionid",
            "headers.strip_prefixes[0]",
            "login.path",
            "server.trusted_proxies[0]",
        ] {
            assert!(e.contains(key), "{key} not named in: {e}");
        }
        let spelled = format!("{MINIMAL}\n[phone]\npath = \"/API/Login/\"\n");
        let e = load(&spelled, &[]).unwrap_err().to_string();
        assert!(
            e.contains("phone.path") && e.contains("same route as login.path"),
            "{e}"
        );
    }

    const TWO_APPS: &str = r#"
        [upstream]
        url = "http://127.0.0.1:3000"
        [apps.shop]
        appid = "wx1111111111111111"
        hosts = ["shop.example.com"]
        [apps.staff]
        appid = "wx2222222222222222"
        path_prefix = "/staff"
    "#;

    #[test]
    fn apps_load_with_their_secrets_from_the_environment() {
        let env = [
            ("WXGATE_APPS__SHOP__SECRET", "shop-secret"),
            ("WXGATE_APPS__STAFF__SECRET", "staff-secret"),
        ];
        let c = load(TWO_APPS, &env).unwrap();
        assert_eq!(c.apps["shop"].secret.expose(), "shop-secret");
        assert_eq!(c.apps["staff"].path_prefix, "/staff");
        assert!(c.weixin.appid.is_empty());
        // An app from the environment alone.
        let c = load(
            TWO_APPS,
            &[
                env[0],
                env[1],
                ("WXGATE_APPS__CARD__APPID", "wx3333333333333333"),
                ("WXGATE_APPS__CARD__SECRET", "card-secret"),
                ("WXGATE_WEIXIN__DEFAULT_APP", "card"),
            ],
        )
        .unwrap();
        assert_eq!(c.apps["card"].appid, "wx3333333333333333");
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("shop-secret") && !shown.contains("card-secret"),
            "{shown}"
        );
        assert!(!format!("{c:?}").contains("staff-secret"));
    }

    #[test]
    fn bad_apps_are_refused_naming_the_key() {
        let secrets = [("WXGATE_APPS__SHOP__SECRET", "a"), ("WXGATE_APPS__STAFF__SECRET", "b")];
        let e = load(TWO_APPS, &secrets[..1]).unwrap_err().to_string();
        assert!(
            e.contains("apps.staff.secret: required") && e.contains("WXGATE_APPS__STAFF__SECRET"),
            "{e}"
        );
        for (change, named) in [
            (
                ("wx2222222222222222", "wx1111111111111111"),
                "apps.staff.appid: \"wx1111111111111111\" is also apps.shop.appid",
            ),
            (
                ("path_prefix = \"/staff\"", "hosts = [\"SHOP.example.com:443\"]"),
                "is also a host of apps.shop",
            ),
            (
                ("hosts = [\"shop.example.com\"]", "path_prefix = \"/staff/x\""),
                "overlaps",
            ),
            (
                ("path_prefix = \"/staff\"", "path_prefix = \"/\""),
                "apps.staff.path_prefix",
            ),
            (
                ("path_prefix = \"/staff\"", "path_prefix = \"staff\""),
                "apps.staff.path_prefix",
            ),
            (("path_prefix = \"/staff\"", "paths = [\"/x\"]"), "apps.staff.paths"),
            (("[apps.staff]", "[apps.Staff]"), "apps.Staff: an app's name"),
        ] {
            let text = TWO_APPS.replace(change.0, change.1);
            let e = load(&text, &secrets).unwrap_err().to_string();
            assert!(e.contains(named), "{named} not in: {e}");
        }
        let with_default = format!("{TWO_APPS}\n[weixin]\ndefault_app = \"nope\"\n");
        let e = load(&with_default, &secrets).unwrap_err().to_string();
        assert!(e.contains("weixin.default_app"), "{e}");
        let clash = format!("{MINIMAL}\n[apps.default]\nappid = \"wx3333333333333333\"\nsecret = \"x\"\n");
        let e = load(&clash, &[]).unwrap_err().to_string();
        assert!(e.contains("apps.default: the name is taken"), "{e}");
        let e = load(TWO_APPS, &[("WXGATE_APPS__SHOP__SECRETS", "x")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("apps.shop.secrets") && e.contains("WXGATE_APPS__SHOP__SECRETS"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(load("[server\nlisten=", &[]).unwrap_err().to_string().contains("TOML"));
    }

    #[test]
    fn secrets_never_print() {
        let c = load(MINIMAL, &[]).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("secret = \"[redacted]\""), "{shown}");
        assert!(shown.contains("appid = \"wx4f4bc4dec97d474b\""), "{shown}");
        let c = load(
            MINIMAL,
            &[("WXGATE_UPSTREAM__URL", "http://svc:p4ssw0rd@127.0.0.1:3000")],
        )
        .unwrap();
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("p4ssw0rd") && shown.contains("svc:[redacted]@"),
            "{shown}"
        );
    }

    #[test]
    fn listeners_must_not_overlap_unless_the_os_picks_the_ports() {
        let same = format!("[server]\nlisten = \"0.0.0.0:9000\"\nadmin_listen = \"127.0.0.1:9000\"\n{MINIMAL}");
        let e = load(&same, &[]).unwrap_err().to_string();
        assert!(e.contains("server.admin_listen"), "{e}");
        let ephemeral = same.replace(":9000", ":0");
        assert!(load(&ephemeral, &[]).is_ok());
    }
}
